package client

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Outgoing is a message to send: set exactly one of To and Group.
type Outgoing struct {
	To    int64  // recipient uid of a direct message
	Group int64  // group id
	Body  string // 1 byte up to the server's max_body
	Kind  string // optional; empty means "text"
	// CMID is the idempotency key. The default value is a fresh unique id.
	// Set it to retry a Send that returned an error (for example its
	// context expired) without risking a duplicate.
	CMID string
}

// Sent confirms a stored message (a `sent` frame).
type Sent struct {
	CMID string
	Conv string
	Seq  int64
	TS   int64 // Unix milliseconds, the same in every frame showing it
}

// Send sends m and returns once the server stored it. While the client is
// reconnecting the send waits and is transmitted again after `welcome`, with
// the same cmid (PROTOCOL §9); rate_limited and internal errors are retried
// the same way. Other errors come back as *Error. If ctx ends first, Send
// returns ctx.Err() and stops retrying; the message may or may not have been
// stored: call Send again with the same CMID to find out.
func (c *Client) Send(ctx context.Context, m Outgoing) (Sent, error) {
	if (m.To == 0) == (m.Group == 0) {
		return Sent{}, errors.New("magpie: Send needs exactly one of To and Group")
	}
	if m.Body == "" {
		return Sent{}, errors.New("magpie: Send needs a body")
	}
	if m.CMID == "" {
		m.CMID = c.newCMID()
	}
	ps := &pendingSend{
		cmid:  m.CMID,
		frame: mustJSON(sendFrame{Type: "send", CMID: m.CMID, To: m.To, Group: m.Group, Body: m.Body, Kind: m.Kind}),
		done:  make(chan struct{}),
		msg:   Message{Kind: m.Kind, Body: m.Body, CMID: m.CMID},
	}
	if ps.msg.Kind == "" {
		ps.msg.Kind = "text"
	}
	c.mu.Lock()
	if err := c.usableLocked(); err != nil {
		c.mu.Unlock()
		return Sent{}, err
	}
	if m.To != 0 {
		c.cancelTypingLocked(DirectConv(c.uid, m.To))
	} else {
		c.cancelTypingLocked(GroupConv(m.Group))
	}
	mine := true
	if old := c.sends[m.CMID]; old != nil {
		ps, mine = old, false // the same cmid is in flight: wait for its answer
	} else {
		c.sendOrder++
		ps.order = c.sendOrder
		c.sends[m.CMID] = ps
		if c.sess != nil {
			c.sess.enqueueLocked(ps.frame, true)
		}
	}
	c.mu.Unlock()
	select {
	case <-ps.done:
		return ps.res, ps.err
	case <-ctx.Done():
		if !mine {
			return Sent{}, ctx.Err() // the other caller's send goes on
		}
		c.mu.Lock()
		if c.sends[m.CMID] == ps {
			delete(c.sends, m.CMID)
			ps.finish(Sent{}, ctx.Err())
		}
		c.mu.Unlock()
		<-ps.done
		return ps.res, ps.err
	}
}

// SendTo sends a direct text message to uid.
func (c *Client) SendTo(ctx context.Context, uid int64, body string) (Sent, error) {
	return c.Send(ctx, Outgoing{To: uid, Body: body})
}

// SendGroup sends a text message to group gid.
func (c *Client) SendGroup(ctx context.Context, gid int64, body string) (Sent, error) {
	return c.Send(ctx, Outgoing{Group: gid, Body: body})
}

// usableLocked says whether calls can be queued. REQUIRES: c.mu.
func (c *Client) usableLocked() error {
	switch {
	case c.closed:
		return ErrClosed
	case !c.running && c.offlineErr != nil:
		return c.offlineErr
	case !c.running:
		return errors.New("magpie: not connected: call Connect first")
	}
	return nil
}

