package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// session is one WebSocket connection, from `welcome` to its close. Its
// reader runs on the supervisor goroutine, its writer on a goroutine of its
// own; the writer alone writes data frames, so frames never interleave.
type session struct {
	c       *Client
	id      uint64
	ws      *websocket.Conn
	welcome inFrame
	hb      time.Duration // heartbeat_ms
	grace   time.Duration // dead-peer grace, ≤ hb/2

	// Guarded by c.mu.
	outq   []outItem
	acks   *acker
	tokens float64   // send pacing bucket (welcome's send_rate)
	refill time.Time // last bucket refill

	wake       chan struct{} // cap 1: the writer has work
	stop       chan struct{} // closed when the reader ended
	writerDone chan struct{}
	lastRecv   atomic.Int64 // UnixNano of the last frame received
	intern     interner     // reader goroutine only
	deadPeer   atomic.Bool
}

type outItem struct {
	data []byte
	send bool // a `send` frame: paced by send_rate
}

var sessionIDs atomic.Uint64

// enqueueLocked queues a frame for the writer. REQUIRES: c.mu.
func (s *session) enqueueLocked(b []byte, send bool) {
	s.outq = append(s.outq, outItem{b, send})
	s.wakeWriter()
}

func (s *session) wakeWriter() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// errHandshake401 marks a WebSocket handshake refused with HTTP 401.
var errHandshake401 = &Error{Code: CodeUnauthorized, Status: 401, Message: "token refused at the WebSocket handshake"}

// supervise connects, runs sessions and reconnects with backoff until Close
// or a close that forbids reconnecting.
func (c *Client) supervise() {
	defer c.wg.Done()
	ctx := c.lifeCtx
	attempt := 0
	relogged := false
	c.mu.Lock()
	c.setStateLocked(StateEvent{State: StateConnecting})
	c.mu.Unlock()
	for {
		var code int
		var why error
		s, err := c.dial(ctx)
		if err == nil {
			attempt, relogged = 0, false
			select { // a RetryNow during this dial is spent
			case <-c.retryNow:
			default:
			}
			cerr := s.run()
			c.mu.Lock()
			c.sessionGoneLocked(s)
			c.mu.Unlock()
			code, why = cerr.Code, cerr
			c.opts.Logger.Debug("magpie: connection ended", "code", code, "err", cerr)
		} else {
			why = err
			var ce *CloseError
			if errors.As(err, &ce) {
				code = ce.Code
			}
		}
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		switch {
		case code == CloseUnauthorized || errors.Is(err, errHandshake401):
			if c.opts.Username == "" || c.opts.Password == "" || relogged {
				c.goOffline(code, fmt.Errorf("%w: %w", ErrUnauthorized, why))
				return
			}
			// Log in again, then reconnect at once with the new token.
			c.mu.Lock()
			c.token = ""
			c.mu.Unlock()
			relogged = true
		case code == CloseReplaced:
			c.goOffline(code, fmt.Errorf("%w: %w", ErrReplaced, why))
			return
		case isTerminal(err):
			var e *Error
			if errors.As(err, &e) && e.Code == CodeUnauthorized {
				why = fmt.Errorf("%w: %w", ErrUnauthorized, why) // login refused
			}
			c.goOffline(code, why)
			return
		case code == CloseRateExceeded:
			wait = c.opts.Backoff.Max
		default:
			wait = c.opts.Backoff.Delay(attempt)
			attempt++
		}
		c.mu.Lock()
		c.setStateLocked(StateEvent{State: StateReconnecting, Code: code, Err: why, Delay: wait, Attempt: attempt})
		c.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-c.retryNow:
				t.Stop()
			}
		}
	}
}

// isTerminal reports errors that reconnecting cannot cure: a refused login
// or a handshake refused for a reason other than the token.
func isTerminal(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Code == CodeUnauthorized || e.Code == CodeBadRequest
}

func (c *Client) goOffline(code int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running = false
	c.offlineErr = err
	c.failAll(err)
	c.setStateLocked(StateEvent{State: StateOffline, Code: code, Err: err})
}

