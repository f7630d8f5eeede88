package server

import (
	"errors"

	"github.com/magpie-im/magpie/storage"
)

// The worker pool runs the requests that block on the store (history,
// convs, read, group_*): --workers goroutines on a queue bounded by
// --work-queue. A full queue answers rate_limited at once. Replies go back
// through the owning loop's inbox (waiting while it is full: workers may
// block, loops may not), so they leave in order with everything else the
// connection gets.

// worker is one pool goroutine.
func (s *Server) worker() {
	for fn := range s.work {
		fn()
		s.jobs.Add(-1)
	}
}

// offload runs fn on the worker pool; when the pool is full the request is
// answered rate_limited. REQUIRES: owning event loop.
func (s *Server) offload(c *conn, rid string, fn func()) { s.offloadOK(c, rid, fn) }

// offloadOK is offload; it reports whether fn was queued (false: c was
// answered rate_limited). REQUIRES: owning event loop.
func (s *Server) offloadOK(c *conn, rid string, fn func()) bool {
	// Count before checking draining: shutdown sets draining, then waits
	// for jobs to reach 0 before closing the store.
	s.jobs.Add(1)
	if s.draining.Load() {
		s.jobs.Add(-1)
		c.errorReply(ridBytes(rid), "", storage.RateLimited, "server shutting down")
		return false
	}
	select {
	case s.work <- fn:
		return true
	default:
		s.jobs.Add(-1)
		s.m.workDropped.Inc()
		c.errorReply(ridBytes(rid), "", storage.RateLimited, "server busy, retry")
		return false
	}
}

// replyTo hands frame to c's loop, which writes it if c is still open.
// frame must not be modified afterwards. REQUIRES: a worker goroutine
// (it may wait for room in the inbox).
func (s *Server) replyTo(c *conn, frame []byte) {
	c.lp.put(entry{kind: entFrames, items: []item{{c: c}}, frames: [][]byte{frame}}, true)
}

// replyErr answers a failed request. REQUIRES: a worker goroutine.
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
// only the requesting connection gets the rid. One entry per loop that
// holds any of them. REQUIRES: a worker goroutine.
func (s *Server) broadcastRead(req *conn, rid, conv string, seq, unread, total uint64) {
	withRID := textFrame(appendRead(nil, ridBytes(rid), conv, seq, unread, total))
	plain := withRID
	if rid != "" {
		plain = textFrame(appendRead(nil, nil, conv, seq, unread, total))
	}
	frames := [][]byte{plain, withRID}
	conns := s.sess.lookup(req.uid)
	byLoop := make(map[*loop][]item, 2)
	for _, c := range conns {
		arg := int32(0)
		if c == req {
			arg = 1
		}
		byLoop[c.lp] = append(byLoop[c.lp], item{c: c, arg: arg})
	}
	for lp, items := range byLoop {
		lp.put(entry{kind: entFrames, items: items, frames: frames}, true)
	}
}

// The requests below block on the store: they run on the worker pool and
// their replies come back through the owning loop's inbox. Everything they
// need from the frame is copied first: r is reused by the next frame. Each
// is called on the owning event loop (REQUIRES: owning event loop); the
// closure it offloads runs on a worker.

// read offloads a read mark; the read frame goes to every connection of the user (broadcastRead). REQUIRES: owning event loop.
func (c *conn) read(r *request, rid []byte) {
	if r.has&hasConv == 0 || r.has&hasSeq == 0 {
		c.errorReply(rid, "", storage.BadRequest, "conv and seq are required")
		return
	}
	uid, conv, seq, ridS := c.uid, string(r.conv), r.seq, string(rid)
	s := c.lp.srv
	s.offload(c, ridS, func() {
		readSeq, unread, total, grew, err := s.store.MarkReadGrew(uid, conv, seq)
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.broadcastRead(c, ridS, conv, readSeq, unread, total)
		if grew > 0 {
			s.sendReceipt(uid, conv, grew) // PROTOCOL §14
		}
	})
}

// convs offloads the conversation list. REQUIRES: owning event loop.
// convs answers a convs request; limit, before and conv page it
// (docs/PROTOCOL.md, "convs paging"). REQUIRES: owning event loop.
func (c *conn) convs(r *request, rid []byte) {
	q, paged, msg := convsQuery(r)
	if msg != "" {
		c.errorReply(rid, "", storage.BadRequest, msg)
		return
	}
	uid, ridS := c.uid, string(rid)
	s := c.lp.srv
	s.offload(c, ridS, func() {
		p, err := s.store.ConvsPaged(uid, q)
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.replyTo(c, textFrame(appendConvsPage(nil, []byte(ridS), &p, paged)))
	})
}

