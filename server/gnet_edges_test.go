package server

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// maskedFrame returns a masked client frame (FIN set) of op with payload.
func maskedFrame(op byte, payload []byte) []byte {
	key := [4]byte{1, 2, 3, 4}
	b := []byte{0x80 | op, 0x80 | byte(len(payload))}
	b = append(b, key[:]...)
	for i, x := range payload {
		b = append(b, x^key[i%4])
	}
	return b
}

// TestFrameSplitAcrossReads sends frames whose first bytes arrive alone:
// the server must keep them until the rest comes (gnet's Discard(0) would
// drop everything buffered, and the stream would then be misparsed).
func TestFrameSplitAcrossReads(t *testing.T) {
	ts := startServer(t, nil)
	_, tok := ts.user("alice")
	r := dialRaw(t, ts.ws)
	r.upgrade("token=" + tok)
	if op, _, err := r.readFrame(); err != nil || op != 0x1 {
		t.Fatalf("welcome: op %d, %v", op, err)
	}
	for _, cut := range []int{1, 2, 3, 6} {
		fr := maskedFrame(0x9, []byte("hello"))
		if _, err := r.Write(fr[:cut]); err != nil {
			t.Fatal(err)
		}
		// Not synchronisation: the pause makes the server read the first
		// bytes on their own (TCP_NODELAY is on by default in Go).
		time.Sleep(30 * time.Millisecond)
		if _, err := r.Write(fr[cut:]); err != nil {
			t.Fatal(err)
		}
		op, p, err := r.readFrame()
		if err != nil || op != 0xA || string(p) != "hello" {
			t.Fatalf("cut at %d: got op %d payload %q err %v, want pong \"hello\"", cut, op, p, err)
		}
	}
}

// TestHandshakeResetNoGhost resets connections right after their upgrade
// request with a URL token: writing the 101 then fails and gnet closes the
// connection inside the write (OnClose runs). The server must not go on to
// register it, or a ghost stays in the router (counted online forever) and
// later writes to a closed fd that a new connection may have been given.
func TestHandshakeResetNoGhost(t *testing.T) {
	ts := startServer(t, nil)
	_, tok := ts.user("alice")
	for i := 0; i < 100; i++ {
		c, err := net.Dial("tcp", ts.ws)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /ws?token=%s&device=d%d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"+
			"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", tok, i)
		_ = c.(*net.TCPConn).SetLinger(0) // close sends RST
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		open, online := ts.metric("magpie_connections_open"), ts.metric("magpie_online_connections")
		if open == 0 && online == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every connection was reset: %v open, %v online (ghosts)", open, online)
		}
		time.Sleep(20 * time.Millisecond) // polling metrics: no event to await
	}
}
