package server

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/panjf2000/gnet/v2"

	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wheel"
	"github.com/magpie-im/magpie/wsproto"
)

// Application close codes (PROTOCOL §11).
const (
	closeUnauthorized uint16 = 4001
	closeAuthTimeout  uint16 = 4002
	closeIdle         uint16 = 4003
	closeReplaced     uint16 = 4004
	closeAckTimeout   uint16 = 4005
	closeSlow         uint16 = 4008
	closeRate         uint16 = 4029
)

// Connection states.
const (
	stHandshake uint8 = iota // waiting for the HTTP upgrade request
	stOpen                   // WebSocket open (authenticated when uid != 0)
	stClosing                // close frame queued; no more frames in or out
	stClosed                 // OnClose ran
)

// conn is the per-connection state. Every field is owned by the
// connection's event loop (REQUIRES: owning event loop) except the rt*
// scratch (the router goroutine's) and gc, lp, uid and device: gc and lp are set before anything else can see the conn,
// uid and device before it enters the sessions index, and none changes
// afterwards, so the router and the workers may read them. The two wheel
// timers are safe from any goroutine.
type conn struct {
	gc    gnet.Conn
	lp    *loop
	idx   int32 // position in lp.conns
	state uint8
	// unstamped: the window's last pushes wait for their first-send time,
	// set when they are written (flushPend).
	unstamped bool
	parser    wsproto.Parser
	uid       uint64 // 0 until authenticated
	device    string

	idle     wheel.Timer // auth deadline before auth, idle deadline after
	retx     wheel.Timer // ACK retransmission; armed while win is non-empty
	lastSeen int64       // wheel time of the last complete client frame
	retxAt   int64       // deadline retx is set to (0: disarmed)

	// Router scratch: touched only by the router goroutine (router.add).
	rtMark         uint64
	rtHead, rtTail int32

	win    *window  // unacked pushes; nil while empty
	pend   [][]byte // frames queued for the end of the current loop task
	tokens float64  // send rate bucket
	tokAt  int64

	pres *connPres // presence subscription (presence.go); nil until the first presence_sub
}

// frame handles one complete frame. REQUIRES: owning event loop.
func (c *conn) frame(f wsproto.Frame) {
	switch f.Op {
	case wsproto.OpText:
		c.text(f.Payload)
	case wsproto.OpBinary:
		c.closeWith(wsproto.CloseUnsupported, "binary messages are not supported")
	case wsproto.OpPing:
		c.queue(c.lp.stash(wsproto.AppendFrame(c.lp.fb.start()[:0], wsproto.OpPong, f.Payload)))
	case wsproto.OpPong:
	case wsproto.OpClose:
		code := f.CloseCode
		if code == wsproto.CloseNoStatus {
			code = wsproto.CloseNormal
		}
		c.closeWith(code, "")
	}
}

// checkOutbound closes 4008 when gnet holds more than --max-outbound
// unwritten bytes. REQUIRES: owning event loop.
func (c *conn) checkOutbound() {
	if c.state == stOpen && c.gc.OutboundBuffered() > c.lp.srv.cfg.MaxOutbound {
		c.closeWith(closeSlow, "slow consumer")
	}
}

// closeWith writes a close frame with code, stops taking frames, and
// closes TCP once the frame is written (at most 5 s later for a peer that
// does not read). 4008 drops the frames queued and not yet handed to gnet
// (PROTOCOL §7: the peer does not read; push flushes first when the 4008
// is for --max-inflight); every other close goes out after them.
// REQUIRES: owning event loop.
func (c *conn) closeWith(code uint16, reason string) {
	if c.state != stOpen {
		return
	}
	s := c.lp.srv
	if code != closeSlow {
		c.flushPend()
		if c.state != stOpen { // the flush closed it (4008 or a failed write)
			return
		}
	}
	c.state = stClosing
	s.m.closed(code)
	clear(c.pend)
	c.pend = c.pend[:0]
	if c.win != nil {
		c.lp.giveWindow(c.win)
		c.win = nil
	}
	c.retx.Stop()
	_, _ = c.gc.Write(wsproto.AppendClose(c.lp.fb.start()[:0], code, reason))
	if c.gc.OutboundBuffered() == 0 {
		_ = c.gc.Close()
		return
	}
	// Wait for the peer to take the queued data, polling every 100 ms.
	c.lastSeen = s.wheel.Now() + int64(5*time.Second)
	c.idle.Set(s.wheel.Now() + int64(100*time.Millisecond))
}

// dropTCP closes without a close frame (handshake never completed).
// REQUIRES: owning event loop.
func (c *conn) dropTCP() {
	if c.state >= stClosing {
		return
	}
	c.state = stClosing
	_ = c.gc.Close()
}

