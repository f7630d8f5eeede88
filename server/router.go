package server

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/magpie-im/magpie/storage"
)

// Sessions and routing.
//
// sessions is the uid → connections index: 64 shards, a lock each. The
// owning loop adds a connection when it authenticates and removes it when
// it closes; the router and the workers read it from their goroutines.
// A uid's list is never edited in place (copy on write), so a reader may
// walk the slice it got after dropping the lock. A reader touches only the
// *conn pointer and its immutable fields (lp, uid, device): the state is
// re-checked by the owning loop when the entry runs, since a connection
// may close between routing and delivery.
type sessions struct {
	shards [sessShards]sessShard
}

const sessShards = 64

type sessShard struct {
	mu sync.RWMutex
	m  map[uint64][]*conn
	// Presence (presence.go), under mu: per-user state of the users that
	// are subscribed to, in their grace period, or changed since the
	// last checkpoint.
	pres     map[uint64]*presUser
	seen     map[uint64]seenRec // last_seen changes for the next checkpoint
	flushing map[uint64]seenRec // the checkpoint being written
	_        [32]byte           // keep shards' locks off each other's cache lines
}

// shard returns uid's shard. Any goroutine.
func (ss *sessions) shard(uid uint64) *sessShard {
	return &ss.shards[(uid*0x9E3779B97F4A7C15)>>58]
}

// init makes the shards' maps. Run, before any connection.
func (ss *sessions) init() {
	for i := range ss.shards {
		sh := &ss.shards[i]
		sh.m = make(map[uint64][]*conn)
		sh.pres = make(map[uint64]*presUser)
		sh.seen = make(map[uint64]seenRec)
		sh.flushing = make(map[uint64]seenRec)
	}
}