// request sends a frame built around a fresh rid and waits for the reply
// with that rid. retry says the request is safe to repeat: it is sent again
// after a reconnect instead of failing with ErrDisconnected.
func (c *Client) request(ctx context.Context, retry bool, build func(rid string) []byte) (*inFrame, error) {
	rid := "r" + c.newID()
	r := &pendingReq{rid: rid, frame: build(rid), retry: retry, ch: make(chan reqResult, 1)}
	c.mu.Lock()
	if err := c.usableLocked(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	c.reqs[rid] = r
	if c.sess != nil {
		r.sessID = c.sess.id
		c.sess.enqueueLocked(r.frame, false)
	}
	c.mu.Unlock()
	select {
	case res := <-r.ch:
		if res.err != nil {
			return nil, res.err
		}
		if res.f.Type == "error" {
			return nil, res.f.err()
		}
		return res.f, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.reqs, rid)
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

func expect(f *inFrame, typ string) error {
	if f.Type != typ {
		return fmt.Errorf("magpie: expected a %q reply, got %q", typ, f.Type)
	}
	return nil
}

// Conv is one item of the conversation list.
type Conv struct {
	Conv    string   `json:"conv"`
	Peer    int64    `json:"peer,omitempty"`  // direct conversations: the other uid
	Group   int64    `json:"group,omitempty"` // group conversations
	Name    string   `json:"name,omitempty"`  // group name
	LastSeq int64    `json:"last_seq"`
	ReadSeq int64    `json:"read_seq"`
	Unread  int64    `json:"unread"`
	Last    *Message `json:"last,omitempty"` // nil while the conversation is empty

	// Version 2 servers only (zero from version 1):
	Public      bool  `json:"public,omitempty"`        // groups: anyone may join
	Owner       int64 `json:"owner,omitempty"`         // groups: the owner's uid, 0 when empty
	PeerReadSeq int64 `json:"peer_read_seq,omitempty"` // direct: the peer's read_seq (§14)
}

// ConvList is the reply to Convs.
type ConvList struct {
	Items       []Conv // newest first
	TotalUnread int64
}

// Convs lists the user's conversations with unread counts.
func (c *Client) Convs(ctx context.Context) (ConvList, error) {
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "convs", RID: rid})
	})
	if err != nil {
		return ConvList{}, err
	}
	if err := expect(f, "convs"); err != nil {
		return ConvList{}, err
	}
	items, err := f.convItems()
	if err != nil {
		return ConvList{}, err
	}
	v2 := c.ServerVersion() >= 2
	for i := range items {
		if m := items[i].Last; m != nil {
			if m.Conv == "" {
				m.Conv = items[i].Conv
			}
			if v2 {
				m.Event = decodeGroupEvent(m)
			}
		}
	}
	return ConvList{Items: items, TotalUnread: f.TotalUnread}, nil
}

// HistoryPage is a page of messages in ascending seq order.
type HistoryPage struct {
	Messages []Message
	// More says further messages exist in the requested direction (for
	// HistoryLatest: older ones).
	More bool
}

// HistoryAfter returns up to limit messages of conv with seq > after
// (limit 0: the server's default of 50; above 200 acts as 200).
func (c *Client) HistoryAfter(ctx context.Context, conv string, after int64, limit int) (HistoryPage, error) {
	return c.history(ctx, historyFrame{Type: "history", Conv: conv, After: &after, Limit: limit})
}

// HistoryBefore returns up to limit messages just below seq before, ascending.
func (c *Client) HistoryBefore(ctx context.Context, conv string, before int64, limit int) (HistoryPage, error) {
	return c.history(ctx, historyFrame{Type: "history", Conv: conv, Before: &before, Limit: limit})
}

// HistoryLatest returns the newest page of conv, ascending.
func (c *Client) HistoryLatest(ctx context.Context, conv string, limit int) (HistoryPage, error) {
	return c.history(ctx, historyFrame{Type: "history", Conv: conv, Limit: limit})
}

func (c *Client) history(ctx context.Context, h historyFrame) (HistoryPage, error) {
	if h.Limit < 0 {
		return HistoryPage{}, errors.New("magpie: negative history limit")
	}
	f, err := c.request(ctx, true, func(rid string) []byte {
		h.RID = rid
		return mustJSON(h)
	})
	if err != nil {
		return HistoryPage{}, err
	}
	if err := expect(f, "history"); err != nil {
		return HistoryPage{}, err
	}
	v2 := c.ServerVersion() >= 2
	for i := range f.Messages {
		m := &f.Messages[i]
		if m.Conv == "" {
			m.Conv = h.Conv
		}
		if v2 {
			m.Event = decodeGroupEvent(m)
		}
	}
	return HistoryPage{Messages: f.Messages, More: f.More}, nil
}

