package server

import (
	"github.com/panjf2000/gnet/v2"

	"github.com/magpie-im/magpie/wsproto"
)

// handler is the gnet.EventHandler. Every callback runs on the event loop
// that owns the connection (REQUIRES: owning event loop), except OnBoot,
// which gnet calls once before any loop runs.
type handler struct {
	gnet.BuiltinEventEngine
	srv *Server
}

// OnBoot runs once on the goroutine of gnet.Run, before any loop.
func (h *handler) OnBoot(eng gnet.Engine) gnet.Action {
	return h.srv.booted(eng)
}

// OnOpen sets up a new connection (or registers a loop's wake socket).
// REQUIRES: owning event loop.
func (h *handler) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	s := h.srv
	if w, ok := gc.Context().(*wakeTag); ok {
		w.lp.wakeOK.Store(true)
		s.wakeConns.Add(1)
		return nil, gnet.None
	}
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

// OnClose releases a connection: timers, window, index.
// REQUIRES: owning event loop.
func (h *handler) OnClose(gc gnet.Conn, _ error) gnet.Action {
	s := h.srv
	switch x := gc.Context().(type) {
	case *wakeTag:
		x.lp.wakeOK.Store(false)
		s.wakeConns.Add(-1)
		return gnet.None
	case *conn:
		c := x
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
		c.presClose()
		if c.uid != 0 {
			s.offline(c)
		}
	}
	return gnet.None
}

// OnTraffic reads what arrived: the upgrade request, then frames. Replies
// are queued and flushed at the end. On the wake socket it runs one drain
// turn of the loop's inbox instead.
// REQUIRES: owning event loop.
func (h *handler) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		_, _ = gc.Discard(-1) // the wake byte(s)
		if w, ok := gc.Context().(*wakeTag); ok {
			w.lp.drain()
		}
		return gnet.None
	}
	s := h.srv
	buf, _ := gc.Peek(-1)
	if c.lp.draining {
		c.lp.reads++ // reads between drain turns size the next turn
	}
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
		// The HTTP response is the connection's first output: nothing can
		// be queued before it, so it is written directly.
		_, _ = gc.Write(resp)
		if c.state != stHandshake {
			// The write failed (say, the peer reset) and gnet closed the
			// connection inside it: OnClose ran. Registering it now would
			// leave a ghost in the index whose writes go to a closed fd
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
