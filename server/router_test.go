package server

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wheel"
)

// With more loops than may run at once (maxBusy), the router hands fan-out
// entries to at most maxBusy loops with inbox work, oldest open entry
// first, and a loop that waits for its turn merges the next batches into
// its entry until it is full, then gets it whatever the count. Without the
// bound every idle loop gets its entry at once.
func TestHandOverAtMostMaxBusy(t *testing.T) {
	w := wheel.New(wheel.Options{})
	defer w.Stop()
	s := &Server{wheel: w, m: newMetrics(func() float64 { return 0 })}
	s.sess.init()
	s.cfg.MaxInflight, s.cfg.AckTimeout, s.cfg.Inbox = 1024, time.Hour, 1<<20
	var loops []*loop
	var uids []uint64
	for i := 0; i < 3; i++ {
		lp := &loop{srv: s, idx: i, turnConns: 1 << 20}
		lp.ib.limit = s.cfg.Inbox
		lp.ib.notFull.L = &lp.ib.mu
		// A wake socket nobody reads: put's wake-up is one byte in it.
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
		lp.wakeW = fds[1]
		lp.wakeOK.Store(true)
		loops = append(loops, lp)
		uids = append(uids, uint64(10+i))
	}
	s.loops.Store(&loops)
	for i, lp := range loops {
		c := addFakeConn(lp, &nopConn{}, uids[i])
		defer c.retx.Stop()
	}
	seq := uint64(0)
	route := func(rt *router) {
		seq++
		m := storage.Message{Conv: "g:1", From: 1, Kind: "text", Body: "x", CMID: "c", Seq: seq}
		b := &batch{sends: []*storage.Send{{From: 1, Recipients: uids, Msg: m}},
			msgs: []*pushMsg{{frame: encodeMsgFrame(&m), conv: m.Conv, seq: m.Seq}}}
		if !rt.routeBatch(s, b) {
			t.Fatal("routeBatch: stopping")
		}
		rt.handOver(s, false)
	}
	queued := func() (n [3]int) {
		for i, lp := range loops {
			lp.ib.mu.Lock()
			n[i] = len(lp.ib.q)
			lp.ib.mu.Unlock()
		}
		return n
	}
	// finish empties loop i's inbox as its drain would, leaving it idle.
	finish := func(i int) {
		ib := &loops[i].ib
		ib.mu.Lock()
		ib.q, ib.items, ib.scheduled = ib.q[:0], 0, false
		ib.mu.Unlock()
	}

	rt := &router{limit: s.cfg.Inbox, maxBusy: 2}
	route(rt)
	if got := queued(); got != [3]int{1, 1, 0} {
		t.Fatalf("after batch 1, entries per loop %v, want [1 1 0] (two loops at most)", got)
	}
	if rt.deferred.Load() != 1 {
		t.Fatalf("deferred = %d, want 1", rt.deferred.Load())
	}
	route(rt) // every loop busy or waiting: all three open entries grow
	if got := queued(); got != [3]int{1, 1, 0} || rt.open[2] == nil || rt.open[2].msgs != 2 {
		t.Fatalf("after batch 2, entries per loop %v, open entry of loop 2 %+v: want [1 1 0] and 2 messages merged", got, rt.open[2])
	}
	if rt.deferred.Load() != 1 {
		t.Fatalf("deferred = %d, want 1 (an entry is counted once)", rt.deferred.Load())
	}
	finish(0)
	rt.handOver(s, false)
	// The freed turn goes to the oldest open entry, loop 2's, not back to
	// loop 0 (whose entry holds only batch 2).
	got := queued()
	if got != [3]int{0, 1, 1} || rt.open[0] == nil {
		t.Fatalf("after loop 0 went idle, entries per loop %v, loop 0 open %v: want [0 1 1], loop 0 still waiting", got, rt.open[0] != nil)
	}
	loops[2].ib.mu.Lock()
	e := loops[2].ib.q[0]
	loops[2].ib.mu.Unlock()
	if len(e.b.msgs) != 2 || len(e.items) != 2 || e.items[0].arg != 0 || e.items[1].arg != 1 {
		t.Fatalf("loop 2's entry: %d messages, items %+v; want both batches, in order", len(e.b.msgs), e.items)
	}

	// Loops 1 and 2 stay busy (as a loop whose inbox never empties would):
	// loop 0's entry waits while it merges, and goes once it is full.
	for range maxMergedMsgs - 2 {
		route(rt)
	}
	if got := queued(); got != [3]int{0, 1, 1} || rt.open[0].msgs != maxMergedMsgs-1 {
		t.Fatalf("entries per loop %v, loop 0's open entry %d messages; want [0 1 1], %d", got, rt.open[0].msgs, maxMergedMsgs-1)
	}
	route(rt)
	if got := queued(); got != [3]int{1, 1, 1} || rt.open[0] != nil {
		t.Fatalf("loop 0's entry full (%d messages) and still held back: entries per loop %v", maxMergedMsgs, got)
	}

	// Without the bound (maxBusy 0, or at least as many as the loops)
	// every idle loop gets its entry at once.
	for i := range loops {
		finish(i)
	}
	rt.handOver(s, true)
	for i := range loops {
		finish(i)
	}
	// (The same router: a connection's routing marks belong to it.)
	for _, max := range []int{0, 3} {
		rt.maxBusy = max
		before := rt.deferred.Load()
		route(rt)
		if got := queued(); got != [3]int{1, 1, 1} || rt.deferred.Load() != before {
			t.Fatalf("maxBusy %d: entries per loop %v, deferred %d more; want [1 1 1], none", max, got, rt.deferred.Load()-before)
		}
		for i := range loops {
			finish(i)
		}
	}
}