// MarkRead sets the read mark of conv: read_seq = max(read_seq,
// min(seq, last_seq)). The reply carries the resulting counts.
func (c *Client) MarkRead(ctx context.Context, conv string, seq int64) (ReadMark, error) {
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "read", RID: rid, Conv: conv, Seq: seq})
	})
	if err != nil {
		return ReadMark{}, err
	}
	if err := expect(f, "read"); err != nil {
		return ReadMark{}, err
	}
	return ReadMark{Conv: f.Conv, Seq: f.Seq, Unread: f.Unread, TotalUnread: f.TotalUnread}, nil
}

// Group is the reply to the group calls.
type Group struct {
	ID    int64
	Name  string
	Count int // members after the request
	// Members (ascending) and More are set only by CreateGroup and
	// GroupMembers.
	Members []int64
	More    bool
	// Version 2 servers only (PROTOCOL §13; zero from version 1):
	Public bool  // anyone may join with JoinGroup
	Owner  int64 // the owner's uid after the request, 0 when the group is empty
}

func groupOf(f *inFrame) (Group, error) {
	if err := expect(f, "group"); err != nil {
		return Group{}, err
	}
	return Group{ID: f.Group, Name: f.Name, Count: f.Count, Members: f.Members, More: f.More, Public: f.Public, Owner: f.Owner}, nil
}

// NewGroup describes a group to create with CreateGroupWith.
type NewGroup struct {
	Name    string  // 1–64 bytes
	Members []int64 // uids besides the caller; may be empty
	// Public lets anyone join with JoinGroup (version 2 servers; a
	// version 1 server ignores it and every group is joinable). The
	// default value is false: a private group, joined only by being added.
	Public bool
}

// CreateGroup creates a private group with the caller (its owner) and
// members. See CreateGroupWith.
func (c *Client) CreateGroup(ctx context.Context, name string, members []int64) (Group, error) {
	return c.CreateGroupWith(ctx, NewGroup{Name: name, Members: members})
}

// CreateGroupWith creates a group. It is not repeated after a reconnect:
// if the connection drops before the reply it fails with ErrDisconnected
// (the group may exist).
func (c *Client) CreateGroupWith(ctx context.Context, g NewGroup) (Group, error) {
	f, err := c.request(ctx, false, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "group_create", RID: rid, Name: g.Name, Members: g.Members, Public: g.Public})
	})
	if err != nil {
		return Group{}, err
	}
	return groupOf(f)
}

// joinScan is how many of a group's newest messages JoinGroup looks
// through for the system message of its own join.
const joinScan = 50

// JoinGroup joins group gid (on a version 2 server only a public one: a
// private group answers CodeForbidden). Messages stored before the join
// are not delivered to OnMessage (read them with History); later ones
// are. On a version 2 server the join's own system message ("joined") is
// delivered too, when it is among the newest 50 messages by the time the
// reply arrives (a group busier than that starts after it).
func (c *Client) JoinGroup(ctx context.Context, gid int64) (Group, error) {
	conv := GroupConv(gid)
	c.mu.Lock()
	if c.convs[conv] == nil {
		// Hold pushes back until the join position is known.
		c.convs[conv] = &convTrack{}
	}
	c.mu.Unlock()
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "group_join", RID: rid, Group: gid})
	})
	if err == nil {
		var g Group
		if g, err = groupOf(f); err == nil {
			var page HistoryPage
			page, err = c.HistoryLatest(ctx, conv, joinScan)
			c.positionAt(conv, joinPosition(page.Messages, c.UID()), lastSeq(page.Messages))
			return g, err
		}
	}
	c.positionAt(conv, 0, 0)
	return Group{}, err
}

// joinPosition returns where a just-joined group starts: below the newest
// system message of uid's own if that is a "joined" event, else at the
// newest message of page.
func joinPosition(page []Message, uid int64) int64 {
	for i := len(page) - 1; i >= 0; i-- {
		m := &page[i]
		if m.Event == nil || m.From != uid {
			continue
		}
		if m.Event.Event == EventJoined {
			return m.Seq - 1
		}
		break // a later change of the user's own: the join stored nothing
	}
	return lastSeq(page)
}

func lastSeq(page []Message) int64 {
	if n := len(page); n > 0 {
		return page[n-1].Seq
	}
	return 0
}

// positionAt places an unpositioned conversation at seq and releases what
// it buffered; last is the newest seq known to exist, fetched if no push
// brought it.
func (c *Client) positionAt(conv string, seq, last int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.convs[conv]
	if t == nil || t.positioned {
		return
	}
	out := t.position(seq, c.scratch[:0])
	c.acceptLocked(out)
	c.scratch = out[:0]
	if (t.gap() || last > t.held) && !t.fetching && c.sess != nil {
		c.fetchLocked(c.sess, conv, t)
	}
}

