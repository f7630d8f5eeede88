package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// State is the connection state of a Client.
type State int

const (
	// StateOffline: not connected and not trying (before Connect, after
	// Close, or after a close that forbids reconnecting: 4004, or 4001
	// without credentials to log in again).
	StateOffline State = iota
	// StateConnecting: dialing for the first time since Connect.
	StateConnecting
	// StateOnline: `welcome` received; sends and requests flow.
	StateOnline
	// StateReconnecting: the connection was lost; waiting StateEvent.Delay
	// before the next attempt, or dialing it.
	StateReconnecting
)

func (s State) String() string {
	switch s {
	case StateOffline:
		return "offline"
	case StateConnecting:
		return "connecting"
	case StateOnline:
		return "online"
	case StateReconnecting:
		return "reconnecting"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// StateEvent is a state change, handed to Options.OnState.
type StateEvent struct {
	State State
	// Code is the close code of the connection that just ended (PROTOCOL
	// §11; 1006 when it was lost without a close frame), or 0 when no
	// connection ended (a failed dial, the first connect).
	Code int
	// Err says why the client is not online: a *CloseError, a dial or
	// login error, ErrUnauthorized, ErrReplaced or ErrClosed. Nil when
	// online.
	Err error
	// Delay is the wait before the next attempt (StateReconnecting only).
	Delay time.Duration
	// Attempt counts failed attempts since the client was last online.
	Attempt int
}

// ReadMark is a `read` frame: the user's read position in Conv.
type ReadMark struct {
	Conv        string
	Seq         int64 // resulting read_seq
	Unread      int64
	TotalUnread int64
}

// Client is a connection to a Magpie server that survives reconnects. It is
// safe for concurrent use. Create it with New, start it with Connect, stop
// it with Close.
//
// # Delivery
//
// Every message of the user's conversations is handed to Options.OnMessage
// exactly once and in seq order per conversation, counted from where the
// client starts (Options.Start and Options.Positions): duplicates (server
// resends, history overlapping pushes) are dropped by (conv, seq), and a
// message above a gap is held back until history fills the gap. After each
// reconnect the client asks for `convs` and fetches, for every conversation
// whose last_seq is above what it holds, the missing messages with
// `history`. Exactly-once holds for the life of the Client; to resume
// across restarts, persist Positions and pass them to the next Client.
//
// # Sends
//
// Send returns once the server confirmed the message with `sent`. A send
// not confirmed when the connection drops is sent again, with the same
// cmid, after the next `welcome`; the server deduplicates by cmid, so a
// message is stored once however often it was transmitted.
type Client struct {
	opts       Options
	cmidPrefix string
	ids        atomic.Uint64

	lifeCtx    context.Context
	lifeCancel context.CancelFunc
	wg         sync.WaitGroup // supervisor and delivery goroutines
	quit       chan struct{}  // closed by Close: stops the delivery goroutine
	retryNow   chan struct{}  // cap 1: RetryNow ends the backoff wait

	mu sync.Mutex
	// Everything below is guarded by mu.
	closed     bool
	running    bool          // the supervisor goroutine runs
	state      State         // last state published
	offlineErr error         // why the client went offline for good
	changed    chan struct{} // closed and replaced on every state change
	token      string
	wsURL      string
	uid        int64
	version    int      // welcome's version of the last session (0 before the first)
	sess       *session // the online session, nil while not online
	synced     bool     // the first catch-up completed
	convs      map[string]*convTrack
	fetchWait  map[string]bool // convs whose gap fill waits for the delivery queue to drain
	sends      map[string]*pendingSend
	sendOrder  uint64
	reqs       map[string]*pendingReq
	queue      []event // events for the application, in order
	qhead      int
	qwake      chan struct{} // cap 1: the delivery goroutine has work
	scratch    []Message
	typing     typingState
	presence   presenceState
}

// event is one item of the delivery queue: a message, or (exactly one of)
// a state change, a read mark, or another callback to run in order.
type event struct {
	msg   Message
	state *StateEvent
	read  *ReadMark
	call  func() // receipts, typing and presence callbacks
}

func (ev *event) isMsg() bool { return ev.state == nil && ev.read == nil && ev.call == nil }

type pendingSend struct {
	cmid   string
	frame  []byte
	msg    Message // kind, body, cmid: delivered to OnMessage after `sent`
	order  uint64
	done   chan struct{}
	res    Sent
	err    error
	retry  int         // rate_limited/internal retries so far
	timer  *time.Timer // pending retry after rate_limited/internal
	closed bool        // done is closed
}

type reqResult struct {
	f   *inFrame
	err error
}

type pendingReq struct {
	rid    string
	frame  []byte
	retry  bool           // safe to send again on the next connection
	sessID uint64         // session it was written to, 0 if not yet
	ch     chan reqResult // cap 1
	fn     func(*inFrame) // internal request: called with c.mu held instead of ch
}

// Queue lengths that pace gap filling: a history page is requested only
// while the delivery queue is below fillHighWater, so a slow application
// does not pull a long history into memory at once.
const (
	fillHighWater = 1024
	historyPage   = 200
)

// New checks opts and returns a Client that is not connected yet.
func New(opts Options) (*Client, error) {
	opts.ensureDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	var rb [6]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return nil, err
	}
	c := &Client{
		opts:       opts,
		cmidPrefix: hex.EncodeToString(rb[:]),
		quit:       make(chan struct{}),
		retryNow:   make(chan struct{}, 1),
		changed:    make(chan struct{}),
		token:      opts.Token,
		wsURL:      opts.WSURL,
		convs:      make(map[string]*convTrack),
		fetchWait:  make(map[string]bool),
		sends:      make(map[string]*pendingSend),
		reqs:       make(map[string]*pendingReq),
		qwake:      make(chan struct{}, 1),
		typing:     typingState{ttl: TypingExpiry},
	}
	c.lifeCtx, c.lifeCancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.deliverLoop()
	return c, nil
}

// Dial is New followed by Connect.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	c, err := New(opts)
	if err != nil {
		return nil, err
	}
	if err := c.Connect(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Connect starts connecting (if the client is not already connected or
// trying) and waits until it is online and has completed its first
// catch-up, so that positions are set (see Options.Start). ctx bounds only
// the wait: when it expires, the client keeps trying in the background.
// Connect fails at once if the client goes offline for good (for example
// ErrUnauthorized) and returns ErrClosed after Close.
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if !c.running {
		c.running = true
		c.offlineErr = nil
		c.wg.Add(1)
		go c.supervise()
	}
	c.mu.Unlock()
	for {
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return ErrClosed
		case !c.running:
			err := c.offlineErr
			c.mu.Unlock()
			return err
		case c.state == StateOnline && c.synced:
			c.mu.Unlock()
			return nil
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Close closes the connection (close code 1000), stops reconnecting, fails
// pending calls with ErrClosed and waits until every goroutine of the
// Client has returned. Undelivered messages are dropped. It must not be
// called from an Options callback. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	s := c.sess
	if c.typing.timer != nil {
		c.typing.timer.Stop()
	}
	c.cancelTypingLocked("")
	c.lifeCancel()
	// Fail pending calls first: a callback blocked in Send must return
	// before the delivery goroutine can stop.
	c.failAll(ErrClosed)
	c.mu.Unlock()
	if s != nil {
		s.closeNormal()
	}
	close(c.quit)
	c.wg.Wait()
	c.mu.Lock()
	c.failAll(ErrClosed)
	c.state = StateOffline
	c.offlineErr = ErrClosed
	c.notifyLocked()
	c.mu.Unlock()
	if c.opts.OnState != nil {
		c.opts.OnState(StateEvent{State: StateOffline, Err: ErrClosed})
	}
	return nil
}

// RetryNow ends the wait before the next reconnect attempt, so that it
// starts at once (a user's "try now"). It reports false, and does nothing,
// unless the client is waiting to reconnect (StateReconnecting).
func (c *Client) RetryNow() bool {
	c.mu.Lock()
	waiting := c.running && !c.closed && c.state == StateReconnecting
	c.mu.Unlock()
	if !waiting {
		return false
	}
	select {
	case c.retryNow <- struct{}{}:
	default:
	}
	return true
}

// State returns the current connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// UID returns the user's uid, known after the first login or welcome.
func (c *Client) UID() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.uid
}

// ServerVersion returns the protocol version the server announced in its
// last welcome (1 or 2; 0 before the first). Version 2 adds group owners
// and events, receipts, typing and presence; this client speaks both.
func (c *Client) ServerVersion() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version
}

// Token returns the token in use (it changes when the client logs in again).
func (c *Client) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Positions returns, per conversation, the highest seq delivered to
// OnMessage (or skipped by the start position). Passing them as
// Options.Positions to a later Client resumes delivery after them.
func (c *Client) Positions() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int64, len(c.convs))
	for conv, t := range c.convs {
		if t.positioned {
			m[conv] = t.delivered
		}
	}
	return m
}

