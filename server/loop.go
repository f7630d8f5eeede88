package server

import (
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/magpie-im/magpie/wsproto"
)

// A loop is the state of one gnet event loop: its connections, its ordered
// inbox, and the write queue it flushes once per turn.
//
// # The inbox
//
// Everything another goroutine hands to a loop goes through the loop's
// inbox, a bounded FIFO of entries: fan-out entries from the router,
// worker replies and read broadcasts, timer expiries, device replacement,
// shutdown. The loop runs the entries strictly in order. gnet's own task
// queue (EventLoop.Execute) is not FIFO under load — past 1,024 queued
// tasks it puts new ones in a second queue that runs only after the first
// is empty, and tasks posted meanwhile overtake them — so Magpie never
// relies on it for order: a producer that makes the inbox non-empty sends
// one wake-up, and no other, until the loop has left the inbox empty again
// (the scheduled flag). At most one wake-up per loop is ever outstanding.
//
// The wake-up is one byte on the loop's wake socket (a socketpair whose
// read end is a gnet connection of that loop), so a drain turn is an I/O
// event like a client's read: a loop with a long fan-out runs one slice,
// then serves every other ready connection before the next slice. Until
// that socket is registered (the first microseconds of a loop's life) and
// after gnet has closed it, the wake-up is an Execute task instead; order
// does not depend on which is used.
//
// # Bounds
//
// The inbox counts items (an entry's connections, plus one), not entries,
// so a fan-out to 100,000 connections cannot hide in one entry. Workers
// wait while it holds more than --inbox items (and is not empty). The
// router puts an entry only into an idle loop's inbox and otherwise merges
// batches into an open entry bounded by --inbox items, splitting a batch
// that fans out to more (see router); when
// that is full it stops taking batches, the committer waits in OnSent, its
// queue fills, and Submit answers rate_limited — backpressure instead of
// unbounded growth. Timer
// expiries, device replacement and shutdown never wait (the wheel goroutine
// and the loops must never block); they are bounded by construction: a
// connection has two timers, each fires at most once per arming, and
// device replacement is one entry per authentication.
type loop struct {
	srv *Server
	el  gnet.EventLoop
	idx int // position in Server.loops; set before the loop is published

	ib inbox

	// Wake socket: wakeW is written by producers (under ib.mu) once wakeOK
	// is set; both change only under ib.mu or, for wakeOK, on this loop.
	wakeW  int
	wakeOK atomic.Bool

	drainTask gnet.Runnable

	st loopStats // hot-path counters (atomics: read by /metrics)

	// REQUIRES: owning event loop for every field below.
	conns     []*conn  // every conn of this loop
	dirty     []*conn  // conns with pend frames
	fb        frameBuf // reply scratch
	arena     []byte   // frames queued until the next flush
	req       request  // decoder scratch
	cur       []entry  // entries taken from the inbox, run in order
	flushing  bool     // flush is writing its dirty list (it stamps pushes at its end)
	pos       int      // cur[pos] is the next entry to run
	done      int      // items of cur run since the inbox count was last settled
	reads     int      // OnTraffic calls since the last drain turn, while one is pending
	draining  bool     // a drain turn ended with work left (the next wake-up is sent)
	turnConns int      // connections this drain turn may write to

	spareWins []*window  // recycled ACK windows (see takeWindow)
	sparePend [][][]byte // recycled pend lists
}

// A drain turn runs at most drainItems items (pushes, replies, expiries)
// and writes to at most drainConns connections, then flushes and yields to
// the loop's I/O. Writing to a connection is the dominant cost (one writev
// on loopback measured 4-8 µs here, the receiver's wake-up included; the
// per-item work is 0.1-0.2 µs), so 128 connections keep a turn near 1 ms:
// the head-of-line delay a ping on the same loop sees while a large
// fan-out is in progress. When the loop served more reads than that since
// the previous turn, the turn may write to as many connections as it
// served: the fan-out and the loop's other connections (clients acking
// every push, say) then share the loop about equally instead of the
// fan-out getting one slice per epoll round. Items are grouped by
// connection, so when the router merged several batches a connection takes
// all its pushes in one writev within the same turn.
const (
	drainItems = 2048
	drainConns = 128
)

// Inbox entry kinds.
const (
	entPush     uint8 = iota // fan-out: pushes and sent/error replies of one committed batch
	entFrames                // ready frames (worker replies, read broadcasts)
	entExpiry                // timer expiries, one entry per loop per wheel tick
	entClose                 // close one connection (device replacement, 4004)
	entShutdown              // close every connection with 1001
)

