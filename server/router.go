package server

import (
	"slices"
	"sync"

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
	_  [32]byte // keep shards' locks off each other's cache lines
}

func (ss *sessions) shard(uid uint64) *sessShard {
	return &ss.shards[(uid*0x9E3779B97F4A7C15)>>58]
}

func (ss *sessions) init() {
	for i := range ss.shards {
		ss.shards[i].m = make(map[uint64][]*conn)
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
	return replaced, len(next) == 0
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
	}
}

// batch is one committed batch on its way to the loops: the sends in
// commit order and, for each newly stored message, its encoded msg frame.
// Read-only once built; shared by every loop it reaches.
type batch struct {
	sends   []*storage.Send
	msgs    []*pushMsg    // nil where nothing is pushed (error or duplicate)
	barrier chan struct{} // set on a barrier: closed by the router when reached
}

// router resolves committed batches to loops on its own goroutine, so the
// committer does no per-recipient work. One router processes batches in
// commit order and every inbox is FIFO, so per conversation (and per
// connection) pushes arrive in seq order.
//
// Within a loop's entry the items are grouped by connection (each
// connection's items in commit order): a connection's pushes of one batch
// then leave in one writev, and a drain slice boundary splits at most one
// connection's run.
type router struct {
	in      chan *batch
	stop    chan struct{} // closed when Run returns
	per     [][]item      // per loop index: this batch's items for that loop
	touched []int
	gen     uint64      // batch counter, marks conns in rtMark
	nodes   []routeNode // this batch's items, chained per connection
	order   []*conn     // connections in order of first item
}

// routeNode is one item of the batch being routed, chained to the next
// item of the same connection (-1: last).
type routeNode struct {
	arg  int32
	next int32
}

// routerQueue bounds the batches waiting for the router; when it is full
// OnSent waits (the committer's queue then fills and Submit answers
// rate_limited). A few batches absorb the router's jitter; more would only
// delay the backpressure (a batch holds up to storage's MaxBatch sends).
const routerQueue = 8

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
// before it to the loops' inboxes. Safe from any goroutine but the
// router's and the committer's.
func (s *Server) routerBarrier() {
	b := &batch{barrier: make(chan struct{})}
	select {
	case s.rt.in <- b:
		<-b.barrier
	case <-s.rt.stop:
	}
}

// route is the router goroutine: for each batch it walks the recipients
// once, groups their connections by loop, and puts one entry into the
// inbox of each loop that has any (and of no other loop), waiting while
// that inbox is full.
func (s *Server) route() {
	rt := s.rt
	for {
		var b *batch
		select {
		case b = <-rt.in:
		case <-rt.stop:
			return
		}
		if b.barrier != nil {
			close(b.barrier)
			continue
		}
		rt.gen++
		for i, m := range b.sends {
			sc, _ := tagConn(m.Tag)
			if sc != nil {
				rt.add(sc, int32(^i))
			}
			if b.msgs[i] == nil {
				continue
			}
			for _, uid := range m.Recipients {
				for _, rc := range s.sess.lookup(uid) {
					if rc != sc { // the sending connection gets sent instead
						rt.add(rc, int32(i))
					}
				}
			}
		}
		rt.group()
		loops := s.allLoops()
		for _, idx := range rt.touched {
			items := rt.per[idx]
			rt.per[idx] = nil
			loops[idx].put(entry{kind: entPush, b: b, items: items}, true)
		}
		rt.touched = rt.touched[:0]
	}
}

// add records one item for c, chained after c's earlier items of this
// batch. REQUIRES: the router goroutine (it owns c.rt*).
func (rt *router) add(c *conn, arg int32) {
	n := int32(len(rt.nodes))
	rt.nodes = append(rt.nodes, routeNode{arg: arg, next: -1})
	if c.rtMark != rt.gen {
		c.rtMark, c.rtHead = rt.gen, n
		rt.order = append(rt.order, c)
	} else {
		rt.nodes[c.rtTail].next = n
	}
	c.rtTail = n
}

// group moves the batch's items into per-loop lists, each connection's
// items together and in order. REQUIRES: the router goroutine.
func (rt *router) group() {
	for i, c := range rt.order {
		rt.order[i] = nil
		idx := c.lp.idx
		for idx >= len(rt.per) {
			rt.per = append(rt.per, nil)
		}
		l := rt.per[idx]
		if l == nil {
			l = c.lp.takeItems()
			rt.touched = append(rt.touched, idx)
		}
		for n := c.rtHead; n >= 0; n = rt.nodes[n].next {
			l = append(l, item{c: c, arg: rt.nodes[n].arg})
		}
		rt.per[idx] = l
	}
	rt.order = rt.order[:0]
	if cap(rt.nodes) > 1<<20 {
		rt.nodes = nil
	} else {
		rt.nodes = rt.nodes[:0]
	}
}

// runPush runs up to budget items of a fan-out entry: the pushes to this
// loop's recipients and its senders' replies, in commit order.
// REQUIRES: owning event loop.
func (lp *loop) runPush(e *entry, budget int) int {
	n := 0
	for ; e.next < len(e.items) && n < budget; e.next++ {
		it := e.items[e.next]
		n++
		c := it.c
		if c.state != stOpen {
			continue // closed since it was routed
		}
		if it.arg >= 0 {
			c.push(e.b.msgs[it.arg], lp.now)
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

func tagConn(tag any) (*conn, string) {
	switch t := tag.(type) {
	case *conn:
		return t, ""
	case *sendTag:
		return t.c, t.rid
	}
	return nil, ""
}

func ridBytes(rid string) []byte {
	if rid == "" {
		return nil
	}
	return []byte(rid)
}
