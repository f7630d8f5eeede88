package server

import (
	"context"
	"errors"

	"github.com/panjf2000/gnet/v2"

	"github.com/magpie-im/magpie/storage"
)

// pushMsg is one stored message as pushed: its msg frame is encoded once
// and shared read-only by every recipient connection and every resend.
type pushMsg struct {
	frame []byte
	conv  string
	seq   uint64
}

// inflight is one unacked push on one connection.
type inflight struct {
	m  *pushMsg // nil once acked
	t0 int64    // first transmission (wheel time, never early)
	k  uint8    // resends done
}

// window holds a connection's unacked pushes in first-transmission order.
// Acked entries are cleared in place and trimmed from the front, so memory
// per connection is bounded by --max-inflight entries.
type window struct {
	ents []inflight
	head int // first possibly live entry
	live int
}

func (w *window) compact() {
	for w.head < len(w.ents) && w.ents[w.head].m == nil {
		w.head++
	}
	if w.head == len(w.ents) {
		w.ents, w.head = w.ents[:0], 0
		return
	}
	if w.head > len(w.ents)/2 && w.head > 32 {
		n := copy(w.ents, w.ents[w.head:])
		clear(w.ents[n:])
		w.ents, w.head = w.ents[:n], 0
	}
}

// push queues m for this connection and records it as in flight.
// REQUIRES: owning event loop.
func (c *conn) push(m *pushMsg, now int64) {
	if c.state != stOpen {
		return
	}
	s := c.lp.srv
	if c.win == nil {
		c.win = c.lp.takeWindow()
	}
	if c.win.live >= s.cfg.MaxInflight {
		c.closeWith(closeSlow, "too many unacked messages")
		return
	}
	c.win.ents = append(c.win.ents, inflight{m: m, t0: now})
	c.win.live++
	c.queue(m.frame)
	c.lp.st.pushes.Add(1)
	if due := retxDue(now, int64(s.cfg.AckTimeout), 0); c.retxAt == 0 || due < c.retxAt {
		c.retxAt = due
		c.retx.Set(due)
	}
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

func (lp *loop) takeWindow() *window {
	if n := len(lp.spareWins); n > 0 {
		w := lp.spareWins[n-1]
		lp.spareWins[n-1] = nil
		lp.spareWins = lp.spareWins[:n-1]
		return w
	}
	return &window{}
}

// giveWindow recycles w. REQUIRES: w holds no live entry.
func (lp *loop) giveWindow(w *window) {
	if w == nil || len(lp.spareWins) >= spareMax || cap(w.ents) > spareLimit {
		return
	}
	clear(w.ents)
	w.ents, w.head, w.live = w.ents[:0], 0, 0
	lp.spareWins = append(lp.spareWins, w)
}

// releasePend empties c.pend, keeping a small list on the connection and
// recycling a large one.
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

// queue adds a frame to be written when the loop task ends.
func (c *conn) queue(frame []byte) {
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

// maxIovecs bounds the buffers of one Writev (Linux IOV_MAX is 1024).
const maxIovecs = 512

// flush writes every dirty connection's queued frames, one writev per
// maxIovecs frames.
// REQUIRES: owning event loop.
func (lp *loop) flush() {
	if len(lp.dirty) == 0 {
		return
	}
	for i, c := range lp.dirty {
		lp.dirty[i] = nil
		if c.state != stOpen || len(c.pend) == 0 {
			c.pend = c.pend[:0]
			continue
		}
		n := 0
		for _, f := range c.pend {
			n += len(f)
		}
		lp.st.framesOut.Add(uint64(len(c.pend)))
		lp.st.bytesOut.Add(uint64(n))
		// gnet hands Writev's slices to writev(2) as they are when nothing
		// is buffered, and writev fails with EINVAL above IOV_MAX (1024)
		// buffers, which closes the connection: write in chunks. A chunk
		// that cannot go out at once is buffered, and later chunks queue
		// behind it, in order.
		for p := c.pend; len(p) > 0 && c.state == stOpen; {
			k := min(len(p), maxIovecs)
			if k == 1 {
				_, _ = c.gc.Write(p[0])
			} else {
				_, _ = c.gc.Writev(p[:k])
			}
			p = p[k:]
		}
		lp.releasePend(c)
		c.checkOutbound()
	}
	lp.dirty = lp.dirty[:0]
	if cap(lp.arena) > 1<<20 {
		lp.arena = nil
	} else {
		lp.arena = lp.arena[:0]
	}
}

// stash copies frame into the loop's arena, valid until the next flush
// (gnet copies whatever it cannot write at once).
func (lp *loop) stash(frame []byte) []byte {
	off := len(lp.arena)
	lp.arena = append(lp.arena, frame...)
	return lp.arena[off:len(lp.arena):len(lp.arena)]
}

// ack trims the window: every push of conv with seq ≤ r.seq is acked.
// REQUIRES: owning event loop.
func (c *conn) ack(r *request) {
	if r.has&hasConv == 0 || r.has&hasSeq == 0 {
		c.errorReply(r.rid, "", storage.BadRequest, "conv and seq are required")
		return
	}
	w := c.win
	if w == nil {
		return
	}
	// First transmissions of one conversation enter the window in seq
	// order, so the entries an ack covers are that conversation's first
	// entries: stop at its first entry above the acked seq.
	n := 0
	for i := w.head; i < len(w.ents); i++ {
		e := &w.ents[i]
		if e.m == nil || e.m.conv != string(r.conv) {
			continue
		}
		if e.m.seq > r.seq {
			break
		}
		e.m = nil
		n++
	}
	if n == 0 {
		return
	}
	w.live -= n
	c.lp.st.acks.Add(uint64(n))
	if w.live == 0 {
		// Keep a small window for the next push (no allocation per
		// message); drop a large one so memory per connection stays low.
		if cap(w.ents) > 64 {
			c.lp.giveWindow(w) // a burst-sized window goes back to the loop
			c.win = nil
		} else {
			clear(w.ents)
			w.ents, w.head = w.ents[:0], 0
		}
		// The retransmit timer stays armed: when it fires on an empty
		// window it simply is not re-armed (cheaper than stop + re-add
		// per message).
		return
	}
	w.compact()
}

// onRetx resends what is due and closes 4005 when retries are exhausted.
// A push first sent at t0 is resent at t0 + T·(2^k − 1), k = 1…R, and the
// connection closes at t0 + T·(2^(R+1) − 1). REQUIRES: owning event loop.
func (c *conn) onRetx(context.Context) error {
	if c.state != stOpen || c.win == nil || c.win.live == 0 {
		c.retxAt = 0
		return nil
	}
	s := c.lp.srv
	T := int64(s.cfg.AckTimeout)
	R := uint8(s.cfg.AckRetries)
	now := s.wheel.Precise()
	var next int64
	resent := 0
	w := c.win
	for i := w.head; i < len(w.ents); i++ {
		e := &w.ents[i]
		if e.m == nil {
			continue
		}
		due := retxDue(e.t0, T, e.k)
		if due <= now {
			if e.k >= R {
				c.closeWith(closeAckTimeout, "ack timeout")
				return nil
			}
			e.k++
			c.queue(e.m.frame)
			resent++
			due = retxDue(e.t0, T, e.k)
		}
		if next == 0 || due < next {
			next = due
		}
	}
	if resent > 0 {
		c.lp.st.resends.Add(uint64(resent))
		c.lp.flush()
	}
	if c.state == stOpen {
		c.retxAt = next
		if next != 0 {
			c.retx.Set(next)
		}
	}
	return nil
}

// fanout is one committed batch on its way to every loop.
type fanout struct {
	srv   *Server
	sends []*storage.Send
	msgs  []*pushMsg // nil where nothing is pushed
}

// onSent is the store's OnSent: it encodes each new message once and posts
// one task per event loop (not one per recipient).
func (s *Server) onSent(batch []*storage.Send) {
	fo := &fanout{srv: s, sends: append([]*storage.Send(nil), batch...), msgs: make([]*pushMsg, len(batch))}
	stored := 0
	for i, m := range batch {
		if m.Err == nil && !m.Dup {
			stored++
			fo.msgs[i] = &pushMsg{frame: encodeMsgFrame(&m.Msg), conv: m.Msg.Conv, seq: m.Msg.Seq}
		}
	}
	s.m.msgsStored.Add(float64(stored))
	for _, lp := range s.allLoops() {
		lp := lp
		_ = lp.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			lp.deliver(fo)
			return nil
		}))
	}
}