// AddMembers adds users to group gid (version 2: any member may). Uids
// that are already members are ignored; the reply's Count is the number
// of members after the request. 1–1000 uids.
func (c *Client) AddMembers(ctx context.Context, gid int64, uids []int64) (Group, error) {
	return c.groupChange(ctx, "group_add", gid, uids)
}

// RemoveMembers removes users from group gid (version 2: the owner only,
// CodeForbidden otherwise; the owner cannot remove themself, CodeBadRequest:
// use LeaveGroup). Uids that are not members are ignored. 1–1000 uids.
func (c *Client) RemoveMembers(ctx context.Context, gid int64, uids []int64) (Group, error) {
	return c.groupChange(ctx, "group_remove", gid, uids)
}

// maxGroupChange is the largest members list of group_add and group_remove
// (PROTOCOL §13).
const maxGroupChange = 1000

func (c *Client) groupChange(ctx context.Context, typ string, gid int64, uids []int64) (Group, error) {
	if len(uids) == 0 || len(uids) > maxGroupChange {
		return Group{}, fmt.Errorf("magpie: %s takes 1 to %d uids, got %d", typ, maxGroupChange, len(uids))
	}
	// Safe to repeat: a second add or remove of the same users changes
	// nothing and stores nothing.
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: typ, RID: rid, Group: gid, Members: uids})
	})
	if err != nil {
		return Group{}, err
	}
	return groupOf(f)
}

// RenameGroup renames group gid (version 2: the owner only, CodeForbidden
// otherwise). Renaming to the current name changes nothing.
func (c *Client) RenameGroup(ctx context.Context, gid int64, name string) (Group, error) {
	if name == "" {
		return Group{}, errors.New("magpie: RenameGroup needs a name")
	}
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "group_rename", RID: rid, Group: gid, Name: name})
	})
	if err != nil {
		return Group{}, err
	}
	return groupOf(f)
}

// LeaveGroup leaves group gid.
func (c *Client) LeaveGroup(ctx context.Context, gid int64) (Group, error) {
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "group_leave", RID: rid, Group: gid})
	})
	if err != nil {
		return Group{}, err
	}
	return groupOf(f)
}

// GroupMembers lists members of gid with uid > after, ascending (limit 0:
// the server's default of 1000).
func (c *Client) GroupMembers(ctx context.Context, gid, after int64, limit int) (Group, error) {
	f, err := c.request(ctx, true, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "group_members", RID: rid, Group: gid, After: &after, Limit: limit})
	})
	if err != nil {
		return Group{}, err
	}
	return groupOf(f)
}

// ListUsers lists users over HTTP with the client's token (see the
// package-level ListUsers).
func (c *Client) ListUsers(ctx context.Context, q UsersQuery) ([]User, error) {
	c.mu.Lock()
	token := c.token
	c.mu.Unlock()
	if token == "" {
		return nil, errors.New("magpie: no token yet: call Connect first")
	}
	return ListUsers(ctx, c.opts.HTTPClient, c.opts.Server, token, q)
}

// DirectConv is the id of the direct conversation between uids a and b.
func DirectConv(a, b int64) string {
	if a > b {
		a, b = b, a
	}
	return "d:" + strconv.FormatInt(a, 10) + ":" + strconv.FormatInt(b, 10)
}

// GroupConv is the id of group gid's conversation.
func GroupConv(gid int64) string { return "g:" + strconv.FormatInt(gid, 10) }

// ParseConv splits a conversation id: a direct conversation yields its two
// uids (gid 0), a group its gid (a, b 0). ok is false for malformed ids.
func ParseConv(conv string) (a, b, gid int64, ok bool) {
	num := func(s string) (int64, bool) {
		if s == "" || s[0] == '0' || len(s) > 16 {
			return 0, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil && n > 0
	}
	if rest, found := strings.CutPrefix(conv, "g:"); found {
		gid, ok = num(rest)
		return 0, 0, gid, ok
	}
	if rest, found := strings.CutPrefix(conv, "d:"); found {
		x, y, found := strings.Cut(rest, ":")
		if !found {
			return 0, 0, 0, false
		}
		var ok1, ok2 bool
		a, ok1 = num(x)
		b, ok2 = num(y)
		if ok1 && ok2 && a < b {
			return a, b, 0, true
		}
	}
	return 0, 0, 0, false
}
