package wsproto

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// testServer is a test-only WebSocket server over net.Conn that drives the
// package the way the gnet server does: bytes accumulate in a buffer,
// RequestEnd/Upgrade handle the head, Parser.Next consumes frames from the
// front, and responses are built with the encoders. It echoes text
// messages, answers pings with pongs, closes 1003 on binary messages,
// echoes a client's close code (1000 when it had none) and closes with the
// parser's code on a violation. A goroutine per connection is fine here.
type testServer struct {
	t          testing.TB
	ln         net.Listener
	up         *Upgrader
	maxMessage int
	logs       chan *connLog
	wg         sync.WaitGroup
}

// connLog is what the server saw on one connection; it is sent on
// testServer.logs when the connection is done.
type connLog struct {
	status    int      // handshake status
	req       Request  // what the handshake learned
	messages  int      // data messages received
	fragments int      // non-final fragments absorbed
	pings     []string // ping payloads
	closeIn   uint16   // code of the client's close frame (CloseNoStatus when it had none)
	closeOut  uint16   // code the server sent
	violation string   // the parser's error, if any
}

func startTestServer(t testing.TB, up *Upgrader, maxMessage int) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, ln: ln, up: up, maxMessage: maxMessage, logs: make(chan *connLog, 16)}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *testServer) url(pathAndQuery string) string {
	return "ws://" + s.ln.Addr().String() + pathAndQuery
}

func (s *testServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			log := s.serve(c)
			select {
			case s.logs <- log:
			default:
				s.t.Errorf("connection log dropped: nobody is reading testServer.logs")
			}
		}()
	}
}

// nextLog waits for the next finished connection.
func (s *testServer) nextLog(t testing.TB) *connLog {
	t.Helper()
	select {
	case l := <-s.logs:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no connection finished within 10s")
		return nil
	}
}

// connBuf is the inbound buffer: what gnet's Peek/Discard offer.
type connBuf struct {
	c   net.Conn
	buf []byte
}

// fill reads once more from the connection, growing the buffer if full.
func (b *connBuf) fill() error {
	if len(b.buf) == cap(b.buf) {
		b.buf = append(make([]byte, 0, 2*cap(b.buf)+4096), b.buf...)
	}
	n, err := b.c.Read(b.buf[len(b.buf):cap(b.buf)])
	b.buf = b.buf[:len(b.buf)+n]
	if n > 0 {
		return nil
	}
	return err
}

// discard drops n bytes from the front, like gnet's Discard.
func (b *connBuf) discard(n int) { b.buf = b.buf[:copy(b.buf, b.buf[n:])] }

func (s *testServer) serve(c net.Conn) *connLog {
	defer c.Close()
	log := &connLog{}
	// A safety net against a stuck client, not synchronisation.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	in := &connBuf{c: c, buf: make([]byte, 0, 4096)}

	end := 0
	for end == 0 {
		if err := in.fill(); err != nil {
			return log
		}
		end = RequestEnd(in.buf)
	}
	if end < 0 {
		log.status = 431
		c.Write(AppendHTTPError(nil, 431, "request head too large"))
		return log
	}
	resp, status := s.up.Upgrade(in.buf[:end], &log.req)
	log.status = status
	if _, err := c.Write(resp); err != nil || status != 101 {
		return log
	}
	in.discard(end)

	p := Parser{MaxMessage: s.maxMessage}
	var out []byte
	for {
		f, n, err := p.Next(in.buf)
		if err != nil {
			var ce *CloseError
			if !errors.As(err, &ce) {
				s.t.Errorf("Next returned %T %v", err, err)
				return log
			}
			log.violation = ce.Reason
			s.closeWith(c, log, ce.Code)
			return log
		}
		if n == 0 {
			if err := in.fill(); err != nil {
				return log
			}
			continue
		}
		switch f.Op {
		case OpContinuation:
			log.fragments++
		case OpText:
			log.messages++
			out = AppendFrame(out[:0], OpText, f.Payload)
			if _, err := c.Write(out); err != nil {
				return log
			}
		case OpBinary:
			log.messages++
			s.closeWith(c, log, CloseUnsupported)
			return log
		case OpPing:
			log.pings = append(log.pings, string(f.Payload))
			out = AppendFrame(out[:0], OpPong, f.Payload)
			if _, err := c.Write(out); err != nil {
				return log
			}
		case OpPong:
		case OpClose:
			log.closeIn = f.CloseCode
			code := f.CloseCode
			if code == CloseNoStatus {
				code = CloseNormal
			}
			s.closeWith(c, log, code)
			return log
		}
		in.discard(n)
	}
}

// closeWith sends a close frame, half-closes, and drains what the client
// still sends until it closes too (bounded by the deadline), so the close
// frame is not lost to a TCP reset.
func (s *testServer) closeWith(c net.Conn, log *connLog, code uint16) {
	log.closeOut = code
	if _, err := c.Write(AppendClose(nil, code, "")); err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c)
}