// deliver answers this loop's senders and pushes to this loop's recipient
// connections. REQUIRES: owning event loop.
func (lp *loop) deliver(fo *fanout) {
	now := lp.srv.wheel.Precise() // once per task; first-send times must not be early

	for i, m := range fo.sends {
		sc, rid := tagConn(m.Tag)
		if sc != nil && sc.lp == lp && sc.state == stOpen {
			if m.Err != nil {
				sc.errorReply(ridBytes(rid), m.CMID, m.Err.Code, m.Err.Msg)
			} else {
				sc.queue(lp.stash(lp.fb.finish(appendSent(lp.fb.start(), ridBytes(rid), &m.Msg))))
			}
		}
		pm := fo.msgs[i]
		if pm == nil {
			continue
		}
		for _, uid := range m.Recipients {
			for _, rc := range lp.users[uid] {
				if rc != sc {
					rc.push(pm, now)
				}
			}
		}
	}
	lp.flush()
}

func ridBytes(rid string) []byte {
	if rid == "" {
		return nil
	}
	return []byte(rid)
}

// offload runs fn on the worker pool; when the pool is full the request is
// answered rate_limited. REQUIRES: owning event loop.
func (s *Server) offload(c *conn, rid string, fn func()) {
	// Count before checking draining: shutdown sets draining, then waits
	// for jobs to reach 0 before closing the store.
	s.jobs.Add(1)
	if s.draining.Load() {
		s.jobs.Add(-1)
		c.errorReply(ridBytes(rid), "", storage.RateLimited, "server shutting down")
		return
	}
	select {
	case s.work <- fn:
	default:
		s.jobs.Add(-1)
		s.m.workDropped.Inc()
		c.errorReply(ridBytes(rid), "", storage.RateLimited, "server busy, retry")
	}
}

