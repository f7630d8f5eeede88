package client

import (
	"errors"
	"slices"
	"strconv"
	"time"
)

// TypingExpiry is how long a typing indicator lasts after the last
// `typing` frame from that user in that conversation (PROTOCOL §15). A
// `msg` from the user in the conversation ends it at once.
const TypingExpiry = 6 * time.Second

// maxTypists bounds the typing state: typists beyond it are ignored until
// others expire (a server forwards typing only in conversations of at most
// --receipt-members members, so this is never reached in practice).
const maxTypists = 4096

// TypingEvent reports that UID started (Typing true) or stopped (false)
// typing in Conv. Handed to Options.OnTyping on changes only: a typing
// frame from someone already typing extends the indicator silently.
type TypingEvent struct {
	Conv   string
	UID    int64
	Typing bool
}

// typingState is the Client's typing bookkeeping, guarded by c.mu.
type typingState struct {
	active map[string]map[int64]time.Time // conv → typist → expiry
	n      int                            // entries in active
	timer  *time.Timer                    // fires at (or after) the earliest expiry
	armed  bool
	due    time.Time              // when the armed timer fires
	sent   map[string]time.Time   // conv → when this client last sent typing
	trail  map[string]*time.Timer // conv → the frame due at the end of its interval
	ttl    time.Duration          // TypingExpiry; tests shorten it
}

// Typing tells the other members of conv that the user is typing (a
// `typing` frame, PROTOCOL §15). Call it on every keystroke: it sends at
// most one frame per Options.TypingInterval per conversation (the server
// drops frames less than 1 s apart anyway): the first call at once, and
// the calls made inside the interval as one frame at its end, so a short
// burst of typing still shows. A Send to the conversation drops that
// pending frame: the message ends the indicator at the receivers.
//
// Typing is not queued: while the client is not online it returns
// ErrDisconnected and sends nothing, and a connection loss drops the
// pending frame; on a version 1 server it returns ErrNotSupported. Errors
// from the server (a conversation the user is not in) are not reported.
func (c *Client) Typing(conv string) error {
	if _, _, _, ok := ParseConv(conv); !ok {
		return errors.New("magpie: Typing: malformed conversation id " + strconv.Quote(conv))
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usableLocked(); err != nil {
		return err
	}
	if c.sess == nil {
		return ErrDisconnected
	}
	if c.version < 2 {
		return ErrNotSupported
	}
	ts := &c.typing
	if last, ok := ts.sent[conv]; ok && now.Sub(last) < c.opts.TypingInterval {
		if ts.trail[conv] == nil {
			if ts.trail == nil {
				ts.trail = make(map[string]*time.Timer)
			}
			ts.trail[conv] = time.AfterFunc(last.Add(c.opts.TypingInterval).Sub(now), func() { c.typingDue(conv) })
		}
		return nil
	}
	if ts.sent == nil {
		ts.sent = make(map[string]time.Time)
	}
	if len(ts.sent) >= 256 {
		// Keep the map small: entries older than the interval throttle nothing.
		for k, t := range ts.sent {
			if now.Sub(t) >= c.opts.TypingInterval {
				delete(ts.sent, k)
			}
		}
	}
	ts.sent[conv] = now
	c.sess.enqueueLocked(mustJSON(reqFrame{Type: "typing", Conv: conv}), false)
	return nil
}

// typingDue sends the frame that calls inside an interval left pending.
func (c *Client) typingDue(conv string) {
	c.mu.Lock()
	if c.typing.trail[conv] == nil {
		c.mu.Unlock()
		return // cancelled meanwhile
	}
	delete(c.typing.trail, conv)
	c.mu.Unlock()
	c.Typing(conv)
}

// cancelTypingLocked drops the pending typing frames of conv ("" for all).
// REQUIRES: c.mu.
func (c *Client) cancelTypingLocked(conv string) {
	for k, t := range c.typing.trail {
		if conv == "" || k == conv {
			t.Stop()
			delete(c.typing.trail, k)
		}
	}
}

// Typers returns the users typing in conv now, ascending.
func (c *Client) Typers(conv string) []int64 {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int64
	for uid, exp := range c.typing.active[conv] {
		if now.Before(exp) {
			out = append(out, uid)
		}
	}
	slices.Sort(out)
	return out
}

// typingLocked handles a `typing` frame. REQUIRES: c.mu.
func (c *Client) typingLocked(f *inFrame, now time.Time) {
	if f.Conv == "" || f.UID <= 0 || f.UID == c.uid {
		return
	}
	ts := &c.typing
	m := ts.active[f.Conv]
	if _, ok := m[f.UID]; !ok {
		if ts.n >= maxTypists {
			return
		}
		if m == nil {
			if ts.active == nil {
				ts.active = make(map[string]map[int64]time.Time)
			}
			m = make(map[int64]time.Time)
			ts.active[f.Conv] = m
		}
		ts.n++
		c.typingEventLocked(TypingEvent{Conv: f.Conv, UID: f.UID, Typing: true})
	}
	exp := now.Add(ts.ttl)
	m[f.UID] = exp
	if !ts.armed || exp.Before(ts.due) {
		c.armTypingLocked(now, exp)
	}
}

// typingStoppedLocked ends uid's indicator in conv (a message from them
// arrived). REQUIRES: c.mu.
func (c *Client) typingStoppedLocked(conv string, uid int64) {
	m := c.typing.active[conv]
	if _, ok := m[uid]; !ok {
		return
	}
	c.dropTypistLocked(conv, m, uid)
}

func (c *Client) dropTypistLocked(conv string, m map[int64]time.Time, uid int64) {
	delete(m, uid)
	if len(m) == 0 {
		delete(c.typing.active, conv)
	}
	c.typing.n--
	c.typingEventLocked(TypingEvent{Conv: conv, UID: uid, Typing: false})
}

func (c *Client) typingEventLocked(ev TypingEvent) {
	if c.opts.OnTyping != nil {
		c.pushEventLocked(event{call: func() { c.opts.OnTyping(ev) }})
	}
}

// armTypingLocked makes expireTyping run at due. One timer serves every
// indicator: it fires at the earliest expiry and re-arms itself for the
// next. REQUIRES: c.mu.
func (c *Client) armTypingLocked(now, due time.Time) {
	ts := &c.typing
	ts.armed, ts.due = true, due
	d := due.Sub(now)
	if ts.timer == nil {
		ts.timer = time.AfterFunc(d, c.expireTyping)
		return
	}
	ts.timer.Reset(d)
}

// expireTyping ends the indicators whose 6 s have passed.
func (c *Client) expireTyping() {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := &c.typing
	ts.armed = false
	if c.closed {
		return
	}
	var next time.Time
	for conv, m := range ts.active {
		for uid, exp := range m {
			if !now.Before(exp) {
				c.dropTypistLocked(conv, m, uid)
			} else if next.IsZero() || exp.Before(next) {
				next = exp
			}
		}
	}
	if !next.IsZero() {
		c.armTypingLocked(now, next)
	}
}