// dial logs in if needed, opens the WebSocket, authenticates and waits for
// `welcome`; the returned session is online (installed as c.sess).
func (c *Client) dial(ctx context.Context) (*session, error) {
	c.mu.Lock()
	token, wsURL := c.token, c.wsURL
	c.mu.Unlock()
	if token == "" || wsURL == "" {
		// Bounded by Options.HTTPClient's timeout, not HandshakeTimeout:
		// the server hashes passwords slowly on purpose.
		res, err := Login(ctx, c.opts.HTTPClient, c.opts.Server, c.opts.Username, c.opts.Password)
		if err != nil {
			return nil, fmt.Errorf("magpie: login: %w", err)
		}
		token = res.Token
		if c.opts.WSURL == "" {
			wsURL = res.WSURL
		} else {
			wsURL = c.opts.WSURL
		}
		c.mu.Lock()
		c.token, c.wsURL, c.uid = token, wsURL, res.UID
		c.mu.Unlock()
	}
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, &Error{Code: CodeBadRequest, Message: "bad WebSocket URL: " + err.Error()}
	}
	if !c.opts.AuthFrame {
		q := u.Query()
		q.Set("token", token)
		if c.opts.Device != "" {
			q.Set("device", c.opts.Device)
		}
		u.RawQuery = q.Encode()
	}
	d := websocket.Dialer{
		NetDialContext:   c.opts.NetDial,
		HandshakeTimeout: c.opts.HandshakeTimeout,
		ReadBufferSize:   4096,
		WriteBufferSize:  4096,
	}
	dctx, cancel := context.WithTimeout(ctx, c.opts.HandshakeTimeout)
	defer cancel()
	ws, resp, err := d.DialContext(dctx, u.String(), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			switch resp.StatusCode {
			case http.StatusUnauthorized:
				return nil, errHandshake401
			case http.StatusBadRequest:
				return nil, &Error{Code: CodeBadRequest, Status: 400, Message: "WebSocket handshake refused (bad device?)"}
			}
			return nil, fmt.Errorf("magpie: WebSocket handshake: HTTP %d", resp.StatusCode)
		}
		return nil, fmt.Errorf("magpie: dial: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			ws.NetConn().Close()
		}
	}()
	deadline := time.Now().Add(c.opts.HandshakeTimeout)
	if c.opts.AuthFrame {
		ws.SetWriteDeadline(deadline)
		if err := ws.WriteMessage(websocket.TextMessage, mustJSON(reqFrame{Type: "auth", Token: token, Device: c.opts.Device})); err != nil {
			return nil, fmt.Errorf("magpie: writing auth: %w", err)
		}
	}
	ws.SetReadDeadline(deadline)
	stopCtx := context.AfterFunc(ctx, func() { ws.NetConn().Close() })
	defer stopCtx()
	var w inFrame
	for w.Type != "welcome" {
		typ, data, err := ws.ReadMessage()
		if err != nil {
			return nil, closeErr(err, false)
		}
		if typ != websocket.TextMessage {
			continue
		}
		w = inFrame{}
		if err := json.Unmarshal(data, &w); err != nil {
			return nil, fmt.Errorf("magpie: bad frame before welcome: %w", err)
		}
	}
	ws.SetReadDeadline(time.Time{})
	ws.SetWriteDeadline(time.Time{})

	s := &session{
		c:          c,
		id:         sessionIDs.Add(1),
		ws:         ws,
		welcome:    w,
		hb:         time.Duration(w.HeartbeatMS) * time.Millisecond,
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	if s.hb <= 0 {
		s.hb = 30 * time.Second
	}
	s.grace = s.hb / 2
	if g := c.opts.Grace; g > 0 && g < s.grace {
		s.grace = g
	}
	s.acks = newAcker(c.opts.ackPacing(&w))
	s.acks.suppress = c.opts.TestingSuppressAcks
	if w.SendRate > 0 {
		s.tokens = float64(w.SendRate)
		s.refill = time.Now()
	}
	s.lastRecv.Store(time.Now().UnixNano())

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	ok = true
	c.onlineLocked(s)
	return s, nil
}

// closeErr turns a read error into a *CloseError.
func closeErr(err error, dead bool) *CloseError {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return &CloseError{Code: ce.Code, Text: ce.Text}
	}
	return &CloseError{Code: CloseAbnormal, DeadPeer: dead, Err: err}
}

// run serves the session until the connection ends and returns why.
func (s *session) run() *CloseError {
	go s.writeLoop()
	err := s.readLoop()
	close(s.stop)
	<-s.writerDone
	s.ws.NetConn().Close()
	return closeErr(err, s.deadPeer.Load())
}

func (s *session) readLoop() error {
	var buf bytes.Buffer
	f := new(inFrame)
	for {
		typ, r, err := s.ws.NextReader()
		if err != nil {
			return err
		}
		s.lastRecv.Store(time.Now().UnixNano())
		if typ != websocket.TextMessage {
			continue // the server sends text only
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return err
		}
		s.process(buf.Bytes(), f)
	}
}