// replyTo writes frame to c on its loop if c is still open. Safe from any
// goroutine; frame must not be modified afterwards.
func (s *Server) replyTo(c *conn, frame []byte) {
	_ = c.gc.EventLoop().Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		c.writeNow(frame)
		return nil
	}))
}

// replyErr answers a failed request. Safe from any goroutine.
func (s *Server) replyErr(c *conn, rid string, err error) {
	code, msg := storage.Internal, "internal error"
	var se *storage.Error
	if errors.As(err, &se) {
		code, msg = se.Code, se.Msg
	} else {
		s.log.Error("request failed", "err", err)
	}
	s.m.errors.WithLabelValues(string(code)).Inc()
	s.replyTo(c, textFrame(appendError(nil, ridBytes(rid), "", code, msg)))
}

// broadcastRead sends the read frame to every connection of the reader;
// only the requesting connection gets the rid.
func (s *Server) broadcastRead(req *conn, rid, conv string, seq, unread, total uint64) {
	withRID := textFrame(appendRead(nil, ridBytes(rid), conv, seq, unread, total))
	plain := withRID
	if rid != "" {
		plain = textFrame(appendRead(nil, nil, conv, seq, unread, total))
	}
	uid := req.uid
	for _, lp := range s.allLoops() {
		lp := lp
		_ = lp.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			for _, c := range lp.users[uid] {
				if c == req {
					c.writeNow(withRID)
				} else {
					c.writeNow(plain)
				}
			}
			return nil
		}))
	}
}
