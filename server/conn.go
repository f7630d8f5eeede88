package server

import (
	"context"
	"slices"
	"time"

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
// connection's event loop (REQUIRES: owning event loop) except gc and lp,
// which are set before anything else can see the conn and never change,
// and the two wheel timers, which are safe from any goroutine.
type conn struct {
	gc     gnet.Conn
	lp     *loop
	idx    int32 // position in lp.conns
	state  uint8
	parser wsproto.Parser
	uid    uint64 // 0 until authenticated
	device string

	idle     wheel.Timer // auth deadline before auth, idle deadline after
	retx     wheel.Timer // ACK retransmission; armed while win is non-empty
	lastSeen int64       // wheel time of the last complete client frame
	retxAt   int64       // deadline retx is set to (0: disarmed)

	win    *window  // unacked pushes; nil while empty
	pend   [][]byte // frames queued for the end of the current loop task
	tokens float64  // send rate bucket
	tokAt  int64
}

// loop is the state of one gnet event loop. REQUIRES: owning event loop
// for every field but el.
type loop struct {
	srv   *Server
	el    gnet.EventLoop
	conns []*conn            // every conn of this loop
	users map[uint64][]*conn // authenticated conns of this loop by uid
	dirty []*conn            // conns with pend frames
	fb    frameBuf           // reply scratch
	arena []byte             // frames queued until the next flush
	st    loopStats          // hot-path counters (atomics: read by /metrics)

	spareWins []*window  // recycled ACK windows (see takeWindow)
	sparePend [][][]byte // recycled pend lists
	req       request    // decoder scratch
}

// handler is the gnet.EventHandler.
type handler struct {
	gnet.BuiltinEventEngine
	srv *Server
}

func (h *handler) OnBoot(eng gnet.Engine) gnet.Action {
	h.srv.booted(eng)
	return gnet.None
}

func (h *handler) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	s := h.srv
	s.m.connsAccepted.Inc()
	if s.draining.Load() {
		return nil, gnet.Close
	}
	s.m.connsOpen.Inc()
	lp := s.loopOf(gc.EventLoop())
	c := &conn{gc: gc, lp: lp, state: stHandshake}
	c.parser.MaxMessage = s.cfg.MaxMessage
	c.idx = int32(len(lp.conns))
	lp.conns = append(lp.conns, c)
	gc.SetContext(c)
	c.idle.Init(s.wheel, c.onIdleFire)
	c.retx.Init(s.wheel, c.onRetxFire)
	c.lastSeen = s.wheel.Precise() // accept time, until authenticated
	c.idle.Set(s.wheel.Now() + int64(s.cfg.AuthTimeout))
	return nil, gnet.None
}

func (h *handler) OnClose(gc gnet.Conn, _ error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok || c == nil {
		return gnet.None
	}
	s := h.srv
	s.m.connsOpen.Dec()
	c.state = stClosed
	c.idle.Stop()
	c.retx.Stop()
	lp := c.lp
	lp.giveWindow(c.win)
	c.win = nil
	c.pend = nil
	last := len(lp.conns) - 1
	lp.conns[c.idx] = lp.conns[last]
	lp.conns[c.idx].idx = c.idx
	lp.conns[last] = nil
	lp.conns = lp.conns[:last]
	if c.uid != 0 {
		lp.removeUser(c)
		s.offline(c)
	}
	return gnet.None
}

func (h *handler) OnTraffic(gc gnet.Conn) gnet.Action {
	c := gc.Context().(*conn)
	s := h.srv
	buf, _ := gc.Peek(-1)
	c.lp.st.bytesIn.Add(uint64(len(buf)))
	if c.state >= stClosing {
		_, _ = gc.Discard(len(buf))
		return gnet.None
	}
	off := 0
	if c.state == stHandshake {
		n := wsproto.RequestEnd(buf)
		if n == 0 {
			return gnet.None
		}
		if n < 0 {
			s.m.handshakes.WithLabelValues("431").Inc()
			_, _ = gc.Write(wsproto.AppendHTTPError(nil, 431, "request header fields too large"))
			c.state = stClosing
			return gnet.Close
		}
		var req wsproto.Request
		resp, status := s.upgrader.Upgrade(buf[:n], &req)
		s.countHandshake(status)
		_, _ = gc.Write(resp)
		if c.state != stHandshake {
			// The write failed (say, the peer reset) and gnet closed the
			// connection inside it: OnClose ran. Registering it now would
			// leave a ghost in the router whose writes go to a closed fd
			// that a new connection may already have been given.
			return gnet.None
		}
		if status != 101 {
			c.state = stClosing
			return gnet.Close
		}
		c.state = stOpen
		off = n
		if req.UID != 0 {
			c.authenticate(req.UID, req.Device)
		}
	}
	frames := 0
	for off < len(buf) && c.state == stOpen {
		f, n, err := c.parser.Next(buf[off:])
		if err != nil {
			if ce, ok := err.(*wsproto.CloseError); ok {
				c.closeWith(ce.Code, ce.Reason)
			} else {
				c.closeWith(wsproto.CloseProtocol, "protocol error")
			}
			break
		}
		if n == 0 {
			break
		}
		off += n
		frames++
		c.frame(f)
	}
	if frames > 0 {
		c.lp.st.framesIn.Add(uint64(frames))
		if c.uid != 0 && c.state == stOpen {
			// One precise clock read per read event (not per frame): the
			// coarse clock can lag after a stall, which would make the
			// idle deadline early.
			now := s.wheel.Precise()
			c.lastSeen = now
			c.idle.Set(now + int64(s.cfg.IdleTimeout))
		}
	}
	if off > 0 {
		// Never Discard(0): gnet treats n <= 0 as "everything buffered",
		// which would drop a frame whose first bytes arrived alone.
		_, _ = gc.Discard(off)
	}
	c.lp.flush()
	return gnet.None
}