func (c *Client) newID() string { return strconv.FormatUint(c.ids.Add(1), 36) }

func (c *Client) newCMID() string { return c.cmidPrefix + "-" + c.newID() }

// setStateLocked publishes a state change. REQUIRES: c.mu.
func (c *Client) setStateLocked(ev StateEvent) {
	c.state = ev.State
	c.notifyLocked()
	if c.opts.OnState != nil {
		c.pushEventLocked(event{state: &ev})
	}
	c.opts.Logger.Debug("magpie: state", "state", ev.State, "code", ev.Code, "err", ev.Err, "delay", ev.Delay)
}

func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// pushEventLocked queues an event for the application. REQUIRES: c.mu.
func (c *Client) pushEventLocked(ev event) {
	c.queue = append(c.queue, ev)
	select {
	case c.qwake <- struct{}{}:
	default:
	}
}

func (c *Client) queueLenLocked() int { return len(c.queue) - c.qhead }

// deliverLoop hands events to the application callbacks, one at a time,
// and records what was delivered so acks can go out.
func (c *Client) deliverLoop() {
	defer c.wg.Done()
	var batch []event
	for {
		c.mu.Lock()
		for c.queueLenLocked() == 0 {
			c.queue, c.qhead = c.queue[:0], 0
			c.mu.Unlock()
			select {
			case <-c.qwake:
			case <-c.quit:
				return
			}
			c.mu.Lock()
		}
		// Take up to 64 events per lock round trip.
		n := min(c.queueLenLocked(), 64)
		batch = append(batch[:0], c.queue[c.qhead:c.qhead+n]...)
		clear(c.queue[c.qhead : c.qhead+n])
		c.qhead += n
		if c.qhead >= 1024 && c.qhead*2 >= len(c.queue) {
			// Compact, so a queue that never runs empty does not keep
			// growing its backing array.
			k := copy(c.queue, c.queue[c.qhead:])
			clear(c.queue[k:])
			c.queue, c.qhead = c.queue[:k], 0
		}
		c.mu.Unlock()

		delivered := 0
		for i := range batch {
			select {
			case <-c.quit:
				return
			default:
			}
			ev := &batch[i]
			switch {
			case ev.state != nil:
				c.opts.OnState(*ev.state)
			case ev.read != nil:
				if c.opts.OnRead != nil {
					c.opts.OnRead(*ev.read)
				}
			case ev.call != nil:
				ev.call()
			default:
				if c.opts.OnMessage != nil {
					c.opts.OnMessage(ev.msg)
				}
				if ev.msg.Event != nil && c.opts.OnGroupEvent != nil {
					c.opts.OnGroupEvent(*ev.msg.Event)
				}
				delivered++
			}
		}
		if delivered > 0 {
			c.markDelivered(batch)
		}
		clear(batch)
	}
}

