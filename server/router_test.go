package server

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wheel"
)

// capFixture is a server with n loops (no gnet: each loop's wake-up is a
// byte in a socket nobody reads), one fake connection per loop, all
// members of one group, and a router of its own.
type capFixture struct {
	t     *testing.T
	s     *Server
	loops []*loop
	uids  []uint64
	rt    *router
	seq   uint64
}

func newCapFixture(t *testing.T, n, maxBusy int) *capFixture {
	w := wheel.New(wheel.Options{})
	t.Cleanup(w.Stop)
	s := &Server{wheel: w, m: newMetrics(func() float64 { return 0 })}
	s.sess.init()
	s.cfg.MaxInflight, s.cfg.AckTimeout, s.cfg.Inbox = 1024, time.Hour, 1<<20
	f := &capFixture{t: t, s: s, rt: &router{limit: s.cfg.Inbox, maxBusy: maxBusy, maxDefer: time.Hour}}
	for i := 0; i < n; i++ {
		lp := &loop{srv: s, idx: i, turnConns: 1 << 20}
		lp.ib.limit = s.cfg.Inbox
		lp.ib.notFull.L = &lp.ib.mu
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
		lp.wakeW = fds[1]
		lp.wakeOK.Store(true)
		f.loops = append(f.loops, lp)
		f.uids = append(f.uids, uint64(10+i))
	}
	s.loops.Store(&f.loops)
	for i, lp := range f.loops {
		c := addFakeConn(lp, &nopConn{}, f.uids[i])
		t.Cleanup(c.retx.Stop)
	}
	return f
}

// route commits one message to every member and lets the router hand over.
func (f *capFixture) route() {
	f.seq++
	m := storage.Message{Conv: "g:1", From: 1, Kind: "text", Body: "x", CMID: "c", Seq: f.seq}
	b := &batch{sends: []*storage.Send{{From: 1, Recipients: f.uids, Msg: m}},
		msgs: []*pushMsg{{frame: encodeMsgFrame(&m), conv: m.Conv, seq: m.Seq}}}
	if !f.rt.routeBatch(f.s, b) {
		f.t.Fatal("routeBatch: stopping")
	}
	f.rt.handOver(f.s, false)
}

// queued returns the entries waiting in each loop's inbox.
func (f *capFixture) queued() []int {
	n := make([]int, len(f.loops))
	for i, lp := range f.loops {
		lp.ib.mu.Lock()
		n[i] = len(lp.ib.q)
		lp.ib.mu.Unlock()
	}
	return n
}

// finish empties loop i's inbox as its drain would, leaving it idle.
func (f *capFixture) finish(i int) {
	ib := &f.loops[i].ib
	ib.mu.Lock()
	ib.q, ib.items, ib.scheduled = ib.q[:0], 0, false
	ib.mu.Unlock()
}

func (f *capFixture) want(what string, want ...int) {
	f.t.Helper()
	if got := f.queued(); !slices.Equal(got, want) {
		f.t.Fatalf("%s: entries per loop %v, want %v", what, got, want)
	}
}

// With more loops than may work on fan-out at once (maxBusy), the router
// hands entries to at most maxBusy loops, oldest open entry first, and a
// loop that waits for its turn merges the next batches into its entry
// until it is full, then gets it whatever the count.
func TestHandOverAtMostMaxBusy(t *testing.T) {
	f := newCapFixture(t, 3, 2)
	rt := f.rt
	f.route()
	f.want("after batch 1 (two loops at most)", 1, 1, 0)
	if rt.deferred.Load() != 1 {
		t.Fatalf("deferred = %d, want 1", rt.deferred.Load())
	}
	f.route() // loops 0 and 1 busy, loop 2 waiting: all three open entries grow
	f.want("after batch 2", 1, 1, 0)
	if rt.open[2] == nil || rt.open[2].msgs != 2 {
		t.Fatalf("open entry of loop 2 %+v: want 2 messages merged", rt.open[2])
	}
	if rt.deferred.Load() != 1 {
		t.Fatalf("deferred = %d, want 1 (an entry is counted once)", rt.deferred.Load())
	}
	f.finish(0)
	rt.handOver(f.s, false)
	// The freed turn goes to the oldest open entry, loop 2's, not back to
	// loop 0 (whose entry holds only batch 2).
	f.want("after loop 0 went idle", 0, 1, 1)
	if rt.open[0] == nil {
		t.Fatal("loop 0's entry was handed over: want it waiting")
	}
	lp2 := f.loops[2]
	lp2.ib.mu.Lock()
	e := lp2.ib.q[0]
	lp2.ib.mu.Unlock()
	if len(e.b.msgs) != 2 || len(e.items) != 2 || e.items[0].arg != 0 || e.items[1].arg != 1 {
		t.Fatalf("loop 2's entry: %d messages, items %+v; want both batches, in order", len(e.b.msgs), e.items)
	}

	// Loops 1 and 2 stay busy (as loops whose inboxes never empty would):
	// loop 0's entry waits while it merges, and goes once it is full.
	for range maxMergedMsgs - 2 {
		f.route()
	}
	f.want("loop 0 one message short of full", 0, 1, 1)
	if rt.open[0].msgs != maxMergedMsgs-1 {
		t.Fatalf("loop 0's open entry: %d messages, want %d", rt.open[0].msgs, maxMergedMsgs-1)
	}
	f.route()
	f.want("loop 0's entry full", 1, 1, 1)
	if rt.open[0] != nil {
		t.Fatal("loop 0's entry is full and still open")
	}
}

// An entry held back for maxDefer goes whatever the count: the turns may
// belong to loops that never go idle.
func TestHandOverMaxDefer(t *testing.T) {
	f := newCapFixture(t, 2, 1)
	f.route()
	f.want("after batch 1 (one loop at most)", 1, 0)
	f.rt.maxDefer = 0 // loop 0 never goes idle; loop 1 has waited long enough
	f.rt.handOver(f.s, false)
	f.want("after maxDefer", 1, 1)
	if !f.rt.nextDue.IsZero() {
		t.Fatalf("nextDue %v with nothing held back", f.rt.nextDue)
	}
}

// Only fan-out entries the router handed over take turns: a loop busy
// with other inbox work (worker replies, expiries) does not, and a loop
// that gets no fan-out is not counted.
func TestHandOverCountsOnlyFanout(t *testing.T) {
	f := newCapFixture(t, 3, 1)
	f.uids = f.uids[1:] // loop 0 has no recipient
	// Loop 0 is busy with a worker reply.
	f.loops[0].put(entry{kind: entFrames}, false)
	f.route()
	f.want("loop 0 busy with other work", 1, 1, 0)
	f.finish(1)
	f.rt.handOver(f.s, false)
	f.want("loop 1 idle again: the turn goes to loop 2", 1, 0, 1)
}

// Without the bound (maxBusy 0, or at least as many as the loops) every
// idle loop gets its entry at once.
func TestHandOverUnbounded(t *testing.T) {
	for _, max := range []int{0, 3} {
		f := newCapFixture(t, 3, max)
		f.route()
		f.want(fmt.Sprintf("maxBusy %d", max), 1, 1, 1)
		if f.rt.deferred.Load() != 0 {
			t.Fatalf("maxBusy %d: deferred %d", max, f.rt.deferred.Load())
		}
	}
}
