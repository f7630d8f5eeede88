package server

import (
	"unicode/utf8"

	"github.com/magpie-im/magpie/storage"
)

// text handles one text message. REQUIRES: owning event loop.
func (c *conn) text(p []byte) {
	s := c.lp.srv
	r := &c.lp.req
	err := decodeRequest(p, r)
	if c.uid == 0 {
		// Before authentication only a valid auth frame is accepted.
		if err != nil || r.typ != tAuth || r.badField != "" || len(r.token) == 0 ||
			len(r.device) > 64 || (r.has&hasRID != 0 && !validRID(r.rid)) {
			c.closeWith(closeUnauthorized, "unauthorized")
			return
		}
		uid, verr := s.signer.Verify(string(r.token))
		if verr != nil {
			c.closeWith(closeUnauthorized, "unauthorized")
			return
		}
		c.authenticate(uid, string(r.device))
		return
	}
	if err != nil {
		c.errorReply(nil, "", storage.BadRequest, "malformed JSON")
		return
	}
	var rid []byte
	if r.has&hasRID != 0 {
		if !validRID(r.rid) || r.badField == "rid" {
			// The error carries the request's cmid where it had one (§4).
			var cmid string
			if r.typ == tSend && len(r.cmid) >= 1 && len(r.cmid) <= 64 {
				cmid = string(r.cmid)
			}
			c.errorReply(nil, cmid, storage.BadRequest, "rid must be a string of 1-64 bytes")
			return
		}
		rid = r.rid
	}
	if r.typ == tSend {
		c.send(r, rid)
		return
	}
	if r.badField != "" {
		c.errorReply(rid, "", storage.BadRequest, "bad field: "+r.badField)
		return
	}
	switch r.typ {
	case tPing:
		c.reply(appendPong(c.lp.fb.start(), rid))
	case tAck:
		c.ack(r)
	case tAuth:
		c.errorReply(rid, "", storage.BadRequest, "already authenticated")
	case tRead:
		c.read(r, rid)
	case tConvs:
		c.convs(r, rid)
	case tHistory:
		c.history(r, rid)
	case tGroupCreate, tGroupJoin, tGroupLeave, tGroupMembers:
		c.groupOp(r, rid)
	default:
		c.errorReply(rid, "", storage.BadRequest, "unknown type")
	}
}

func validRID(rid []byte) bool { return len(rid) >= 1 && len(rid) <= 64 }