// process decodes one received text message into f (reused across calls:
// handlers that keep a frame copy it) and handles it.
func (s *session) process(data []byte, f *inFrame) {
	if decodeMsg(data, f, &s.intern) {
		s.c.handleFrame(s, f)
		return
	}
	*f = inFrame{}
	if err := json.Unmarshal(data, f); err != nil {
		s.c.opts.Logger.Warn("magpie: undecodable frame", "err", err)
		return
	}
	s.c.handleFrame(s, f)
}

// closeNormal starts the closing handshake with 1000; the reader returns
// when the echo arrives or after a second.
func (s *session) closeNormal() {
	deadline := time.Now().Add(time.Second)
	if err := s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(CloseNormal, ""), deadline); err != nil {
		s.ws.NetConn().Close()
		return
	}
	s.ws.NetConn().SetReadDeadline(deadline)
}

// writeLoop writes queued frames and acks, sends heartbeats and detects a
// dead peer (PROTOCOL §8).
func (s *session) writeLoop() {
	defer close(s.writerDone)
	c := s.c
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var (
		items    []outItem
		acks     []ack
		ackBuf   []byte
		lastSend = time.Now()
		pingAt   time.Time
	)
	write := func(b []byte) bool {
		s.ws.SetWriteDeadline(time.Now().Add(s.hb + s.grace))
		if err := s.ws.WriteMessage(websocket.TextMessage, b); err != nil {
			c.opts.Logger.Debug("magpie: write failed", "err", err)
			s.ws.NetConn().Close() // the reader sees it and ends the session
			return false
		}
		return true
	}
	for {
		now := time.Now()
		var blocked time.Time
		c.mu.Lock()
		items = items[:0]
		i := 0
		for ; i < len(s.outq); i++ {
			it := s.outq[i]
			if it.send && s.welcome.SendRate > 0 {
				if !s.takeToken(now) {
					blocked = now.Add(time.Duration(float64(time.Second) * (1 - s.tokens) / float64(s.welcome.SendRate)))
					break
				}
			}
			items = append(items, it)
		}
		n := copy(s.outq, s.outq[i:])
		clear(s.outq[n:])
		s.outq = s.outq[:n]
		acks = acks[:0]
		if next := s.acks.next(); !next.IsZero() && !next.After(now) {
			acks = s.acks.flush(acks)
		}
		nextAck := s.acks.next()
		c.mu.Unlock()

		for _, a := range acks {
			ackBuf = appendAck(ackBuf[:0], a.conv, a.seq)
			if !write(ackBuf) {
				return
			}
		}
		for j := range items {
			if !write(items[j].data) {
				return
			}
			items[j] = outItem{}
		}
		if len(acks) > 0 || len(items) > 0 {
			lastSend = now
		}

		// Heartbeat: ping after hb without sending, or after hb without
		// receiving (once per silence), so a dead peer is found in time.
		lastRecv := time.Unix(0, s.lastRecv.Load())
		waiting := pingAt.After(lastRecv)
		if now.Sub(lastSend) >= s.hb || (!waiting && now.Sub(lastRecv) >= s.hb) {
			if !write(pingFrame) {
				return
			}
			pingAt, lastSend, waiting = now, now, true
		}
		wakeAt := lastSend.Add(s.hb)
		if waiting {
			deadline := lastRecv.Add(s.hb + s.grace)
			if g := pingAt.Add(s.grace); g.After(deadline) {
				deadline = g
			}
			if !now.Before(deadline) {
				c.opts.Logger.Debug("magpie: dead peer", "silent", now.Sub(lastRecv))
				s.deadPeer.Store(true)
				s.ws.NetConn().Close()
				return
			}
			wakeAt = earliest(wakeAt, deadline)
		} else {
			wakeAt = earliest(wakeAt, lastRecv.Add(s.hb))
		}
		wakeAt = earliest(wakeAt, nextAck)
		wakeAt = earliest(wakeAt, blocked)
		timer.Reset(time.Until(wakeAt))
		select {
		case <-s.wake:
		case <-timer.C:
		case <-s.stop:
			return
		}
	}
}

// takeToken takes one send token from the pacing bucket. The bucket holds
// at most send_rate tokens, half the server's capacity, so sends queued
// behind a reconnect never reach the server faster than it allows (4029).
// REQUIRES: c.mu.
func (s *session) takeToken(now time.Time) bool {
	rate := float64(s.welcome.SendRate)
	s.tokens += now.Sub(s.refill).Seconds() * rate
	s.refill = now
	if s.tokens > rate {
		s.tokens = rate
	}
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

func earliest(a, b time.Time) time.Time {
	if b.IsZero() || (!a.IsZero() && a.Before(b)) {
		return a
	}
	return b
}