// Inbox entry kinds of PROTOCOL §14–§16 (presence.go), numbered apart.
const (
	entPresence uint8 = 32 + iota // presence changes: items[i].c subscribes to uids[i] (items[i].arg: its index in the connection's list)
	entCall                       // run call with each item's connection (a worker's result)
)

// Timers named by an expiry item.
const (
	timerIdle int32 = iota
	timerRetx
	timerPresence // the connection's presence push (presence.go)
)

// item is one connection's part of an entry. arg: for entPush, the index
// of the message in the batch (a push) or its complement ^i (the sender's
// sent/error reply); for entFrames, the index of the frame; for
// entExpiry, which timer.
type item struct {
	c   *conn
	arg int32
}

// entry is one inbox entry. Its fields are read-only once put, except
// next, which only the owning loop moves.
type entry struct {
	kind   uint8
	code   uint16 // entClose
	reason string // entClose
	items  []item
	next   int      // items[:next] have run
	b      *batch   // entPush
	frames [][]byte // entFrames
	done   func()   // entShutdown: called once every connection is closed
	uids   []uint64 // entPresence: one per item
	call   func(*conn)
}

// inbox is the loop's ordered, bounded queue. Every field is guarded by mu
// except the statistics (atomics, read by /metrics).
type inbox struct {
	mu        sync.Mutex
	notFull   sync.Cond
	q         []entry
	items     int // items queued or taken and not yet settled by the loop
	limit     int
	scheduled bool // a wake-up is outstanding or the loop is draining
	dead      bool // gnet stopped: nothing will drain again
	waiters   int

	depth    atomic.Int64
	waits    atomic.Uint64 // producer waits on a full inbox
	wakes    atomic.Uint64 // wake-ups sent
	wakeErrs atomic.Uint64 // wake-ups that failed (engine stopped)
	dropped  atomic.Uint64 // items dropped because the loop is gone
	fanouts  atomic.Uint64 // fan-out entries received
}

// newLoop returns the state of gnet loop el. REQUIRES: el's goroutine (it
// enrolls the wake socket on el).
func newLoop(s *Server, el gnet.EventLoop, idx int) *loop {
	lp := &loop{srv: s, el: el, idx: idx, wakeW: -1}
	lp.ib.limit = s.cfg.Inbox
	lp.ib.notFull.L = &lp.ib.mu
	lp.drainTask = gnet.RunnableFunc(func(context.Context) error {
		lp.drain()
		return nil
	})
	lp.enrollWake()
	return lp
}

// wakeTag marks the wake socket's gnet connection (its Context).
type wakeTag struct{ lp *loop }

// enrollWake creates the wake socket and hands its read end to gnet as a
// connection of this loop. On failure the loop keeps using Execute
// wake-ups (order is unaffected; a long fan-out then runs without
// yielding to I/O between slices).
// REQUIRES: owning event loop (newLoop).
func (lp *loop) enrollWake() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		lp.srv.log.Warn("wake socket", "err", err)
		return
	}
	f := os.NewFile(uintptr(fds[0]), "magpie-wake")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		lp.srv.log.Warn("wake socket", "err", err)
		return
	}
	if _, err := lp.el.Enroll(gnet.NewContext(context.Background(), &wakeTag{lp}), nc); err != nil {
		nc.Close()
		unix.Close(fds[1])
		lp.srv.log.Warn("wake socket", "err", err)
		return
	}
	lp.ib.mu.Lock()
	lp.wakeW = fds[1]
	lp.ib.mu.Unlock()
}

// closeWake closes the write end of the wake socket. Called once gnet has
// stopped; later wake-ups use Execute, which then fails and is counted.
// Run's goroutine, after gnet stopped.
func (lp *loop) closeWake() {
	lp.ib.mu.Lock()
	lp.wakeOK.Store(false)
	if lp.wakeW >= 0 {
		unix.Close(lp.wakeW)
		lp.wakeW = -1
	}
	lp.ib.mu.Unlock()
}

var wakeByte = []byte{1}