// send validates a send frame and queues it for the committer.
// Checks, in order (PROTOCOL §4): send rate, fields, then the committer's.
func (c *conn) send(r *request, rid []byte) {
	s := c.lp.srv
	if !c.allowSend() {
		c.closeWith(closeRate, "send rate exceeded")
		return
	}
	var cmid string
	if r.has&hasCMID != 0 && r.badField != "cmid" && len(r.cmid) >= 1 && len(r.cmid) <= 64 {
		cmid = string(r.cmid)
	}
	switch {
	case r.badField != "":
		c.errorReply(rid, cmid, storage.BadRequest, "bad field: "+r.badField)
		return
	case cmid == "":
		c.errorReply(rid, "", storage.BadRequest, "cmid must be a string of 1-64 bytes")
		return
	case (r.has&hasTo != 0) == (r.has&hasGroup != 0):
		c.errorReply(rid, cmid, storage.BadRequest, "exactly one of to and group is required")
		return
	case r.has&hasTo != 0 && r.to == 0, r.has&hasGroup != 0 && r.group == 0:
		c.errorReply(rid, cmid, storage.BadRequest, "to and group are positive integers")
		return
	case r.has&hasBody == 0 || len(r.body) == 0:
		c.errorReply(rid, cmid, storage.BadRequest, "body is required")
		return
	case !utf8.Valid(r.body):
		c.errorReply(rid, cmid, storage.BadRequest, "body is not valid UTF-8")
		return
	case len(r.kind) > 32:
		c.errorReply(rid, cmid, storage.BadRequest, "kind is at most 32 bytes")
		return
	}
	if s.draining.Load() {
		c.errorReply(rid, cmid, storage.RateLimited, "server shutting down")
		return
	}
	kind := "text"
	if len(r.kind) > 0 {
		kind = string(r.kind)
	}
	m := &storage.Send{From: c.uid, CMID: cmid, To: r.to, Group: r.group, Kind: kind, Body: string(r.body)}
	if rid != nil {
		m.Tag = &sendTag{c: c, rid: string(rid)}
	} else {
		m.Tag = c
	}
	if err := s.store.Submit(m); err != nil {
		code, msg := storage.RateLimited, "server busy, retry"
		if se, ok := err.(*storage.Error); ok {
			code, msg = se.Code, se.Msg
		}
		c.errorReply(rid, cmid, code, msg)
	}
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

// The requests below block on the store: they run on the worker pool and
// their replies come back to the owning loop. Everything they need from the
// frame is copied first: r is reused by the next frame.

func (c *conn) read(r *request, rid []byte) {
	if r.has&hasConv == 0 || r.has&hasSeq == 0 {
		c.errorReply(rid, "", storage.BadRequest, "conv and seq are required")
		return
	}
	uid, conv, seq, ridS := c.uid, string(r.conv), r.seq, string(rid)
	s := c.lp.srv
	s.offload(c, ridS, func() {
		readSeq, unread, total, err := s.store.MarkRead(uid, conv, seq)
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.broadcastRead(c, ridS, conv, readSeq, unread, total)
	})
}

// convs answers a convs request; limit, before and conv page it
// (docs/PROTOCOL.md, "convs paging").
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

func (c *conn) history(r *request, rid []byte) {
	if r.has&hasConv == 0 {
		c.errorReply(rid, "", storage.BadRequest, "conv is required")
		return
	}
	if r.has&hasAfter != 0 && r.has&hasBefore != 0 {
		c.errorReply(rid, "", storage.BadRequest, "at most one of after and before")
		return
	}
	limit := int64(50)
	if r.has&hasLimit != 0 {
		limit = r.limit
		if limit < 1 {
			c.errorReply(rid, "", storage.BadRequest, "limit must be at least 1")
			return
		}
		if limit > 200 {
			limit = 200
		}
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

func (c *conn) groupOp(r *request, rid []byte) {
	s := c.lp.srv
	uid, ridS, typ := c.uid, string(rid), r.typ
	var (
		name    string
		members []uint64
		gid     = r.group
		after   = r.after
		limit   = int64(1000)
	)
	switch typ {
	case tGroupCreate:
		if r.has&hasName == 0 || len(r.name) < 1 || len(r.name) > 64 {
			c.errorReply(rid, "", storage.BadRequest, "name must be 1-64 bytes")
			return
		}
		name = string(r.name)
		members = append([]uint64(nil), r.members...)
	default:
		if r.has&hasGroup == 0 || gid == 0 {
			c.errorReply(rid, "", storage.BadRequest, "group is required")
			return
		}
		if typ == tGroupMembers && r.has&hasLimit != 0 {
			limit = r.limit
			if limit < 1 {
				c.errorReply(rid, "", storage.BadRequest, "limit must be at least 1")
				return
			}
			if limit > 10000 {
				limit = 10000
			}
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
			g, err = s.store.CreateGroup(uid, name, members)
			list = true
		case tGroupJoin:
			g, err = s.store.JoinGroup(uid, gid)
		case tGroupLeave:
			g, err = s.store.LeaveGroup(uid, gid)
		case tGroupMembers:
			g, err = s.store.GroupMembers(uid, gid, after, int(limit))
			list = true
		}
		if err != nil {
			s.replyErr(c, ridS, err)
			return
		}
		s.replyTo(c, textFrame(appendGroup(nil, []byte(ridS), &g, list)))
	})
}
