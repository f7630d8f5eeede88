package server

import "testing"

// TestBadAckErrorCopiesRID: an error frame copies the rid of the failed
// request (PROTOCOL §4), a malformed ack's too.
func TestBadAckErrorCopiesRID(t *testing.T) {
	ts := startServer(t, nil)
	_, tok := ts.user("alice")
	a := login(t, ts, tok)
	a.send(map[string]any{"type": "ack", "rid": "r-ack", "seq": 1})
	m := a.nextType("error")
	if m["code"] != "bad_request" || m["rid"] != "r-ack" {
		t.Fatalf("got %v, want bad_request with rid r-ack", m)
	}
}
