package server

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/magpie-im/magpie/storage"
)

// Typing (PROTOCOL §15) and the fan-out shared with receipts (§14).
//
// A typing frame is checked like history (malformed conv, unknown user or
// group, not a member) on the loop from the store's cache
// (storage.Audience in cache-only mode: map lookups under a shard lock, no
// I/O); when something is not cached the check goes to a worker. A group
// of more than --receipt-members members: accepted, dropped. Then the
// throttle (one forward per (uid, conv) per second) and the fan-out: the
// frame is encoded once and queued directly on the recipients' connections
// of this loop, and offered to the other loops' inboxes (never waiting; a
// full inbox drops the typing, counted). Nothing goes to the committer;
// typing does not count toward --send-rate.

// typingGap is the least time between two forwarded typings of one
// (uid, conv).
const typingGap = int64(time.Second)

// typingThrottle remembers when a typing was last forwarded per (uid,
// conv). Entries older than typingGap throttle nothing, so the table keeps
// two generations per shard: typings forwarded in the current second
// (of the wheel's clock) and in the one before; a shard that enters a new
// second drops the older generation whole. It holds at most the typings
// forwarded in the last two seconds.
type typingThrottle struct {
	shards [64]typShard

	forwarded, throttled, dropped, checksOffloaded atomic.Uint64
}

type typShard struct {
	mu        sync.Mutex
	epoch     int64 // second of cur
	cur, prev map[typKey]int64
	_         [32]byte
}

type typKey struct{ uid, a, b uint64 }

// allow reports whether a typing of k may be forwarded at now (wheel
// time), and if so records it. Any goroutine.
func (t *typingThrottle) allow(k typKey, now int64) bool {
	sh := &t.shards[((k.uid^k.a*31^k.b*17)*0x9E3779B97F4A7C15)>>58]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.rotate(now)
	last, ok := sh.cur[k]
	inPrev := false
	if !ok {
		last, inPrev = sh.prev[k]
		ok = inPrev
	}
	if ok && now-last < typingGap {
		return false
	}
	if inPrev {
		delete(sh.prev, k) // one entry per key
	}
	sh.cur[k] = now
	return true
}

// rotate moves the shard to now's second. REQUIRES: sh.mu.
func (sh *typShard) rotate(now int64) {
	e := now / typingGap
	switch {
	case sh.cur == nil:
		sh.cur, sh.prev = make(map[typKey]int64), make(map[typKey]int64)
	case e == sh.epoch:
		return
	case e == sh.epoch+1:
		clear(sh.prev)
		sh.cur, sh.prev = sh.prev, sh.cur
	default:
		clear(sh.prev)
		clear(sh.cur)
	}
	sh.epoch = e
}

// size returns the entries held, after dropping those of past seconds
// (for the gauge). Any goroutine.
func (t *typingThrottle) size(now int64) int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		if sh.cur != nil {
			sh.rotate(now)
		}
		n += len(sh.cur) + len(sh.prev)
		sh.mu.Unlock()
	}
	return n
}

// typing handles a typing frame. REQUIRES: owning event loop.
func (c *conn) typing(r *request, rid []byte) {
	if r.has&hasConv == 0 {
		c.errorReply(rid, "", storage.BadRequest, "conv is required")
		return
	}
	s := c.lp.srv
	uid, conv := c.uid, string(r.conv)
	a, err := s.store.Audience(uid, conv, s.cfg.ReceiptMembers, true)
	if err == nil {
		s.forwardTyping(c.lp, uid, conv, a)
		return
	}
	if err != storage.ErrNotCached {
		c.storeError(rid, err)
		return
	}
	s.typ.checksOffloaded.Add(1)
	ridS := string(rid)
	s.offload(c, ridS, func() {
		a, err := s.store.Audience(uid, conv, s.cfg.ReceiptMembers, false)
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.forwardTyping(nil, uid, conv, a)
	})
}

// storeError answers a request with a store error. REQUIRES: owning event loop.
func (c *conn) storeError(rid []byte, err error) {
	if se, ok := err.(*storage.Error); ok {
		c.errorReply(rid, "", se.Code, se.Msg)
		return
	}
	c.lp.srv.log.Error("request failed", "err", err)
	c.errorReply(rid, "", storage.Internal, "internal error")
}

// forwardTyping sends uid's typing in conv to the other members' connections
// when the conversation is small enough and the throttle allows. from is
// the calling loop, nil on a worker. REQUIRES: from's goroutine, or a worker.
func (s *Server) forwardTyping(from *loop, uid uint64, conv string, a storage.Audience) {
	if a.Members == nil {
		return // a group above --receipt-members: accepted and dropped
	}
	_, x, y, _ := storage.ParseConv(conv)
	if !s.typ.allow(typKey{uid, x, y}, s.wheel.Precise()) {
		s.typ.throttled.Add(1)
		return
	}
	s.typ.forwarded.Add(1)
	if !s.fanOut(from, a.Members, uid, textFrame(appendTyping(nil, conv, uid))) {
		s.typ.dropped.Add(1)
	}
}

// fanOut sends frame to every connection of members except those of skip:
// from a loop (from), directly to that loop's connections and by offer
// to the other loops (false when an inbox was full and some were left
// out); from a worker (from nil), through every inbox, waiting while one
// is full. frame is shared read-only. One inbox entry per loop.
// REQUIRES: from's goroutine, or a worker.
func (s *Server) fanOut(from *loop, members []uint64, skip uint64, frame []byte) bool {
	var byLoop map[*loop][]item
	for _, u := range members {
		if u == skip {
			continue
		}
		for _, c := range s.sess.lookup(u) {
			if c.lp == from {
				c.queue(frame)
				continue
			}
			if byLoop == nil {
				byLoop = make(map[*loop][]item, 2)
			}
			byLoop[c.lp] = append(byLoop[c.lp], item{c: c})
		}
	}
	ok := true
	frames := [][]byte{frame}
	for lp, items := range byLoop {
		e := entry{kind: entFrames, items: items, frames: frames}
		if from == nil {
			lp.put(e, true)
		} else if !lp.offer(e) {
			ok = false
		}
	}
	return ok
}