// history validates and offloads a history page. REQUIRES: owning event loop.
func (c *conn) history(r *request, rid []byte) {
	if r.has&hasConv == 0 {
		c.errorReply(rid, "", storage.BadRequest, "conv is required")
		return
	}
	if r.has&hasAfter != 0 && r.has&hasBefore != 0 {
		c.errorReply(rid, "", storage.BadRequest, "at most one of after and before")
		return
	}
	limit, ok := c.limitArg(r, rid, 50, 200)
	if !ok {
		return
	}
	q := storage.HistoryQuery{Conv: string(r.conv), After: r.after, HasAfter: r.has&hasAfter != 0,
		Before: r.before, HasBefore: r.has&hasBefore != 0, Limit: int(limit)}
	uid, ridS := c.uid, string(rid)
	s := c.lp.srv
	s.offload(c, ridS, func() {
		msgs, more, err := s.store.History(uid, q)
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.replyTo(c, textFrame(appendHistory(nil, []byte(ridS), q.Conv, msgs, more)))
	})
}

// groupOp validates and offloads group_create, group_join, group_leave,
// group_members and (PROTOCOL §13) group_add, group_remove and
// group_rename. The fields are checked here, first (§13's order); the
// rest in the store. A change's system message reaches every connection
// through the store's OnSent and the router, like a send; this only
// answers the request. REQUIRES: owning event loop.
func (c *conn) groupOp(r *request, rid []byte) {
	s := c.lp.srv
	uid, ridS, typ := c.uid, string(rid), r.typ
	var (
		name    string
		members []uint64
		public  = r.public
		gid     = r.group
		after   = r.after
		limit   = int64(1000)
	)
	if typ != tGroupCreate && (r.has&hasGroup == 0 || gid == 0) {
		c.errorReply(rid, "", storage.BadRequest, "group is required")
		return
	}
	switch typ {
	case tGroupCreate, tGroupRename:
		if r.has&hasName == 0 || len(r.name) < 1 || len(r.name) > 64 {
			c.errorReply(rid, "", storage.BadRequest, "name must be 1-64 bytes")
			return
		}
		name = string(r.name)
		if typ == tGroupCreate {
			members = append([]uint64(nil), r.members...)
		}
	case tGroupAdd, tGroupRemove:
		if r.has&hasMembers == 0 || len(r.members) < 1 || len(r.members) > maxChangeMembers {
			c.errorReply(rid, "", storage.BadRequest, "members must hold 1-1000 positive uids")
			return
		}
		members = append([]uint64(nil), r.members...)
	case tGroupMembers:
		var ok bool
		if limit, ok = c.limitArg(r, rid, limit, 10000); !ok {
			return
		}
	}
	s.offload(c, ridS, func() {
		var (
			g    storage.GroupInfo
			err  error
			list bool
		)
		switch typ {
		case tGroupCreate:
			g, err = s.store.CreateGroupWith(uid, name, members, public)
			list = true
		case tGroupJoin:
			g, err = s.store.JoinGroup(uid, gid)
		case tGroupLeave:
			g, err = s.store.LeaveGroup(uid, gid)
		case tGroupMembers:
			g, err = s.store.GroupMembers(uid, gid, after, int(limit))
			list = true
		case tGroupAdd:
			g, err = s.store.AddMembers(uid, gid, members)
		case tGroupRemove:
			g, err = s.store.RemoveMembers(uid, gid, members)
		case tGroupRename:
			g, err = s.store.RenameGroup(uid, gid, name)
		}
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.replyTo(c, textFrame(appendGroup(nil, []byte(ridS), &g, list)))
	})
}

// maxChangeMembers bounds the members of group_add and group_remove,
// counted as sent (PROTOCOL §13).
const maxChangeMembers = 1000

// limitArg returns the request's limit (def when absent, capped at most),
// or answers bad_request for a limit below 1 and reports false.
// REQUIRES: owning event loop.
func (c *conn) limitArg(r *request, rid []byte, def, most int64) (int64, bool) {
	if r.has&hasLimit == 0 {
		return def, true
	}
	if r.limit < 1 {
		c.errorReply(rid, "", storage.BadRequest, "limit must be at least 1")
		return 0, false
	}
	return min(r.limit, most), true
}