// markDelivered advances delivered positions and lets acks go out.
func (c *Client) markDelivered(batch []event) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sess
	for i := range batch {
		ev := &batch[i]
		if !ev.isMsg() {
			continue
		}
		t := c.convs[ev.msg.Conv]
		if t == nil || ev.msg.Seq <= t.delivered {
			continue
		}
		t.delivered = ev.msg.Seq
		if s != nil {
			s.acks.deliveredTo(ev.msg.Conv, ev.msg.Seq, now)
		}
	}
	if s != nil {
		s.wakeWriter()
	}
	if len(c.fetchWait) > 0 && c.queueLenLocked() < fillHighWater/2 && s != nil {
		for conv := range c.fetchWait {
			delete(c.fetchWait, conv)
			if t := c.convs[conv]; t != nil && !t.fetching {
				c.fetchLocked(s, conv, t)
			}
		}
	}
}

// track returns the receive state of conv, creating it. REQUIRES: c.mu.
func (c *Client) track(conv string) *convTrack {
	t := c.convs[conv]
	if t != nil {
		return t
	}
	t = &convTrack{}
	if p, ok := c.opts.Positions[conv]; ok {
		t.held, t.delivered, t.positioned = p, p, true
	} else if c.synced || c.opts.Start == StartBeginning {
		// A conversation first seen after the first catch-up is new to
		// this client: everything in it is delivered.
		t.positioned = true
	}
	c.convs[conv] = t
	return t
}

// acceptLocked queues in-order messages for delivery, with the group
// events of a version 2 server decoded. REQUIRES: c.mu.
func (c *Client) acceptLocked(out []Message) {
	for _, m := range out {
		if c.version >= 2 && m.Event == nil {
			m.Event = decodeGroupEvent(&m)
		}
		c.pushEventLocked(event{msg: m})
	}
}

