package server

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Every rule of PROTOCOL §1, against a real server over loopback.

func TestHandshakeStatuses(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Origins = []string{"http://good.example"} })
	_, tok := ts.user("hs")
	req := func(path, extra string) string {
		return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, extra)
	}
	up := "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	cases := []struct {
		name, req, status string
	}{
		{"other path", req("/other", up), "404"},
		{"not an upgrade", req("/ws", ""), "400"},
		{"bad origin", req("/ws", up+"Origin: http://evil.example\r\n"), "403"},
		{"device too long", req("/ws?device="+strings.Repeat("d", 65), up), "400"},
		{"bad token", req("/ws?token=v1.1.99999999999999.AAAA", up), "401"},
		{"order: path before upgrade", req("/nope", ""), "404"},
		{"order: origin before token", req("/ws?token=bad", up+"Origin: http://evil.example\r\n"), "403"},
		{"order: device before token", req("/ws?token=bad&device="+strings.Repeat("d", 65), up), "400"},
		{"good origin", req("/ws?token="+tok, up+"Origin: http://good.example\r\n"), "101"},
		{"no origin", req("/ws?token="+tok, up), "101"},
		{"empty token is none", req("/ws?token=", up), "101"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, ts.ws)
			if _, err := r.Write([]byte(tc.req)); err != nil {
				t.Fatal(err)
			}
			head := r.readHTTP()
			if !strings.HasPrefix(head, "HTTP/1.1 "+tc.status) {
				t.Fatalf("want %s, got %q", tc.status, head)
			}
		})
	}
}

func TestHandshakeInPieces(t *testing.T) {
	ts := startServer(t, nil)
	_, tok := ts.user("pieces")
	r := dialRaw(t, ts.ws)
	req := "GET /ws?token=" + tok + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	for i := 0; i < len(req); i += 7 {
		end := min(i+7, len(req))
		if _, err := r.Write([]byte(req[i:end])); err != nil {
			t.Fatal(err)
		}
	}
	if head := r.readHTTP(); !strings.HasPrefix(head, "HTTP/1.1 101") {
		t.Fatalf("got %q", head)
	}
	_, p, err := r.readFrame()
	if err != nil || !bytes.Contains(p, []byte(`"welcome"`)) {
		t.Fatalf("want welcome, got %q %v", p, err)
	}
}

func TestTransportViolations(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxMessage = 1000 })
	_, tok := ts.user("viol")
	cases := []struct {
		name string
		send func(r *rawConn)
		code int
	}{
		{"binary", func(r *rawConn) { r.frame(true, 2, []byte("x"), true) }, 1003},
		{"unmasked", func(r *rawConn) { r.frame(true, 1, []byte(`{"type":"ping"}`), false) }, 1002},
		{"reserved bit", func(r *rawConn) { r.frame(true, 1|0x40, []byte(`{"type":"ping"}`), true) }, 1002},
		{"unknown opcode", func(r *rawConn) { r.frame(true, 3, nil, true) }, 1002},
		{"fragmented control", func(r *rawConn) { r.frame(false, 9, nil, true) }, 1002},
		{"long control", func(r *rawConn) { r.frame(true, 9, make([]byte, 126), true) }, 1002},
		{"continuation without message", func(r *rawConn) { r.frame(true, 0, []byte("x"), true) }, 1002},
		{"data frame inside fragmented message", func(r *rawConn) {
			r.frame(false, 1, []byte("{"), true)
			r.frame(true, 1, []byte("{}"), true)
		}, 1002},
		{"invalid UTF-8", func(r *rawConn) { r.frame(true, 1, []byte{'"', 0xff, '"'}, true) }, 1007},
		{"too big", func(r *rawConn) { r.frame(true, 1, make([]byte, 1001), true) }, 1009},
		{"too big in fragments", func(r *rawConn) {
			r.frame(false, 1, bytes.Repeat([]byte(" "), 600), true)
			r.frame(true, 0, bytes.Repeat([]byte(" "), 401), true)
		}, 1009},
		{"client close without code", func(r *rawConn) { r.frame(true, 8, nil, true) }, 1000},
		{"client close 1000", func(r *rawConn) { r.frame(true, 8, []byte{0x03, 0xe8}, true) }, 1000},
		{"client close 4321 echoed", func(r *rawConn) { r.frame(true, 8, []byte{0x10, 0xe1}, true) }, 4321},
	}
	for _, authed := range []bool{false, true} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/authed=%v", tc.name, authed), func(t *testing.T) {
				r := dialRaw(t, ts.ws)
				if authed {
					r.upgrade("token=" + tok)
					if _, _, err := r.readFrame(); err != nil { // welcome
						t.Fatal(err)
					}
				} else {
					r.upgrade("")
				}
				tc.send(r)
				if code := r.expectClose(); code != tc.code {
					t.Fatalf("close code %d, want %d", code, tc.code)
				}
			})
		}
	}
}

