package server

import (
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
