package server_test

import (
	"net"
	"testing"
	"time"
)

// TestAbuseHalfOpenHandshakes: 10,000 connections that send half an
// upgrade request and then nothing do not stop a well-behaved client from
// connecting and chatting promptly.
func TestAbuseHalfOpenHandshakes(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 connections")
	}
	srv := fltStart(t, "", "--auth-timeout", "20s")
	a := fltRegister(t, srv, "abuse_a")
	b := fltRegister(t, srv, "abuse_b")

	const n = 10000
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		// Spread over source addresses: ephemeral ports of one pair are few.
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%200))}}
		c, err := d.Dial("tcp", srv.WSAddr)
		if err != nil {
			t.Fatalf("half-open %d: %v", i, err)
		}
		if _, err := c.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")); err != nil {
			t.Fatalf("half-open %d: %v", i, err)
		}
		conns = append(conns, c)
	}

	// A well-behaved pair still connects and chats, promptly.
	start := time.Now()
	ca := fltMustDial(t, srv, fltToken(a))
	cb := fltMustDial(t, srv, fltToken(b))
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("two connections took %v beside the half-open ones", el)
	}
	if err := ca.write(map[string]any{"type": "send", "cmid": "hello", "to": b, "body": "still here"}); err != nil {
		t.Fatal(err)
	}
	if f := fltNextType(t, cb, "msg"); f.str("body") != "still here" {
		t.Fatalf("got %v", f)
	}
	if f := fltNextType(t, ca, "sent"); f.str("cmid") != "hello" {
		t.Fatalf("got %v", f)
	}
}

// fltNextType waits up to 10 s for a frame of type typ.
func fltNextType(t testing.TB, c *fltConn, typ string) fltFrame {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := c.next(time.Until(deadline))
		if err != nil {
			t.Fatalf("waiting for %s: %v", typ, err)
		}
		if f.str("type") == typ {
			return f
		}
	}
}