// signalLocked sends one wake-up. REQUIRES: lp.ib.mu.
func (lp *loop) signalLocked() {
	ib := &lp.ib
	ib.wakes.Add(1)
	if lp.wakeOK.Load() && lp.wakeW >= 0 {
		err := unix.Sendto(lp.wakeW, wakeByte, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, nil)
		if err == nil || err == unix.EAGAIN { // EAGAIN: bytes already wait, the loop will read them
			return
		}
	}
	if err := lp.el.Execute(context.Background(), lp.drainTask); err != nil {
		ib.wakeErrs.Add(1)
		lp.srv.wakeFailed(err)
		// Nothing will drain this inbox again: drop what it holds
		// (counted) and release the producers.
		ib.dead = true
		ib.dropped.Add(uint64(ib.items))
		for i := range ib.q {
			ib.q[i] = entry{}
		}
		ib.q = ib.q[:0]
		ib.items = 0
		ib.depth.Store(0)
		ib.notFull.Broadcast()
		lp.notifyIdle() // a router holding a full entry for this loop drops it
	}
}

// put appends e to the inbox, waiting while it is full when wait is set.
// It reports false when the loop is gone (e was dropped, counted).
// Safe from any goroutine; with wait set, never from an event loop.
func (lp *loop) put(e entry, wait bool) bool { return lp.enqueue(e, wait, false) }

// offer appends e to the inbox unless it is full or the loop is gone, and
// reports whether it did; it never waits. For what may be dropped when a
// loop is overloaded (typing). Safe from any goroutine.
func (lp *loop) offer(e entry) bool { return lp.enqueue(e, false, true) }

// enqueue is put and offer: refuse drops e when the inbox is full.
func (lp *loop) enqueue(e entry, wait, refuse bool) bool {
	ib := &lp.ib
	n := len(e.items) + 1
	ib.mu.Lock()
	if refuse && ib.items > 0 && ib.items+n > ib.limit {
		ib.mu.Unlock()
		return false
	}
	for wait && !ib.dead && ib.items > 0 && ib.items+n > ib.limit {
		ib.waits.Add(1)
		ib.waiters++
		ib.notFull.Wait()
		ib.waiters--
	}
	if ib.dead {
		ib.mu.Unlock()
		ib.dropped.Add(uint64(n))
		return false
	}
	ib.q = append(ib.q, e)
	ib.items += n
	ib.depth.Store(int64(ib.items))
	if e.kind == entPush {
		ib.fanouts.Add(1)
	}
	if !ib.scheduled {
		ib.scheduled = true
		lp.signalLocked()
	}
	ib.mu.Unlock()
	return true
}

// putExpiry hands one timer expiry of c to the loop. Expiries of one wheel
// tick coalesce into one entry: when the inbox's last entry is an expiry
// entry (not yet taken by the loop), c joins it. Never waits.
// Safe from any goroutine (called on the wheel's).
func (lp *loop) putExpiry(c *conn, timer int32) {
	ib := &lp.ib
	ib.mu.Lock()
	if ib.dead {
		ib.mu.Unlock()
		ib.dropped.Add(1)
		return
	}
	if k := len(ib.q); k > 0 && ib.q[k-1].kind == entExpiry {
		ib.q[k-1].items = append(ib.q[k-1].items, item{c, timer})
		ib.items++
	} else {
		ib.q = append(ib.q, entry{kind: entExpiry, items: append(takeItems(), item{c, timer})})
		ib.items += 2
	}
	ib.depth.Store(int64(ib.items))
	if !ib.scheduled {
		ib.scheduled = true
		lp.signalLocked()
	}
	ib.mu.Unlock()
}

// Item lists are recycled through a sync.Pool: the loop gives back the
// lists of the entries it has run, producers take them for new entries, so
// a steady fan-out does not allocate its item lists, and the GC reclaims
// them when traffic stops.
var itemLists sync.Pool // of *[]item

// takeItems returns an empty item list. Any goroutine.
func takeItems() []item {
	if p, ok := itemLists.Get().(*[]item); ok {
		return (*p)[:0]
	}
	return nil
}

// notifyIdle tells the router that a loop went idle (or died). Never
// waits. Any goroutine.
func (lp *loop) notifyIdle() {
	if rt := lp.srv.rt; rt != nil {
		select {
		case rt.idle <- struct{}{}:
		default:
		}
	}
}

// idle reports whether the loop has nothing to drain (or is gone). Safe
// from any goroutine.
func (lp *loop) idle() bool {
	lp.ib.mu.Lock()
	defer lp.ib.mu.Unlock()
	return lp.ib.dead || !lp.ib.scheduled
}