// onIdleFire and onRetxFire run on a wheel goroutine: they hand the
// expiry to the loop (batched per tick), never waiting.
func (c *conn) onIdleFire() { c.lp.putExpiry(c, timerIdle) }

// onRetxFire: see onIdleFire. A wheel goroutine.
func (c *conn) onRetxFire() { c.lp.putExpiry(c, timerRetx) }

// onIdle handles the idle/auth/closing deadline. REQUIRES: owning event loop.
func (c *conn) onIdle() {
	s := c.lp.srv
	switch c.state {
	case stClosed:
		return
	case stClosing:
		if c.gc.OutboundBuffered() == 0 || s.wheel.Precise() >= c.lastSeen {
			_ = c.gc.Close()
			return
		}
		c.idle.Set(s.wheel.Now() + int64(100*time.Millisecond))
		return
	case stHandshake:
		if !c.authRearmed() {
			c.dropTCP() // slowloris: no response
		}
		return
	}
	if c.uid == 0 {
		if !c.authRearmed() {
			c.closeWith(closeAuthTimeout, "auth timeout")
		}
		return
	}
	deadline := c.lastSeen + int64(s.cfg.IdleTimeout)
	if s.wheel.Precise() < deadline {
		c.idle.Set(deadline) // traffic raced with the expiry
		return
	}
	c.closeWith(closeIdle, "idle timeout")
}

// authRearmed re-arms the auth deadline (accept + --auth-timeout) and
// reports true when it has not really passed: the deadline was set from the
// wheel's coarse Now, which lags the real time when its goroutine stalls
// (a loaded machine), and a timer must never fire early.
// REQUIRES: owning event loop; not authenticated (lastSeen is the accept time).
func (c *conn) authRearmed() bool {
	s := c.lp.srv
	if due := c.lastSeen + int64(s.cfg.AuthTimeout); s.wheel.Precise() < due {
		c.idle.Set(due)
		return true
	}
	return false
}

// authenticate binds the connection to uid and sends welcome.
// REQUIRES: owning event loop.
func (c *conn) authenticate(uid uint64, device string) {
	s := c.lp.srv
	c.uid = uid
	c.device = device
	c.lastSeen = s.wheel.Precise()
	c.idle.Set(c.lastSeen + int64(s.cfg.IdleTimeout))
	if s.cfg.SendRate > 0 {
		c.tokens = float64(2 * s.cfg.SendRate)
		c.tokAt = s.wheel.Precise()
	}
	s.online(c)
	c.reply(s.appendWelcome(c.lp.fb.start(), uid))
}

// allowSend takes a token from the send bucket. REQUIRES: owning event loop.
func (c *conn) allowSend() bool {
	rate := c.lp.srv.cfg.SendRate
	if rate == 0 {
		return true
	}
	now := c.lp.srv.wheel.Precise() // not the wall clock: a step back would drain the bucket
	c.tokens += float64(now-c.tokAt) * float64(rate) / 1e9
	c.tokAt = now
	if max := float64(2 * rate); c.tokens > max {
		c.tokens = max
	}
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// errorReply queues an error frame. REQUIRES: owning event loop.
func (c *conn) errorReply(rid []byte, cmid string, code storage.Code, msg string) {
	c.lp.srv.m.errors.WithLabelValues(string(code)).Inc()
	c.reply(appendError(c.lp.fb.start(), rid, cmid, code, msg))
}

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
	case tGroupCreate, tGroupJoin, tGroupLeave, tGroupMembers,
		tGroupAdd, tGroupRemove, tGroupRename: // the last three: PROTOCOL §13
		c.groupOp(r, rid)
	case tReceipts:
		c.receipts(r, rid)
	case tTyping:
		c.typing(r, rid)
	case tPresenceSub:
		c.presenceSub(r, rid)
	default:
		c.errorReply(rid, "", storage.BadRequest, "unknown type")
	}
}

// validRID reports whether rid is 1-64 bytes (PROTOCOL §4).
// Any goroutine.
func validRID(rid []byte) bool { return len(rid) >= 1 && len(rid) <= 64 }

// send validates a send frame and queues it for the committer.
// REQUIRES: owning event loop.
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
	case string(r.kind) == storage.KindSystem || strings.HasPrefix(cmid, storage.SystemCMIDPrefix):
		// PROTOCOL §13: only the server makes system messages; checked
		// before the stored-cmid rule.
		c.errorReply(rid, cmid, storage.BadRequest, "kind \"system\" and cmids beginning with \"sys:\" are the server's")
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
