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
	return ConvList{Items: f.Items, TotalUnread: f.TotalUnread}, nil
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
	for i := range f.Messages {
		if f.Messages[i].Conv == "" {
			f.Messages[i].Conv = h.Conv
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
}

func groupOf(f *inFrame) (Group, error) {
	if err := expect(f, "group"); err != nil {
		return Group{}, err
	}
	return Group{ID: f.Group, Name: f.Name, Count: f.Count, Members: f.Members, More: f.More}, nil
}

// CreateGroup creates a group with the caller and members. It is not
// repeated after a reconnect: if the connection drops before the reply it
// fails with ErrDisconnected (the group may exist).
func (c *Client) CreateGroup(ctx context.Context, name string, members []int64) (Group, error) {
	f, err := c.request(ctx, false, func(rid string) []byte {
		return mustJSON(reqFrame{Type: "group_create", RID: rid, Name: name, Members: members})
	})
	if err != nil {
		return Group{}, err
	}
	return groupOf(f)
}

// JoinGroup joins group gid. Messages stored before the join are not
// delivered to OnMessage (read them with History); later ones are.
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
			page, err = c.HistoryLatest(ctx, conv, 1)
			var last int64
			if n := len(page.Messages); n > 0 {
				last = page.Messages[n-1].Seq
			}
			c.positionAt(conv, last)
			return g, err
		}
	}
	c.positionAt(conv, 0)
	return Group{}, err
}

// positionAt places an unpositioned conversation and releases what it
// buffered.
func (c *Client) positionAt(conv string, seq int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.convs[conv]
	if t == nil || t.positioned {
		return
	}
	out := t.position(seq, c.scratch[:0])
	c.acceptLocked(out)
	c.scratch = out[:0]
	if t.gap() && !t.fetching && c.sess != nil {
		c.fetchLocked(c.sess, conv, t)
	}
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