// drain runs inbox entries in order for one turn (drainItems items,
// drainConns connections), then
// flushes. If work remains it sends itself the next wake-up and returns,
// so gnet serves the loop's other connections before the next slice.
// REQUIRES: owning event loop.
func (lp *loop) drain() {
	lp.turnConns = max(drainConns, lp.reads)
	lp.reads = 0
	budget := max(drainItems, lp.turnConns)
	more := true
	for budget > 0 {
		if lp.pos == len(lp.cur) && !lp.refill() {
			more = false
			break
		}
		e := &lp.cur[lp.pos]
		budget -= lp.run(e, budget)
		if e.next < len(e.items) {
			break // budget spent inside this entry; resume at e.next
		}
		lp.done += len(e.items) + 1
		lp.release(e)
		lp.pos++
	}
	lp.draining = more
	if more {
		ib := &lp.ib
		ib.mu.Lock()
		lp.settleLocked()
		if !ib.dead {
			lp.signalLocked() // scheduled stays set: this is the outstanding wake-up
		}
		ib.mu.Unlock()
	}
	lp.flush()
}

// refill settles the items run so far and takes every queued entry, or
// clears scheduled and reports false when the inbox is empty.
// REQUIRES: owning event loop.
func (lp *loop) refill() bool {
	ib := &lp.ib
	clear(lp.cur)
	ib.mu.Lock()
	lp.settleLocked()
	if ib.dead {
		// Entries taken before gnet stopped are simply not run.
		lp.cur, lp.pos = lp.cur[:0], 0
		ib.mu.Unlock()
		return false
	}
	if len(ib.q) == 0 {
		ib.scheduled = false
		lp.cur, lp.pos = lp.cur[:0], 0
		ib.mu.Unlock()
		lp.notifyIdle() // the router may hand over what it merged meanwhile
		return false
	}
	lp.cur, ib.q = ib.q, lp.cur[:0]
	lp.pos = 0
	ib.mu.Unlock()
	return true
}

// settleLocked subtracts the items run since the last settle from the
// inbox count and wakes waiting producers. REQUIRES: ib.mu; owning loop.
func (lp *loop) settleLocked() {
	ib := &lp.ib
	if lp.done == 0 {
		return
	}
	ib.items -= lp.done
	if ib.items < 0 {
		ib.items = 0 // the inbox was emptied by signalLocked's failure path
	}
	lp.done = 0
	ib.depth.Store(int64(ib.items))
	if ib.waiters > 0 {
		ib.notFull.Broadcast()
	}
}

// release recycles a run entry's item list. REQUIRES: owning event loop.
func (lp *loop) release(e *entry) {
	l := e.items
	*e = entry{}
	if cap(l) == 0 {
		return
	}
	clear(l)
	l = l[:0]
	itemLists.Put(&l)
}

// run runs up to budget items of e and returns how many it ran (at least
// 1, so a turn always progresses). REQUIRES: owning event loop.
func (lp *loop) run(e *entry, budget int) int {
	switch e.kind {
	case entPush:
		return lp.runPush(e, budget)
	case entFrames:
		n := 0
		for ; e.next < len(e.items) && n < budget; e.next++ {
			it := e.items[e.next]
			it.c.queue(e.frames[it.arg])
			n++
		}
		return max(n, 1)
	case entExpiry:
		n := 0
		for ; e.next < len(e.items) && n < budget; e.next++ {
			it := e.items[e.next]
			switch it.arg {
			case timerIdle:
				it.c.onIdle()
			case timerRetx:
				it.c.onRetx()
			case timerPresence:
				it.c.onPresenceTimer()
			}
			n++
		}
		return max(n, 1)
	case entClose:
		for _, it := range e.items {
			it.c.closeWith(e.code, e.reason)
		}
		e.next = len(e.items)
		return 1
	case entPresence, entCall:
		return lp.runPresence(e, budget)
	case entShutdown:
		for _, c := range append([]*conn(nil), lp.conns...) {
			switch c.state {
			case stOpen:
				c.closeWith(wsproto.CloseGoingAway, "server shutting down")
			case stHandshake:
				c.dropTCP()
			}
		}
		e.next = len(e.items)
		if e.done != nil {
			e.done()
		}
		return 1
	}
	e.next = len(e.items)
	return 1
}

