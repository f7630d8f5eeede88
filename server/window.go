package server

import (
	"math"

	"github.com/magpie-im/magpie/storage"
)

// pushMsg is one stored message as pushed: its msg frame is encoded once
// (on the committer, in OnSent) and shared read-only by every recipient
// connection and every resend.
type pushMsg struct {
	frame []byte
	conv  string
	seq   uint64
}

// inflight is one unacked push on one connection.
type inflight struct {
	m  *pushMsg // nil once acked (a hole)
	t0 int64    // first transmission (wheel time when written; 0 until then)
	k  uint8    // resends done
}

// window holds a connection's unacked pushes in first-transmission order.
// An ack clears its entries in place (holes); holes at the front are
// trimmed at once, holes behind an unacked entry are squeezed out when the
// slice reaches --max-inflight + winSlack entries.
//
// INVARIANT: len(ents) ≤ --max-inflight + winSlack, holes included, and
// live ≤ --max-inflight. Squeezing costs at most --max-inflight moves per
// winSlack pushes (16 per push at the default 1024), and only when acks
// leave holes behind an unacked push, which cumulative acks of another
// conversation do.
type window struct {
	ents []inflight
	head int // ents[:head] are holes
	live int
}

// winSlack is how many holes a window may hold beyond --max-inflight.
const winSlack = 64

// add appends e, squeezing out holes first when the slice is full.
// REQUIRES: w.live < maxLive.
func (w *window) add(e inflight, maxLive int) {
	if len(w.ents) >= maxLive+winSlack {
		w.squeeze()
	}
	w.ents = append(w.ents, e)
	w.live++
}

// squeeze removes every hole, keeping the order of the live entries.
// REQUIRES: owning event loop.
func (w *window) squeeze() {
	j := 0
	for i := w.head; i < len(w.ents); i++ {
		if w.ents[i].m != nil {
			w.ents[j] = w.ents[i]
			j++
		}
	}
	clear(w.ents[j:])
	w.ents, w.head = w.ents[:j], 0
}

// trim drops the holes at the front (moving the rest down once they are
// more than half the slice).
// REQUIRES: owning event loop.
func (w *window) trim() {
	for w.head < len(w.ents) && w.ents[w.head].m == nil {
		w.head++
	}
	if w.head == len(w.ents) {
		clear(w.ents)
		w.ents, w.head = w.ents[:0], 0
		return
	}
	if w.head > len(w.ents)/2 && w.head > 32 {
		n := copy(w.ents, w.ents[w.head:])
		clear(w.ents[n:])
		w.ents, w.head = w.ents[:n], 0
	}
}

// push queues m for this connection and records it as in flight; a push
// that would exceed --max-inflight closes the connection 4008 instead.
// Its first-send time (t0) and the retransmit timer are set when the
// frame is written (stamp, from flushPend): a turn's pushes leave at its
// end, and a t0 taken earlier would make the resend early.
// REQUIRES: owning event loop.
func (c *conn) push(m *pushMsg) {
	if c.state != stOpen {
		return
	}
	s := c.lp.srv
	if c.win == nil {
		c.win = c.lp.takeWindow()
	}
	if c.win.live >= s.cfg.MaxInflight {
		// The pushes already queued are within the window: they go out
		// before the close (only --max-outbound drops queued frames).
		c.flushPend()
		c.closeWith(closeSlow, "too many unacked messages")
		return
	}
	c.win.add(inflight{m: m}, s.cfg.MaxInflight) // t0 0: not yet written
	c.unstamped = true
	c.queue(m.frame)
	c.lp.st.pushes.Add(1)
}

// stamp gives the pushes queued since the last write their first-send
// time, now, and arms the retransmit timer for the earliest. They are the
// window's last entries with t0 0 (holes included: an acked entry keeps
// its t0). REQUIRES: owning event loop.
func (c *conn) stamp(now int64) {
	c.unstamped = false
	w := c.win
	if w == nil {
		return
	}
	now = max(now, 1) // 0 means unstamped
	for i := len(w.ents) - 1; i >= w.head && w.ents[i].t0 == 0; i-- {
		w.ents[i].t0 = now
	}
	if w.live == 0 {
		return
	}
	if due := retxDue(now, int64(c.lp.srv.cfg.AckTimeout), 0); c.retxAt == 0 || due < c.retxAt {
		c.retxAt = due
		c.retx.Set(due)
	}
}

// ack clears every push of r.conv with seq ≤ r.seq (cumulative, PROTOCOL
// §4). First transmissions of one conversation enter the window in seq
// order (the router hands a loop batches in commit order and the inbox is
// FIFO), so the entries an ack covers are that conversation's first
// entries: the scan stops at its first entry above the acked seq, and it
// never passes more than the window's bound. REQUIRES: owning event loop.
func (c *conn) ack(r *request) {
	if r.has&hasConv == 0 || r.has&hasSeq == 0 {
		c.errorReply(r.rid, "", storage.BadRequest, "conv and seq are required")
		return
	}
	w := c.win
	if w == nil {
		return
	}
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
		// message); a burst-sized one goes back to the loop.
		if cap(w.ents) > keepSmall {
			c.lp.giveWindow(w)
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
	w.trim()
}

// onRetx resends what is due and closes 4005 when retries are exhausted.
// A push first sent at t0 is resent at t0 + T·(2^k − 1), k = 1…R, and the
// connection closes at t0 + T·(2^(R+1) − 1). Resends are queued like any
// frame; the drain turn flushes them. REQUIRES: owning event loop.
func (c *conn) onRetx() {
	if c.state != stOpen || c.win == nil || c.win.live == 0 {
		c.retxAt = 0
		return
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
		if e.m == nil || e.t0 == 0 {
			continue // acked, or not written yet (stamp arms the timer)
		}
		due := retxDue(e.t0, T, e.k)
		if due <= now {
			if e.k >= R {
				c.closeWith(closeAckTimeout, "ack timeout")
				return
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
	}
	c.retxAt = next
	if next != 0 {
		c.retx.Set(next)
	}
}

// retxDue returns t0 + T·(2^(k+1) − 1): when a push first sent at t0 that
// has been resent k times is due again (its k+1-th resend, or the 4005
// close once k is --ack-retries; PROTOCOL §7). With k = 0 that is t0 + T,
// the first resend.
//
// The sum saturates at math.MaxInt64 ("never") instead of wrapping: with
// --ack-retries 20 (2^21 − 1 ≈ 2.1e6) a T of an hour already overflows
// int64 nanoseconds, and a wrapped, negative deadline would resend at once
// and close the connection 4005 early. T ≥ 0, k ≤ 62.
// Any goroutine.
func retxDue(t0, T int64, k uint8) int64 {
	mult := int64(1)<<(k+1) - 1
	if T > 0 && T > (math.MaxInt64-t0)/mult {
		return math.MaxInt64
	}
	return t0 + T*mult
}

// takeWindow returns an empty window. REQUIRES: owning event loop.
func (lp *loop) takeWindow() *window {
	if n := len(lp.spareWins); n > 0 {
		w := lp.spareWins[n-1]
		lp.spareWins[n-1] = nil
		lp.spareWins = lp.spareWins[:n-1]
		return w
	}
	return &window{}
}

// giveWindow recycles w; its entries are dropped. REQUIRES: owning event
// loop.
func (lp *loop) giveWindow(w *window) {
	if w == nil || len(lp.spareWins) >= spareMax || cap(w.ents) > spareLimit {
		return
	}
	clear(w.ents)
	w.ents, w.head, w.live = w.ents[:0], 0, 0
	lp.spareWins = append(lp.spareWins, w)
}
