package client

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
)

// MaxPresenceSub is the longest list SubscribePresence takes (PROTOCOL §16).
const MaxPresenceSub = 1000

// Presence is a user's online state (PROTOCOL §16).
type Presence struct {
	UID    int64 `json:"uid"`
	Online bool  `json:"online"`
	// LastSeen is when the user's last connection closed, Unix
	// milliseconds: 0 while online or when the server does not know.
	LastSeen int64 `json:"last_seen"`
}

// presenceState is the Client's presence bookkeeping, guarded by c.mu.
//
// The subscription belongs to the Client, not to a connection: want is
// sent again after every welcome, so a reconnect re-subscribes by itself.
type presenceState struct {
	want    []int64 // the subscription list; nil: never subscribed
	gen     uint64  // bumped by every SubscribePresence
	known   map[int64]Presence
	waiters []*presenceWaiter
}

type presenceWaiter struct {
	gen uint64
	ch  chan presenceResult // cap 1
}

type presenceResult struct {
	items []Presence
	err   error
}

// SubscribePresence replaces the user's presence subscription with uids
// (0 to 1000 positive uids; an empty list unsubscribes) and returns the
// state of each, in request order without duplicates. Afterwards
// Options.OnPresence gets the users whose state changes (the server sends
// at most one frame a second), and Presence answers from the latest state.
//
// Every reply and push also goes to Options.OnPresence. The subscription
// survives reconnects: after every welcome the client subscribes again,
// so OnPresence shows what changed while it was away. Called while offline, it waits for
// the connection (or ctx). When a later call replaces the list before this
// call's reply, this call returns the later list's reply. Version 2
// servers only: ErrNotSupported from a version 1 server.
func (c *Client) SubscribePresence(ctx context.Context, uids []int64) ([]Presence, error) {
	if len(uids) > MaxPresenceSub {
		return nil, fmt.Errorf("magpie: SubscribePresence takes at most %d uids, got %d", MaxPresenceSub, len(uids))
	}
	for _, u := range uids {
		if u <= 0 {
			return nil, fmt.Errorf("magpie: SubscribePresence: uid %d is not positive", u)
		}
	}
	want := append([]int64{}, uids...) // non-nil: "subscribed, maybe to nothing"
	c.mu.Lock()
	if err := c.usableLocked(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	if c.sess != nil && c.version < 2 {
		c.mu.Unlock()
		return nil, ErrNotSupported
	}
	p := &c.presence
	p.gen++
	p.want = want
	for uid := range p.known {
		if !slices.Contains(want, uid) {
			delete(p.known, uid) // dropped users are not reported any more
		}
	}
	if c.sess == nil && len(want) == 0 {
		// No connection holds a subscription, and the next one starts
		// without: nothing to send.
		c.mu.Unlock()
		return []Presence{}, nil
	}
	w := &presenceWaiter{gen: p.gen, ch: make(chan presenceResult, 1)}
	p.waiters = append(p.waiters, w)
	if c.sess != nil {
		c.sendPresenceSubLocked(c.sess)
	}
	c.mu.Unlock()
	select {
	case r := <-w.ch:
		return r.items, r.err
	case <-ctx.Done():
		c.mu.Lock()
		p.waiters = slices.DeleteFunc(p.waiters, func(x *presenceWaiter) bool { return x == w })
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// Presence returns the latest known state of a subscribed user: from the
// last reply or push, so while the client is offline it may be stale.
func (c *Client) Presence(uid int64) (Presence, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.presence.known[uid]
	return p, ok
}

// sendPresenceSubLocked sends the current subscription list on s.
// REQUIRES: c.mu.
func (c *Client) sendPresenceSubLocked(s *session) {
	p := &c.presence
	gen := p.gen
	rid := "p" + c.newID()
	c.reqs[rid] = &pendingReq{rid: rid, sessID: s.id, fn: func(f *inFrame) { c.onPresenceReply(gen, f) }}
	s.enqueueLocked(mustJSON(struct {
		Type string  `json:"type"`
		RID  string  `json:"rid"`
		UIDs []int64 `json:"uids"`
	}{"presence_sub", rid, p.want}), false)
}

// resubscribePresenceLocked runs after every welcome. REQUIRES: c.mu.
func (c *Client) resubscribePresenceLocked(s *session) {
	p := &c.presence
	switch {
	case p.want == nil:
	case c.version < 2:
		p.finish(^uint64(0), presenceResult{err: ErrNotSupported})
	case len(p.want) == 0:
		p.finish(^uint64(0), presenceResult{items: []Presence{}})
	default:
		c.sendPresenceSubLocked(s)
	}
}

// onPresenceReply handles the reply to a presence_sub sent for
// subscription generation gen. REQUIRES: c.mu.
func (c *Client) onPresenceReply(gen uint64, f *inFrame) {
	p := &c.presence
	if f.Type == "error" {
		c.opts.Logger.Warn("magpie: presence_sub failed", "code", f.Code, "message", f.Message)
		p.finish(gen, presenceResult{err: f.err()})
		return
	}
	items, err := presenceItems(f)
	if err != nil {
		p.finish(gen, presenceResult{err: err})
		return
	}
	if gen == p.gen {
		c.applyPresenceLocked(items)
	}
	p.finish(gen, presenceResult{items: items})
}

// presencePushLocked handles a `presence` frame without rid. REQUIRES: c.mu.
func (c *Client) presencePushLocked(f *inFrame) {
	items, err := presenceItems(f)
	if err != nil {
		c.opts.Logger.Warn("magpie: bad presence frame", "err", err)
		return
	}
	// A push may cross an unsubscribe: report subscribed users only.
	items = slices.DeleteFunc(items, func(it Presence) bool { return !slices.Contains(c.presence.want, it.UID) })
	c.applyPresenceLocked(items)
}

// applyPresenceLocked records items and hands them to OnPresence.
// REQUIRES: c.mu.
func (c *Client) applyPresenceLocked(items []Presence) {
	if len(items) == 0 {
		return
	}
	p := &c.presence
	if p.known == nil {
		p.known = make(map[int64]Presence)
	}
	for _, it := range items {
		p.known[it.UID] = it
	}
	if c.opts.OnPresence != nil {
		cp := slices.Clone(items)
		c.pushEventLocked(event{call: func() { c.opts.OnPresence(cp) }})
	}
}

func presenceItems(f *inFrame) ([]Presence, error) {
	items := []Presence{}
	if len(f.Items) > 0 {
		if err := json.Unmarshal(f.Items, &items); err != nil {
			return nil, fmt.Errorf("magpie: bad presence items: %w", err)
		}
	}
	return items, nil
}

// finish answers the waiters of generations up to gen.
func (p *presenceState) finish(gen uint64, r presenceResult) {
	p.waiters = slices.DeleteFunc(p.waiters, func(w *presenceWaiter) bool {
		if w.gen > gen {
			return false
		}
		w.ch <- r
		return true
	})
}

func (p *presenceState) failWaiters(err error) { p.finish(^uint64(0), presenceResult{err: err}) }