// fetchLocked asks for the messages after t.held of conv on s, unless the
// delivery queue is long (then markDelivered asks later). REQUIRES: c.mu.
func (c *Client) fetchLocked(s *session, conv string, t *convTrack) {
	if c.queueLenLocked() >= fillHighWater {
		c.fetchWait[conv] = true
		return
	}
	t.fetching = true
	after := t.held
	rid := "f" + c.newID()
	c.reqs[rid] = &pendingReq{rid: rid, sessID: s.id, fn: func(f *inFrame) { c.onFill(s, conv, after, f) }}
	s.enqueueLocked(mustJSON(historyFrame{Type: "history", RID: rid, Conv: conv, After: &after, Limit: historyPage}), false)
}

// onFill handles a gap-filling history page. REQUIRES: c.mu.
func (c *Client) onFill(s *session, conv string, after int64, f *inFrame) {
	t := c.convs[conv]
	t.fetching = false
	if f.Type == "error" {
		c.opts.Logger.Warn("magpie: history fill failed", "conv", conv, "code", f.Code, "message", f.Message)
		if f.Code == CodeNotMember || f.Code == CodeNotFound {
			clear(t.pending) // left the group: nothing more to fetch
		}
		return
	}
	held := t.held
	out := c.scratch[:0]
	for _, m := range f.Messages {
		if m.Conv == "" {
			m.Conv = conv
		}
		out = t.offer(m, out)
	}
	c.acceptLocked(out)
	c.scratch = out[:0]
	if (f.More || t.gap()) && c.sess == s {
		if t.held == held && len(f.Messages) == 0 {
			// The server said nothing is there although a gap remains;
			// retrying at once would spin. The next catch-up retries.
			c.opts.Logger.Warn("magpie: history returned nothing for a gap", "conv", conv, "after", after)
			return
		}
		c.fetchLocked(s, conv, t)
	}
}

// onCatchup handles the `convs` reply asked for after welcome. REQUIRES: c.mu.
func (c *Client) onCatchup(s *session, f *inFrame) {
	if f.Type == "error" {
		c.opts.Logger.Warn("magpie: convs for catch-up failed", "code", f.Code, "message", f.Message)
		return
	}
	items, err := f.convItems()
	if err != nil {
		c.opts.Logger.Warn("magpie: convs for catch-up", "err", err)
		return
	}
	out := c.scratch[:0]
	for i := range items {
		it := &items[i]
		t := c.track(it.Conv)
		if !t.positioned {
			out = t.position(it.LastSeq, out)
		}
		if it.LastSeq > t.held && !t.fetching {
			c.fetchLocked(s, it.Conv, t)
		} else if t.gap() && !t.fetching {
			c.fetchLocked(s, it.Conv, t)
		}
	}
	if !c.synced {
		// Conversations seen only through pushes were created after the
		// snapshot: everything in them is new.
		for conv, t := range c.convs {
			if !t.positioned {
				out = t.position(0, out)
				if t.gap() && !t.fetching {
					c.fetchLocked(s, conv, t)
				}
			}
		}
		c.synced = true
		c.notifyLocked()
	}
	c.acceptLocked(out)
	c.scratch = out[:0]
}

// failAll fails every pending send and request. REQUIRES: c.mu.
func (c *Client) failAll(err error) {
	for cmid, ps := range c.sends {
		delete(c.sends, cmid)
		ps.finish(Sent{}, err)
	}
	for rid, r := range c.reqs {
		delete(c.reqs, rid)
		if r.ch != nil {
			r.ch <- reqResult{err: err}
		}
	}
	c.presence.failWaiters(err)
}

func (ps *pendingSend) finish(res Sent, err error) {
	if ps.closed {
		return
	}
	ps.closed = true
	if ps.timer != nil {
		ps.timer.Stop()
	}
	ps.res, ps.err = res, err
	close(ps.done)
}

// onlineLocked installs s as the online session: it re-sends unconfirmed
// sends and pending requests and starts the catch-up (PROTOCOL §9).
// REQUIRES: c.mu.
func (c *Client) onlineLocked(s *session) {
	c.sess = s
	c.uid = s.welcome.UID
	c.version = s.welcome.Version
	// Unconfirmed sends, in the order they were made.
	pend := make([]*pendingSend, 0, len(c.sends))
	for _, ps := range c.sends {
		if ps.timer != nil {
			ps.timer.Stop()
			ps.timer = nil
		}
		pend = append(pend, ps)
	}
	slices.SortFunc(pend, func(a, b *pendingSend) int { return int(a.order - b.order) })
	for _, ps := range pend {
		s.enqueueLocked(ps.frame, true)
	}
	for _, r := range c.reqs {
		if r.fn == nil && r.sessID != s.id {
			r.sessID = s.id
			s.enqueueLocked(r.frame, false)
		}
	}
	rid := "c" + c.newID()
	c.reqs[rid] = &pendingReq{rid: rid, sessID: s.id, fn: func(f *inFrame) { c.onCatchup(s, f) }}
	s.enqueueLocked(mustJSON(reqFrame{Type: "convs", RID: rid}), false)
	c.resubscribePresenceLocked(s)
	c.setStateLocked(StateEvent{State: StateOnline})
}