// queue adds a frame to be written at the end of the current loop turn
// (OnTraffic or drain). Every frame a connection gets goes through here,
// so frames leave in the order they were produced. The frame must stay
// unchanged until the flush (shared push frames, stashed replies).
// REQUIRES: owning event loop.
func (c *conn) queue(frame []byte) {
	if c.state != stOpen {
		return
	}
	if len(c.pend) == 0 {
		c.lp.dirty = append(c.lp.dirty, c)
	}
	if len(c.pend) == cap(c.pend) && cap(c.pend) >= keepSmall {
		if n := len(c.lp.sparePend); n > 0 && cap(c.lp.sparePend[n-1]) > cap(c.pend) {
			big := append(c.lp.sparePend[n-1], c.pend...)
			c.lp.sparePend[n-1] = nil
			c.lp.sparePend = c.lp.sparePend[:n-1]
			clear(c.pend)
			c.pend = big
		}
	}
	c.pend = append(c.pend, frame)
}

// reply queues a JSON payload built on c.lp.fb.start(). REQUIRES: owning
// event loop.
func (c *conn) reply(payload []byte) {
	c.queue(c.lp.stash(c.lp.fb.finish(payload)))
}

// stash copies frame into the loop's arena, valid until the next flush
// (gnet copies whatever it cannot write at once). REQUIRES: owning event loop.
func (lp *loop) stash(frame []byte) []byte {
	off := len(lp.arena)
	lp.arena = append(lp.arena, frame...)
	return lp.arena[off:len(lp.arena):len(lp.arena)]
}

// maxIovecs bounds the buffers of one Writev (Linux IOV_MAX is 1024).
const maxIovecs = 512

// flush writes every dirty connection's queued frames, one writev per
// maxIovecs frames, and resets the arena. REQUIRES: owning event loop.
func (lp *loop) flush() {
	lp.flushing = true
	for _, c := range lp.dirty {
		c.flushPend()
	}
	lp.flushing = false
	// One clock read for the whole flush, taken after its last write: a
	// first-send time may be late by the flush (never early).
	var now int64
	for i, c := range lp.dirty {
		lp.dirty[i] = nil
		if c.unstamped {
			if now == 0 {
				now = lp.srv.wheel.Precise()
			}
			c.stamp(now)
		}
	}
	lp.dirty = lp.dirty[:0]
	if cap(lp.arena) > 1<<20 {
		lp.arena = nil
	} else {
		lp.arena = lp.arena[:0]
	}
}

// flushPend writes c's queued frames now (flush, or a close that must
// follow them). REQUIRES: owning event loop.
func (c *conn) flushPend() {
	lp := c.lp
	if c.state != stOpen || len(c.pend) == 0 {
		clear(c.pend)
		c.pend = c.pend[:0]
		return
	}
	n := 0
	for _, f := range c.pend {
		n += len(f)
	}
	lp.st.framesOut.Add(uint64(len(c.pend)))
	lp.st.bytesOut.Add(uint64(n))
	// gnet hands Writev's slices to writev(2) as they are when nothing is
	// buffered, and writev fails with EINVAL above IOV_MAX (1024) buffers,
	// which closes the connection: write in chunks. A chunk that cannot go
	// out at once is buffered, and later chunks queue behind it, in order.
	for p := c.pend; len(p) > 0 && c.state == stOpen; {
		k := min(len(p), maxIovecs)
		if k == 1 {
			_, _ = c.gc.Write(p[0])
		} else {
			_, _ = c.gc.Writev(p[:k])
		}
		p = p[k:]
	}
	if c.unstamped && !lp.flushing { // flush stamps its connections at its end
		c.stamp(lp.srv.wheel.Precise()) // after the writes: never early
	}
	lp.releasePend(c)
	c.checkOutbound()
}

// Burst-sized ACK windows and pend lists are recycled through small
// per-loop free lists, so a burst to thousands of connections does not
// allocate and grow them per connection every time, while an idle
// connection holds neither.
const (
	spareMax   = 256 // free windows / pend lists kept per loop
	keepSmall  = 64  // a connection keeps a window or pend list up to this capacity
	spareLimit = 4096
)

// releasePend empties c.pend, keeping a small list on the connection and
// recycling a large one. REQUIRES: owning event loop.
func (lp *loop) releasePend(c *conn) {
	clear(c.pend)
	switch {
	case cap(c.pend) <= keepSmall:
		c.pend = c.pend[:0]
	case len(lp.sparePend) < spareMax && cap(c.pend) <= spareLimit:
		lp.sparePend = append(lp.sparePend, c.pend[:0])
		c.pend = nil
	default:
		c.pend = nil
	}
}