func TestMaxMessageExactlyAccepted(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxMessage = 1000 })
	_, tok := ts.user("exact")
	r := dialRaw(t, ts.ws)
	r.upgrade("token=" + tok)
	if _, _, err := r.readFrame(); err != nil {
		t.Fatal(err)
	}
	msg := []byte(`{"type":"ping","rid":"x"}`)
	msg = append(msg, bytes.Repeat([]byte(" "), 1000-len(msg))...)
	r.frame(false, 1, msg[:500], true)
	r.frame(true, 9, []byte("hi"), true) // control frame between fragments
	r.frame(true, 0, msg[500:], true)
	op, p, err := r.readFrame()
	if err != nil || op != 10 || string(p) != "hi" {
		t.Fatalf("want pong \"hi\", got op %d %q %v", op, p, err)
	}
	op, p, err = r.readFrame()
	if err != nil || op != 1 || !bytes.Contains(p, []byte(`"pong"`)) || !bytes.Contains(p, []byte(`"rid":"x"`)) {
		t.Fatalf("want JSON pong with rid, got op %d %q %v", op, p, err)
	}
}

func TestSlowlorisAndAuthTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.AuthTimeout = 300 * time.Millisecond })
	// Half-sent handshake: closed without a response. The server's clock
	// starts when it accepts, after the dial began: start before dialing,
	// or an accept that beats time.Now() looks early.
	start := time.Now()
	r := dialRaw(t, ts.ws)
	r.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\n"))
	_ = r.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := r.Read(make([]byte, 100))
	if n != 0 || err == nil {
		t.Fatalf("want close without response, got %d bytes, %v", n, err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 300*time.Millisecond+400*time.Millisecond {
		t.Errorf("closed after %v, want 300ms (+ ≤100ms timer lateness + scheduling)", el)
	}
	// Upgraded but never authenticated: 4002.
	start = time.Now()
	r2 := dialRaw(t, ts.ws)
	r2.upgrade("")
	if code := r2.expectClose(); code != 4002 {
		t.Fatalf("want 4002, got %d", code)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("4002 after %v: early", el)
	}
}

func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Heartbeat = 100 * time.Millisecond; c.IdleTimeout = 300 * time.Millisecond })
	_, tok := ts.user("idle")
	before := time.Now() // the server's idle clock starts between before and start
	idle := login(t, ts, tok)
	start := time.Now()
	pinger := login(t, ts, tok)
	done := make(chan struct{})
	go func() {
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				pinger.c.WriteMessage(1, []byte(`{"type":"ping"}`))
			}
		}
	}()
	if code := idle.waitClose(2 * time.Second); code != 4003 {
		t.Fatalf("idle client: close %d, want 4003", code)
	}
	if el := time.Since(before); el < 300*time.Millisecond {
		t.Errorf("idle close after %v: early", el)
	}
	if el := time.Since(start); el > 300*time.Millisecond+100*time.Millisecond+200*time.Millisecond {
		t.Errorf("idle close after %v, want within idle timeout + 100 ms", el)
	}
	select {
	case <-pinger.Done:
		t.Fatal("pinging client was closed")
	default:
	}
	close(done)
}