// add registers authenticated c. It returns the connection c replaces
// (same uid and device: PROTOCOL §3, closed 4004 by the caller), which it
// removes from the index at once, and whether c is the uid's first
// connection. REQUIRES: c's owning event loop.
func (ss *sessions) add(c *conn) (replaced *conn, first bool) {
	sh := ss.shard(c.uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	list := sh.m[c.uid]
	next := make([]*conn, 0, len(list)+1)
	for _, o := range list {
		if c.device != "" && o.device == c.device {
			replaced = o
			continue
		}
		next = append(next, o)
	}
	sh.m[c.uid] = append(next, c)
	// A replaced connection leaves the index here, and its remove later
	// finds nothing: the uid was online before c unless list was empty.
	return replaced, len(list) == 0
}

// remove drops c from the index and reports whether its uid has no
// connection left (false when c was not there, e.g. already replaced).
// REQUIRES: c's owning event loop.
func (ss *sessions) remove(c *conn) (last bool) {
	sh := ss.shard(c.uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	list := sh.m[c.uid]
	i := slices.Index(list, c)
	switch {
	case i < 0:
		return false
	case len(list) == 1:
		delete(sh.m, c.uid)
		return true
	}
	next := make([]*conn, 0, len(list)-1)
	sh.m[c.uid] = append(append(next, list[:i]...), list[i+1:]...)
	return false
}

// lookup returns uid's connections. The slice is never modified: the
// caller may keep walking it. Safe from any goroutine.
func (ss *sessions) lookup(uid uint64) []*conn {
	sh := ss.shard(uid)
	sh.mu.RLock()
	l := sh.m[uid]
	sh.mu.RUnlock()
	return l
}

// online registers an authenticated connection: the index, device
// replacement (4004) and the online gauges. REQUIRES: c's owning event loop.
func (s *Server) online(c *conn) {
	s.m.onlineConns.Inc()
	old, first := s.sess.add(c)
	if first {
		s.m.onlineUsers.Inc()
		s.presenceSync(c.uid)
	}
	if old != nil {
		// Never waits: a loop posts this (into its own inbox, possibly).
		old.lp.put(entry{kind: entClose, code: closeReplaced, reason: "replaced by a newer connection",
			items: []item{{c: old}}}, false)
	}
}

// offline undoes online. REQUIRES: c's owning event loop (OnClose).
func (s *Server) offline(c *conn) {
	s.m.onlineConns.Dec()
	if s.sess.remove(c) {
		s.m.onlineUsers.Dec()
		s.presenceSync(c.uid)
	}
}

// batch is one committed batch on its way to the loops: the sends in
// commit order and, for each newly stored message, its encoded msg frame.
// Read-only once handed to a loop. A loop's fan-out entry holds a batch of
// its own: the router merges consecutive committed batches into it while
// the loop is busy (see router).
type batch struct {
	sends   []*storage.Send
	msgs    []*pushMsg    // nil where nothing is pushed (error or duplicate)
	barrier chan struct{} // set on a barrier: closed by the router when reached
}

// router resolves committed batches to loops on its own goroutine, so the
// committer does no per-recipient work. One router processes batches in
// commit order, and each loop's entries go into its FIFO inbox in that
// order, so per conversation (and per connection) pushes arrive in seq
// order.
//
// Coalescing: each loop has at most one open entry in the router. A batch
// is merged into the open entry of every loop it reaches; an open entry is
// handed to its loop as soon as the loop is idle (its inbox empty and not
// draining). While a loop works through a large fan-out the next batches
// therefore wait in one open entry instead of queueing as separate
// entries, and the loop then writes each connection's pushes of all of
// them with one writev: the busier the loop, the fewer syscalls per
// delivery. An idle loop gets each batch at once (while fewer than
// --fanout-loops loops work on fan-out, below), so a quiet server adds
// no delay.
//
// Loops that run at once: the router keeps at most maxBusy loops
// (--fanout-loops, default GOMAXPROCS: the loops that can run at once)
// working on fan-out entries it handed them, and hands the next entries to
// idle loops oldest open entry first. With no more loops than that, the
// default, it never holds an entry back. With more loops than CPUs the
// loops would only take turns on the CPUs anyway: one that got its entry
// early wrote its share and went idle before the next commit, so every
// batch reached it alone and each push was a write of its own (at 32
// loops on 2 CPUs, 34 % of the CPU in single-frame writes against 7 % at
// 8). A loop that waits for a turn keeps merging batches into its open
// entry instead, as a busy loop does. A full entry (maxMergedMsgs or
// --inbox items), or one held back for maxDefer, is handed over whatever
// the count, so no loop waits long for a turn, even when the loops that
// hold the turns never go idle. Only loops working on an entry the router
// handed them count: a loop busy with worker replies or timer expiries
// takes no turn. Entries held back are counted in
// magpie_router_deferred_total.
//
// Within an entry the items are grouped by connection (each connection's
// items in commit order), so a drain slice boundary splits at most one
// connection's run.
//
// Bounds: an open entry is full at --inbox items or maxMergedMsgs
// messages; the router then stops taking batches until that loop is idle
// (counted in magpie_loop_inbox_waits_total), its queue (routerQueue)
// fills, the committer waits in OnSent (magpie_router_waits_total), its
// own queue fills, and Submit answers rate_limited. An entry that reaches
// --inbox items in the middle of a batch is handed over (once its loop is
// idle) before the rest of the batch is routed (routeBatch, makeRoom), so
// one batch never takes an entry, or an inbox, past --inbox + 1 items.
type router struct {
	in    chan *batch
	stop  chan struct{} // closed when Run returns
	idle  chan struct{} // a loop went idle (cap 1; see loop.refill)
	open  []*openEntry  // per loop index
	free  []*openEntry  // handed-over entries, for reuse of nodes and order
	gen   uint64        // open-entry counter: marks conns in rtMark
	bgen  uint64        // batch counter: marks open entries in lastBatch
	waits []bool        // per loop index: counted as waiting for this loop already
	limit int           // --inbox: items of an open entry before it is full
	// maxBusy is how many loops may work on fan-out entries the router
	// handed them (see "Loops that run at once"); 0: no bound.
	maxBusy  int
	maxDefer time.Duration // longest an entry is held back (the constant maxDefer; tests change it)
	cands    []int         // handOver's scratch: loop indices, oldest entry first
	handed   []bool        // per loop index: handed a fan-out entry, not idle since
	nextDue  time.Time     // when the oldest held-back entry reaches maxDefer (zero: none)
	dueT     *time.Timer   // fires at nextDue (see dueC)
	// deferred counts entries held back by maxBusy, once per open entry
	// (magpie_router_deferred_total). Any goroutine reads it.
	deferred atomic.Uint64
	// openItems is the items in open entries (magpie_router_open_items),
	// set at each handOver. Any goroutine reads it.
	openItems atomic.Int64
}

// openEntry is the fan-out entry the router is building for one loop.
type openEntry struct {
	b         batch       // merged sends and msgs; items index into them
	nodes     []routeNode // items, chained per connection
	order     []*conn     // connections in order of first item
	gen       uint64
	lastBatch uint64    // bgen of the last batch appended to b
	base      int32     // offset of that batch in b
	msgs      int       // messages merged
	deferred  time.Time // when it was first held back (zero: never)
}

// routeNode is one item, chained to the next item of the same connection
// (-1: last).
type routeNode struct {
	arg  int32
	next int32
}

// routerQueue bounds the batches waiting for the router; when it is full
// OnSent waits (the committer's queue then fills and Submit answers
// rate_limited). A few batches absorb the router's jitter; more would only
// delay the backpressure (a batch holds up to storage's MaxBatch sends).
const routerQueue = 8

// maxMergedMsgs bounds the messages merged into one fan-out entry. Items
// are grouped by connection, so the last connection of an entry waits for
// every push of the entry to the others: the entry's size is the latency
// its first message can add. A writev per connection costs 4-8 µs here
// and a push about 0.3 µs, so 16 messages bring the writes down to a
// fraction of a syscall per delivery while an entry to 10,000 members
// still drains in about 0.1 s; more would save little and delay more.
const maxMergedMsgs = 16

// maxDefer bounds how long the loop cap holds an entry back (see "Loops
// that run at once"): normally an entry waits for a loop's turn, a few
// milliseconds; the bound covers loops that stay busy without end, so a
// message can wait at most this long for a turn.
const maxDefer = 50 * time.Millisecond

// onSent is the store's OnSent, on the committer goroutine: it encodes
// each new message's msg frame once and hands the batch to the router,
// waiting while the router's queue is full.
func (s *Server) onSent(sends []*storage.Send) {
	b := &batch{sends: append([]*storage.Send(nil), sends...), msgs: make([]*pushMsg, len(sends))}
	stored := 0
	for i, m := range sends {
		if m.Err == nil && !m.Dup {
			stored++
			b.msgs[i] = &pushMsg{frame: encodeMsgFrame(&m.Msg), conv: m.Msg.Conv, seq: m.Msg.Seq}
		}
	}
	s.m.msgsStored.Add(float64(stored))
	select {
	case s.rt.in <- b:
		return
	default:
	}
	s.m.routerWaits.Inc()
	select {
	case s.rt.in <- b:
	case <-s.rt.stop: // Run returned (a shutdown past its grace): nobody delivers
	}
}

// routerBarrier returns once the router has handed every batch queued
// before it to the loops' inboxes (open entries included), or false when
// ctx ends first. Safe from any goroutine but the router's and the
// committer's.
func (s *Server) routerBarrier(ctx context.Context) bool {
	b := &batch{barrier: make(chan struct{})}
	select {
	case s.rt.in <- b:
	case <-s.rt.stop:
		return true
	case <-ctx.Done():
		return false
	}
	select {
	case <-b.barrier:
		return true
	case <-ctx.Done():
		return false
	}
}

// route is the router goroutine (see router).
func (s *Server) route() {
	rt := s.rt
	for {
		if rt.full(s) {
			// Backpressure: take no batch until the loop with a full
			// entry is idle.
			select {
			case <-rt.idle:
			case <-rt.dueC():
			case <-rt.stop:
				return
			}
		} else {
			select {
			case <-rt.dueC():
			case b := <-rt.in:
				if b.barrier != nil {
					rt.handOver(s, true)
					close(b.barrier)
					continue
				}
				if !rt.routeBatch(s, b) {
					return
				}
			case <-rt.idle:
			case <-rt.stop:
				return
			}
		}
		rt.handOver(s, false)
	}
}

// routeBatch merges b into the open entries of the loops it reaches. When
// an open entry reaches --inbox items in the middle of b (a batch can fan
// out to more), the router hands it over as soon as its loop is idle and
// goes on with a new one: no entry, and so no inbox, ever holds more than
// --inbox items plus one. It returns false when the router is stopping.
// REQUIRES: the router goroutine.
func (rt *router) routeBatch(s *Server, b *batch) bool {
	rt.bgen++
	for i, m := range b.sends {
		sc, _ := tagConn(m.Tag)
		if sc != nil && rt.add(sc, b, i, true) && !rt.makeRoom(s) {
			return false
		}
		if b.msgs[i] == nil {
			continue
		}
		for _, uid := range m.Recipients {
			for _, rc := range s.sess.lookup(uid) {
				// The sending connection gets sent instead.
				if rc != sc && rt.add(rc, b, i, false) && !rt.makeRoom(s) {
					return false
				}
			}
		}
	}
	return true
}

// makeRoom waits until no open entry holds --inbox items: it hands over
// the open entries of idle loops and waits for the loop of a full one to
// go idle. It returns false when the router is stopping (nobody delivers
// any more). REQUIRES: the router goroutine.
func (rt *router) makeRoom(s *Server) bool {
	for {
		rt.handOver(s, false)
		if !rt.overItems(s) {
			return true
		}
		select {
		case <-rt.idle:
		case <-rt.dueC():
		case <-rt.stop:
			return false
		}
	}
}

// dueC returns a channel that fires when the oldest held-back entry
// reaches maxDefer, or nil when none is held back. REQUIRES: the router
// goroutine.
func (rt *router) dueC() <-chan time.Time {
	if rt.nextDue.IsZero() {
		return nil
	}
	d := time.Until(rt.nextDue)
	if rt.dueT == nil {
		rt.dueT = time.NewTimer(d)
	} else {
		rt.dueT.Reset(d)
	}
	return rt.dueT.C
}

// overItems reports whether an open entry holds --inbox items (counting
// the wait once per loop). REQUIRES: the router goroutine.
func (rt *router) overItems(s *Server) bool {
	over := false
	for idx, oe := range rt.open {
		if oe != nil && len(oe.nodes) >= rt.limit {
			rt.countWait(s, idx)
			over = true
		}
	}
	return over
}

// countWait counts one wait for loop idx's inbox, once per open entry.
// REQUIRES: the router goroutine.
func (rt *router) countWait(s *Server, idx int) {
	if !rt.waits[idx] {
		rt.waits[idx] = true
		s.allLoops()[idx].ib.waits.Add(1)
	}
}

// add records one item for c (message i of b: a push, or the sender's
// reply), chained after c's earlier items of its loop's open entry, and
// reports whether that entry now holds --inbox items.
// REQUIRES: the router goroutine (it owns c.rt*).
func (rt *router) add(c *conn, b *batch, i int, reply bool) bool {
	idx := c.lp.idx
	for idx >= len(rt.open) {
		rt.open = append(rt.open, nil)
		rt.waits = append(rt.waits, false)
	}
	oe := rt.open[idx]
	if oe == nil {
		if n := len(rt.free); n > 0 {
			oe = rt.free[n-1]
			rt.free = rt.free[:n-1]
		} else {
			oe = &openEntry{}
		}
		rt.gen++
		oe.gen = rt.gen
		rt.open[idx] = oe
	}
	if oe.lastBatch != rt.bgen {
		// The entry takes b's sends from i on: the items routeBatch adds
		// after this one are of sends i and later (also in a new entry
		// after a split, which so copies only the rest of b).
		oe.lastBatch = rt.bgen
		oe.base = int32(len(oe.b.sends) - i)
		oe.b.sends = append(oe.b.sends, b.sends[i:]...)
		oe.b.msgs = append(oe.b.msgs, b.msgs[i:]...)
		oe.msgs += len(b.sends) - i
	}
	arg := oe.base + int32(i)
	if reply {
		arg = ^arg
	}
	n := int32(len(oe.nodes))
	oe.nodes = append(oe.nodes, routeNode{arg: arg, next: -1})
	if c.rtMark != oe.gen {
		c.rtMark, c.rtHead = oe.gen, n
		oe.order = append(oe.order, c)
	} else {
		oe.nodes[c.rtTail].next = n
	}
	c.rtTail = n
	return len(oe.nodes) >= rt.limit
}

// full reports whether an open entry has reached its bound (counting the
// wait once per loop). REQUIRES: the router goroutine.
func (rt *router) full(s *Server) bool {
	full := false
	for idx, oe := range rt.open {
		if oe != nil && oe.full(rt.limit) {
			rt.countWait(s, idx)
			full = true
		}
	}
	return full
}

// full reports whether oe holds limit items or maxMergedMsgs messages.
// REQUIRES: the router goroutine.
func (oe *openEntry) full(limit int) bool {
	return len(oe.nodes) >= limit || oe.msgs >= maxMergedMsgs
}

// handOver puts the open entry of every idle loop (of every loop when all
// is set) into its inbox, oldest entry first, while fewer than maxBusy
// loops are working on a fan-out entry it handed them. A full entry, or
// one held back for maxDefer, goes whatever the count.
// REQUIRES: the router goroutine.
func (rt *router) handOver(s *Server, all bool) {
	loops := s.allLoops()
	for len(rt.handed) < len(loops) {
		rt.handed = append(rt.handed, false)
	}
	// Bounded only with more loops than maxBusy; otherwise only the loops
	// with an open entry are looked at, in any order.
	bounded := !all && rt.maxBusy > 0 && rt.maxBusy < len(loops)
	busy := 0
	rt.cands = rt.cands[:0]
	for idx, lp := range loops {
		oe := rt.entryOf(idx)
		if oe == nil && !(bounded && rt.handed[idx]) {
			continue
		}
		if all {
			rt.cands = append(rt.cands, idx)
			continue
		}
		idle := lp.idle()
		if idle {
			rt.handed[idx] = false
		} else if rt.handed[idx] {
			busy++
		}
		if idle && oe != nil {
			rt.cands = append(rt.cands, idx)
		}
	}
	if bounded {
		slices.SortFunc(rt.cands, func(a, b int) int { return cmp.Compare(rt.open[a].gen, rt.open[b].gen) })
	}
	rt.nextDue = time.Time{}
	var now time.Time
	for _, idx := range rt.cands {
		oe := rt.open[idx]
		if bounded && busy >= rt.maxBusy && !oe.full(rt.limit) {
			if now.IsZero() {
				now = time.Now()
			}
			if oe.deferred.IsZero() {
				oe.deferred = now
				rt.deferred.Add(1)
			}
			if due := oe.deferred.Add(rt.maxDefer); due.After(now) {
				if rt.nextDue.IsZero() || due.Before(rt.nextDue) {
					rt.nextDue = due
				}
				continue
			}
		}
		if loops[idx].put(oe.entry(), true) {
			rt.handed[idx] = true
			busy++
		}
		rt.recycle(idx)
	}
	n := 0
	for _, oe := range rt.open {
		if oe != nil {
			n += len(oe.nodes)
		}
	}
	rt.openItems.Store(int64(n))
}

// entryOf returns loop idx's open entry, or nil. REQUIRES: the router goroutine.
func (rt *router) entryOf(idx int) *openEntry {
	if idx < len(rt.open) {
		return rt.open[idx]
	}
	return nil
}

// recycle closes loop idx's open entry (handed over) and keeps its chains
// for the next one: the batch's slices went to the loop, nodes and order
// stay here. REQUIRES: the router goroutine.
func (rt *router) recycle(idx int) {
	oe := rt.open[idx]
	rt.open[idx] = nil
	rt.waits[idx] = false
	clear(oe.order)
	*oe = openEntry{nodes: oe.nodes[:0], order: oe.order[:0]}
	if len(rt.free) < 4 && cap(oe.nodes) <= 1<<20 {
		rt.free = append(rt.free, oe)
	}
}

// entry returns the fan-out entry of oe: each connection's items together,
// in order. REQUIRES: the router goroutine.
func (oe *openEntry) entry() entry {
	items := takeItems()
	for _, c := range oe.order {
		for n := c.rtHead; n >= 0; n = oe.nodes[n].next {
			items = append(items, item{c: c, arg: oe.nodes[n].arg})
		}
	}
	b := oe.b
	return entry{kind: entPush, b: &b, items: items}
}

// runPush runs up to budget items of a fan-out entry: the pushes to this
// loop's recipients and its senders' replies, in commit order.
// REQUIRES: owning event loop.
func (lp *loop) runPush(e *entry, budget int) int {
	n := 0
	for ; e.next < len(e.items) && n < budget; e.next++ {
		it := e.items[e.next]
		c := it.c
		if len(c.pend) == 0 && len(lp.dirty) >= lp.turnConns {
			break // the turn has written to enough connections
		}
		n++
		if c.state != stOpen {
			continue // closed since it was routed
		}
		if it.arg >= 0 {
			c.push(e.b.msgs[it.arg])
			continue
		}
		m := e.b.sends[^it.arg]
		_, rid := tagConn(m.Tag)
		if m.Err != nil {
			c.errorReply(ridBytes(rid), m.CMID, m.Err.Code, m.Err.Msg)
		} else {
			c.reply(appendSent(lp.fb.start(), ridBytes(rid), &m.Msg))
		}
	}
	return max(n, 1)
}

// sendTag carries the rid of a send to its sent reply.
type sendTag struct {
	c   *conn
	rid string
}

// tagConn returns the connection and rid a send was submitted with. Any goroutine.
func tagConn(tag any) (*conn, string) {
	switch t := tag.(type) {
	case *conn:
		return t, ""
	case *sendTag:
		return t.c, t.rid
	}
	return nil, ""
}

// ridBytes returns rid as bytes (nil when empty). Any goroutine.
func ridBytes(rid string) []byte {
	if rid == "" {
		return nil
	}
	return []byte(rid)
}
