package server

import (
	"sync/atomic"

	"github.com/magpie-im/magpie/storage"
)

// Read receipts (PROTOCOL §14).
//
// A read frame runs on a worker (storage.MarkReadGrew). When it moved the
// reader's read_seq, the same worker looks up the conversation's members
// (storage.Audience: from the cache, or the read snapshot) and, for a
// direct conversation or a group of at most --receipt-members members,
// puts one receipt frame, encoded once, into the inbox of each loop that
// holds a connection of another member: O(recipients). Receipts are not
// stored, acked or resent, and are not coalesced: each read that moves a
// mark is one frame per connection (a client reading message by message
// sends a read per message anyway, at the rate it reads).

// receiptStats count receipts. Any goroutine.
type receiptStats struct {
	reads, frames atomic.Uint64 // reads that moved a mark and had recipients checked; receipt fan-outs
}

// sendReceipt tells the other members of conv that uid read up to seq.
// REQUIRES: a worker goroutine (it may wait for inboxes).
func (s *Server) sendReceipt(uid uint64, conv string, seq uint64) {
	s.rcpt.reads.Add(1)
	a, err := s.store.Audience(uid, conv, s.cfg.ReceiptMembers, false)
	if err != nil || a.Members == nil {
		return // membership changed since the read, or a large group
	}
	s.rcpt.frames.Add(1)
	s.fanOut(nil, a.Members, uid, textFrame(appendReceipt(nil, conv, uid, seq)))
}

// receipts answers a receipts request. REQUIRES: owning event loop.
func (c *conn) receipts(r *request, rid []byte) {
	if r.has&hasConv == 0 {
		c.errorReply(rid, "", storage.BadRequest, "conv is required")
		return
	}
	s := c.lp.srv
	uid, conv, ridS := c.uid, string(r.conv), string(rid)
	s.offload(c, ridS, func() {
		items, err := s.store.ReadMarks(uid, conv, s.cfg.ReceiptMembers)
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.replyTo(c, textFrame(appendReceipts(nil, []byte(ridS), conv, items)))
	})
}
