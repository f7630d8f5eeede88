package client

import (
	"sort"
	"time"
)

// convTrack is the receive state of one conversation: dedup by seq, in-order
// release, and the gaps that must be filled through history. It is pure
// logic (no I/O, no locking); the Client guards it with its mutex.
//
// INVARIANT: delivered <= held; every message with seq in (delivered, held]
// sits in the delivery queue; pending holds only seqs > held+1 (or any seq
// while !positioned).
type convTrack struct {
	// held is the highest seq accepted in order: delivered to the
	// application or queued for it. Catch-up fetches history after held.
	held int64
	// delivered is the highest seq the application's handler returned for
	// (or that was skipped by the start position). Acks never exceed it.
	delivered int64
	// positioned reports whether held is known. Before the first catch-up
	// with Options.Start == StartLatest, pushes are buffered until the
	// server's last_seq places the conversation.
	positioned bool
	// pending buffers messages above a gap, by seq.
	pending map[int64]Message
	// fetching is set while a gap-filling history request is in flight on
	// the current connection.
	fetching bool
}

// offer takes a received message (push or history) and appends what can be
// released in order to out. A message at or below held is a duplicate and
// is dropped.
func (t *convTrack) offer(m Message, out []Message) []Message {
	if t.positioned && m.Seq <= t.held {
		return out
	}
	if !t.positioned || m.Seq > t.held+1 {
		if t.pending == nil {
			t.pending = make(map[int64]Message)
		}
		t.pending[m.Seq] = m
		return out
	}
	t.held = m.Seq
	out = append(out, m)
	return t.drain(out)
}

// drain releases buffered messages that continue held.
func (t *convTrack) drain(out []Message) []Message {
	for len(t.pending) > 0 {
		m, ok := t.pending[t.held+1]
		if !ok {
			break
		}
		delete(t.pending, t.held+1)
		t.held++
		out = append(out, m)
	}
	return out
}

// position places an unpositioned conversation at seq: buffered messages up
// to seq are dropped as already seen (the application asked to start after
// them) and the rest are released in order. It is a no-op once positioned.
func (t *convTrack) position(seq int64, out []Message) []Message {
	if t.positioned {
		return out
	}
	t.positioned = true
	if seq > t.held {
		t.held = seq
	}
	if t.held > t.delivered {
		// Nothing of this conversation is queued (it was unpositioned), so
		// skipping counts as delivered: those seqs may be acked.
		t.delivered = t.held
	}
	for s := range t.pending {
		if s <= t.held {
			delete(t.pending, s)
		}
	}
	return t.drain(out)
}

// gap reports whether messages above held are waiting for missing seqs.
func (t *convTrack) gap() bool { return t.positioned && len(t.pending) > 0 }

// pendingSeqs returns the buffered seqs in order (for tests and debugging).
func (t *convTrack) pendingSeqs() []int64 {
	s := make([]int64, 0, len(t.pending))
	for k := range t.pending {
		s = append(s, k)
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// acker coalesces delivery acks for one connection (PROTOCOL §7: acks are
// cumulative per conversation and cover only pushes on this connection).
// A conversation is ackable up to min(highest seq pushed on this connection,
// highest seq delivered to the application): acking after delivery lets the
// server's in-flight window push back on a slow application. Acks are sent
// at most once per conversation per flush; a flush is due delay after the
// first ackable push, or at once when batch pushes are ackable.
// Pure logic; the session guards it with the Client's mutex.
type acker struct {
	delay    time.Duration
	batch    int
	convs    map[string]*ackEntry
	dirty    []*ackEntry
	since    time.Time // when the first entry became dirty
	ackable  int       // seqs that became ackable since the last flush
	suppress bool      // Options.TestingSuppressAcks
}

type ackEntry struct {
	conv      string
	pushMax   int64 // highest seq pushed on this connection
	delivered int64 // highest seq delivered to the application
	sent      int64 // highest seq acked on this connection
	isDirty   bool
}

// ack is one ack frame to send.
type ack struct {
	conv string
	seq  int64
}

func newAcker(delay time.Duration, batch int) *acker {
	return &acker{delay: delay, batch: batch, convs: make(map[string]*ackEntry)}
}

func (a *acker) entry(conv string) *ackEntry {
	e := a.convs[conv]
	if e == nil {
		e = &ackEntry{conv: conv}
		a.convs[conv] = e
	}
	return e
}

// pushed records a msg frame received on this connection; delivered is the
// conversation's delivered position at that moment (duplicates of delivered
// messages become ackable at once).
func (a *acker) pushed(conv string, seq, delivered int64, now time.Time) {
	a.update(a.entry(conv), seq, delivered, now)
}

// deliveredTo records that the application got everything of conv up to seq.
// Conversations with no push on this connection need no ack.
func (a *acker) deliveredTo(conv string, seq int64, now time.Time) {
	if e := a.convs[conv]; e != nil {
		a.update(e, 0, seq, now)
	}
}

func (a *acker) update(e *ackEntry, pushed, delivered int64, now time.Time) {
	before := e.target()
	if pushed > e.pushMax {
		e.pushMax = pushed
	}
	if delivered > e.delivered {
		e.delivered = delivered
	}
	after := e.target()
	if after <= before || after <= e.sent {
		return
	}
	if before > e.sent {
		a.ackable += int(after - before)
	} else {
		a.ackable += int(after - e.sent)
	}
	if !e.isDirty {
		e.isDirty = true
		if len(a.dirty) == 0 {
			a.since = now
		}
		a.dirty = append(a.dirty, e)
	}
}

func (e *ackEntry) target() int64 { return min(e.pushMax, e.delivered) }

// next reports when a flush is due: zero time if none is pending, a time at
// or before now if it is due already.
func (a *acker) next() time.Time {
	if len(a.dirty) == 0 || a.suppress {
		return time.Time{}
	}
	if a.ackable >= a.batch {
		return a.since
	}
	return a.since.Add(a.delay)
}

// flush appends the acks to send to out and marks them sent.
func (a *acker) flush(out []ack) []ack {
	for _, e := range a.dirty {
		e.isDirty = false
		if t := e.target(); t > e.sent {
			e.sent = t
			out = append(out, ack{e.conv, t})
		}
	}
	clear(a.dirty)
	a.dirty = a.dirty[:0]
	a.ackable = 0
	return out
}