// sessionGoneLocked drops session s and what was bound to it. REQUIRES: c.mu.
func (c *Client) sessionGoneLocked(s *session) {
	if c.sess == s {
		c.sess = nil
	}
	for rid, r := range c.reqs {
		if r.sessID != s.id {
			continue
		}
		switch {
		case r.fn != nil:
			delete(c.reqs, rid)
		case !r.retry:
			delete(c.reqs, rid)
			r.ch <- reqResult{err: ErrDisconnected}
		}
	}
	for _, t := range c.convs {
		t.fetching = false
	}
	clear(c.fetchWait)
	c.cancelTypingLocked("") // typing is not queued across connections
}

// handleFrame processes one frame received on s. It runs on s's reader
// goroutine.
func (c *Client) handleFrame(s *session, f *inFrame) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch f.Type {
	case "msg":
		if f.Conv == "" || f.Seq <= 0 {
			return
		}
		c.typingStoppedLocked(f.Conv, f.From)
		t := c.track(f.Conv)
		s.acks.pushed(f.Conv, f.Seq, t.delivered, now)
		out := t.offer(f.message(), c.scratch[:0])
		c.acceptLocked(out)
		c.scratch = out[:0]
		if t.gap() && !t.fetching && c.sess == s {
			c.fetchLocked(s, f.Conv, t)
		}
		if !s.acks.next().IsZero() {
			s.wakeWriter()
		}
		return
	case "sent":
		if ps := c.sends[f.CMID]; ps != nil {
			delete(c.sends, f.CMID)
			ps.finish(Sent{CMID: f.CMID, Conv: f.Conv, Seq: f.Seq, TS: f.TS}, nil)
			// The sender's own message is part of the conversation: it is
			// delivered in seq order like the others, without waiting for a
			// gap fill to bring it back.
			if f.Conv != "" && f.Seq > 0 {
				m := ps.msg
				m.Conv, m.Seq, m.From, m.TS = f.Conv, f.Seq, c.uid, f.TS
				t := c.track(f.Conv)
				out := t.offer(m, c.scratch[:0])
				c.acceptLocked(out)
				c.scratch = out[:0]
				if t.gap() && !t.fetching && c.sess == s {
					c.fetchLocked(s, f.Conv, t)
				}
			}
			return
		}
	case "pong", "welcome":
		return
	case "read":
		c.pushEventLocked(event{read: &ReadMark{Conv: f.Conv, Seq: f.Seq, Unread: f.Unread, TotalUnread: f.TotalUnread}})
	case "receipt":
		c.receiptLocked(f)
		return
	case "typing":
		c.typingLocked(f, now)
		return
	case "presence":
		if f.RID == "" {
			c.presencePushLocked(f)
			return
		}
	case "error":
		if f.RID == "" && f.CMID != "" {
			if ps := c.sends[f.CMID]; ps != nil {
				c.sendErrorLocked(ps, f)
				return
			}
		}
	}
	if f.RID == "" {
		return
	}
	if r := c.reqs[f.RID]; r != nil {
		delete(c.reqs, f.RID)
		if r.fn != nil {
			r.fn(f)
		} else {
			cp := *f // f is reused by the reader
			r.ch <- reqResult{f: &cp}
		}
		return
	}
	if f.Type == "error" && f.CMID != "" {
		if ps := c.sends[f.CMID]; ps != nil {
			c.sendErrorLocked(ps, f)
		}
	}
}

// sendErrorLocked handles an error frame for a send: rate_limited and
// internal are retried with the same cmid (PROTOCOL §4), the rest fail the
// Send. REQUIRES: c.mu.
func (c *Client) sendErrorLocked(ps *pendingSend, f *inFrame) {
	if f.Code == CodeRateLimited || f.Code == CodeInternal {
		d := c.opts.Backoff.Delay(min(ps.retry, 5)) + 10*time.Millisecond
		ps.retry++
		ps.timer = time.AfterFunc(d, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.sends[ps.cmid] == ps && c.sess != nil && !c.closed {
				ps.timer = nil
				c.sess.enqueueLocked(ps.frame, true)
			}
		})
		return
	}
	delete(c.sends, ps.cmid)
	ps.finish(Sent{}, f.err())
}
