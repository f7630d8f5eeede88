package wsproto

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coder "github.com/coder/websocket"
	gorilla "github.com/gorilla/websocket"
)

// interopMessage has multi-byte characters, so small fragments split some
// of them: UTF-8 must be validated on the assembled message only.
var interopMessage = strings.Repeat("héllo wörld — ☃ ", 40)

func interopUpgrader() *Upgrader {
	var calls atomic.Int32
	return testUpgrader(&calls)
}

func TestInteropGorilla(t *testing.T) {
	s := startTestServer(t, interopUpgrader(), 4096)
	// A 64-byte write buffer makes NextWriter emit a frame every 64 bytes.
	d := gorilla.Dialer{WriteBufferSize: 64, HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial(s.url("/ws?token=good&device=gorilla"), nil)
	if err != nil {
		t.Fatalf("dial: %v (response %v)", err, resp)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))

	// A fragmented text message written in small pieces, echoed whole.
	w, err := c.NextWriter(gorilla.TextMessage)
	if err != nil {
		t.Fatal(err)
	}
	for rest := interopMessage; rest != ""; {
		n := min(len(rest), 7)
		if _, err := w.Write([]byte(rest[:n])); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	typ, got, err := c.ReadMessage()
	if err != nil || typ != gorilla.TextMessage || string(got) != interopMessage {
		t.Fatalf("echo: type %d, %d bytes, %v", typ, len(got), err)
	}

	// Ping: the pong carries the same payload. Gorilla handles the pong
	// inside a read, so the next echo's read delivers it first.
	pongs := make(chan string, 1)
	c.SetPongHandler(func(data string) error { pongs <- data; return nil })
	if err := c.WriteControl(gorilla.PingMessage, []byte("ping-42"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(gorilla.TextMessage, []byte("after ping")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != "after ping" {
		t.Fatalf("second echo: %q %v", got, err)
	}
	select {
	case p := <-pongs:
		if p != "ping-42" {
			t.Errorf("pong payload %q, want %q", p, "ping-42")
		}
	default:
		t.Fatal("no pong before the echo of a later message")
	}

	// Clean close: the server echoes the code.
	if err := c.WriteControl(gorilla.CloseMessage, gorilla.FormatCloseMessage(4000, "bye"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.ReadMessage()
	var ce *gorilla.CloseError
	if !errors.As(err, &ce) || ce.Code != 4000 {
		t.Fatalf("after close: %v, want a close 4000 from the server", err)
	}
	c.Close()

	log := s.nextLog(t)
	if log.status != 101 || log.req.UID != 42 || log.req.Device != "gorilla" {
		t.Errorf("handshake: status %d, request %+v", log.status, log.req)
	}
	if log.fragments < 2 {
		t.Errorf("server absorbed %d fragments; the client did not fragment", log.fragments)
	}
	if log.messages != 2 || len(log.pings) != 1 || log.closeIn != 4000 || log.closeOut != 4000 || log.violation != "" {
		t.Errorf("server log %+v", log)
	}
}

func TestInteropGorillaLimits(t *testing.T) {
	const max = 1000
	s := startTestServer(t, interopUpgrader(), max)
	tests := []struct {
		name      string
		send      func(c *gorilla.Conn) error
		wantEcho  bool
		wantClose int
	}{
		{"exactly max", func(c *gorilla.Conn) error { return c.WriteMessage(gorilla.TextMessage, []byte(rep(max))) }, true, 0},
		{"max+1", func(c *gorilla.Conn) error { return c.WriteMessage(gorilla.TextMessage, []byte(rep(max+1))) }, false, 1009},
		{"exactly max, fragmented", func(c *gorilla.Conn) error { return writeFragmented(c, rep(max)) }, true, 0},
		{"max+1, fragmented", func(c *gorilla.Conn) error { return writeFragmented(c, rep(max+1)) }, false, 1009},
		{"invalid UTF-8", func(c *gorilla.Conn) error { return c.WriteMessage(gorilla.TextMessage, []byte("ok\xff")) }, false, 1007},
		{"binary", func(c *gorilla.Conn) error { return c.WriteMessage(gorilla.BinaryMessage, []byte{1, 2}) }, false, 1003},
		{"close without code", func(c *gorilla.Conn) error { return c.WriteMessage(gorilla.CloseMessage, nil) }, false, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := gorilla.Dialer{WriteBufferSize: 64, HandshakeTimeout: 5 * time.Second}
			c, _, err := d.Dial(s.url("/ws"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if err := tt.send(c); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.ReadMessage()
			if tt.wantEcho {
				if err != nil || len(got) != max {
					t.Fatalf("echo: %d bytes, %v", len(got), err)
				}
				c.WriteMessage(gorilla.CloseMessage, gorilla.FormatCloseMessage(1000, ""))
				c.ReadMessage()
			} else {
				var ce *gorilla.CloseError
				if !errors.As(err, &ce) || ce.Code != tt.wantClose {
					t.Fatalf("got %v, want close %d", err, tt.wantClose)
				}
			}
			c.Close()
			s.nextLog(t)
		})
	}
}

func writeFragmented(c *gorilla.Conn, msg string) error {
	w, err := c.NextWriter(gorilla.TextMessage)
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	return w.Close()
}

func TestInteropCoder(t *testing.T) {
	s := startTestServer(t, interopUpgrader(), 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := coder.Dial(ctx, s.url("/ws?token=good"), &coder.DialOptions{
		// Offer permessage-deflate: the server must decline it and the
		// client must carry on uncompressed.
		CompressionMode: coder.CompressionContextTakeover,
		HTTPHeader:      http.Header{"Origin": {"https://ok.example"}},
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.CloseNow()
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Errorf("server negotiated extensions %q", ext)
	}

	// coder's Ping needs a concurrent reader to see the pong, so one
	// goroutine reads for the whole session.
	type read struct {
		typ  coder.MessageType
		data string
		err  error
	}
	reads := make(chan read, 4)
	go func() {
		for {
			typ, data, err := c.Read(ctx)
			reads <- read{typ, string(data), err}
			if err != nil {
				return
			}
		}
	}()
	next := func() read {
		t.Helper()
		select {
		case r := <-reads:
			return r
		case <-ctx.Done():
			t.Fatal("timed out waiting for a read")
			return read{}
		}
	}

	// coder writes one frame per Write call on a message writer.
	w, err := c.Writer(ctx, coder.MessageText)
	if err != nil {
		t.Fatal(err)
	}
	for rest := interopMessage; rest != ""; {
		n := min(len(rest), 5)
		if _, err := w.Write([]byte(rest[:n])); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if r := next(); r.err != nil || r.typ != coder.MessageText || r.data != interopMessage {
		t.Fatalf("echo: type %v, %d bytes, %v", r.typ, len(r.data), r.err)
	}

	// coder's Ping returns only once a pong with its own payload arrives.
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}

	// Close returns nil only when the peer's close carries the same code.
	if err := c.Close(4002, "done"); err != nil {
		t.Fatalf("close: %v", err)
	}
	if r := next(); coder.CloseStatus(r.err) != 4002 {
		t.Errorf("reader ended with %v, want close 4002", r.err)
	}

	log := s.nextLog(t)
	if log.req.UID != 42 || log.req.Origin != "https://ok.example" {
		t.Errorf("handshake request %+v", log.req)
	}
	if log.fragments < 2 || log.messages != 1 || len(log.pings) != 1 || log.closeIn != 4002 || log.closeOut != 4002 {
		t.Errorf("server log %+v", log)
	}
}

// TestInteropRejections checks the handshake failures through real
// clients: they must see the HTTP status.
func TestInteropRejections(t *testing.T) {
	s := startTestServer(t, interopUpgrader(), 4096)
	tests := []struct {
		path   string
		origin string
		status int
	}{
		{"/nope", "", 404},
		{"/ws?token=bad", "", 401},
		{"/ws?device=" + rep(65), "", 400},
		{"/ws", "https://evil.example", 403},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.origin != "" {
			h.Set("Origin", tt.origin)
		}
		c, resp, err := gorilla.DefaultDialer.Dial(s.url(tt.path), h)
		if err == nil {
			c.Close()
			t.Errorf("%s: upgrade succeeded", tt.path)
		} else if resp == nil || resp.StatusCode != tt.status {
			t.Errorf("%s: %v, response %v, want status %d", tt.path, err, resp, tt.status)
		}
		if l := s.nextLog(t); l.status != tt.status {
			t.Errorf("%s: server status %d", tt.path, l.status)
		}
	}
	// A plain HTTP GET on /ws is not an upgrade: 400.
	resp, err := http.Get("http://" + s.ln.Addr().String() + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("plain GET: %d %v", resp.StatusCode, resp.Header)
	}
	s.nextLog(t)
}