// frame handles one complete frame. REQUIRES: owning event loop.
func (c *conn) frame(f wsproto.Frame) {
	switch f.Op {
	case wsproto.OpText:
		c.text(f.Payload)
	case wsproto.OpBinary:
		c.closeWith(wsproto.CloseUnsupported, "binary messages are not supported")
	case wsproto.OpPing:
		c.writeNow(wsproto.AppendFrame(c.lp.fb.start()[:0], wsproto.OpPong, f.Payload))
	case wsproto.OpPong:
	case wsproto.OpClose:
		code := f.CloseCode
		if code == wsproto.CloseNoStatus {
			code = wsproto.CloseNormal
		}
		c.closeWith(code, "")
	}
}

// writeNow writes one complete frame. REQUIRES: owning event loop.
func (c *conn) writeNow(frame []byte) {
	if c.state != stOpen {
		return
	}
	c.lp.st.framesOut.Add(1)
	c.lp.st.bytesOut.Add(uint64(len(frame)))
	_, _ = c.gc.Write(frame)
	c.checkOutbound()
}

// reply frames and writes a JSON payload built on c.lp.fb.start().
func (c *conn) reply(payload []byte) {
	c.writeNow(c.lp.fb.finish(payload))
}

func (c *conn) checkOutbound() {
	if c.state == stOpen && c.gc.OutboundBuffered() > c.lp.srv.cfg.MaxOutbound {
		c.closeWith(closeSlow, "slow consumer")
	}
}

// closeWith queues a close frame with code, stops taking frames, and
// closes TCP once the frame is written (at most 5 s later for a peer that
// does not read). REQUIRES: owning event loop.
func (c *conn) closeWith(code uint16, reason string) {
	if c.state != stOpen {
		return
	}
	s := c.lp.srv
	c.state = stClosing
	s.m.closed(code)
	c.pend = nil
	if c.win != nil {
		clear(c.win.ents)
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
func (c *conn) dropTCP() {
	if c.state >= stClosing {
		return
	}
	c.state = stClosing
	_ = c.gc.Close()
}

// onIdleFire runs on a wheel goroutine: hand off to the loop.
func (c *conn) onIdleFire() {
	_ = c.gc.EventLoop().Execute(context.Background(), gnet.RunnableFunc(c.onIdle))
}

func (c *conn) onRetxFire() {
	_ = c.gc.EventLoop().Execute(context.Background(), gnet.RunnableFunc(c.onRetx))
}

// onIdle handles the idle/auth/closing deadline. REQUIRES: owning event loop.
func (c *conn) onIdle(context.Context) error {
	s := c.lp.srv
	switch c.state {
	case stClosed:
		return nil
	case stClosing:
		if c.gc.OutboundBuffered() == 0 || s.wheel.Precise() >= c.lastSeen {
			_ = c.gc.Close()
			return nil
		}
		c.idle.Set(s.wheel.Now() + int64(100*time.Millisecond))
		return nil
	case stHandshake:
		if !c.authRearmed() {
			c.dropTCP() // slowloris: no response
		}
		return nil
	}
	if c.uid == 0 {
		if !c.authRearmed() {
			c.closeWith(closeAuthTimeout, "auth timeout")
		}
		return nil
	}
	deadline := c.lastSeen + int64(s.cfg.IdleTimeout)
	if s.wheel.Precise() < deadline {
		c.idle.Set(deadline) // traffic raced with the expiry
		return nil
	}
	c.closeWith(closeIdle, "idle timeout")
	return nil
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
	c.lp.addUser(c)
	s.online(c)
	c.reply(s.appendWelcome(c.lp.fb.start(), uid))
}

// allowSend takes a token from the send bucket.
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

func (lp *loop) addUser(c *conn) {
	lp.users[c.uid] = append(lp.users[c.uid], c)
}

// removeUser drops c from its uid's list. It builds a new list rather than
// editing in place: the loop may be walking the old one right now (deliver,
// broadcastRead), since a write that fails inside such a walk runs OnClose,
// hence removeUser, before it returns. In place, the walk would meet a nil
// hole and skip the connection moved into c's slot.
func (lp *loop) removeUser(c *conn) {
	list := lp.users[c.uid]
	i := slices.Index(list, c)
	switch {
	case i < 0:
	case len(list) == 1:
		delete(lp.users, c.uid)
	default:
		next := make([]*conn, 0, len(list)-1)
		lp.users[c.uid] = append(append(next, list[:i]...), list[i+1:]...)
	}
}

// errorReply writes an error frame. REQUIRES: owning event loop.
func (c *conn) errorReply(rid []byte, cmid string, code storage.Code, msg string) {
	c.lp.srv.m.errors.WithLabelValues(string(code)).Inc()
	c.reply(appendError(c.lp.fb.start(), rid, cmid, code, msg))
}
