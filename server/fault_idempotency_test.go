package server_test

import (
	"fmt"
	"testing"
	"time"
)

// TestFaultIdempotentReconnect (issue 4, PROTOCOL §9): a client sends,
// drops the connection without reading sent, reconnects and sends the same
// cmid again: exactly one message is stored and the second sent names it.
// Half the drops come right after the write (the first send may be stored
// or not, or be committed while the resend arrives); the other half after
// the sent has reached the client's socket (stored for sure).
func TestFaultIdempotentReconnect(t *testing.T) {
	srv := fltStart(t, "", "--send-rate", "0")
	a, b := fltRegister(t, srv, "recon0"), fltRegister(t, srv, "recon1")
	setup := fltMustDial(t, srv, fltToken(a))
	gid := fltCreateGroup(t, setup, "recon", []uint64{b})
	setup.c.Close()
	led := newFltLedger(t)
	const n = 40
	for i := range n {
		at := &fltAttempt{from: a, cmid: fmt.Sprintf("rc-%d", i), body: fmt.Sprintf("reconnect %d", i)}
		req := map[string]any{"type": "send", "cmid": at.cmid, "body": at.body}
		if i%2 == 0 {
			at.to, at.conv = b, fltDirect(a, b)
			req["to"] = b
		} else {
			at.group, at.conv = gid, fltGroup(gid)
			req["group"] = gid
		}
		led.add(at)
		c1, err := fltDial(srv, fltToken(a))
		if err != nil {
			t.Fatal(err)
		}
		if err := c1.write(req); err != nil {
			t.Fatal(err)
		}
		if i%4 >= 2 { // let the sent arrive, unread by the application
			if f, err := c1.next(10 * time.Second); err != nil || f.str("type") != "sent" {
				t.Fatalf("first send %s: %v %v", at.cmid, f, err)
			}
		}
		c1.c.NetConn().Close() // no close frame: a dropped connection
		c2, err := fltDial(srv, fltToken(a))
		if err != nil {
			t.Fatal(err)
		}
		req["rid"] = "again"
		f, err := c2.request(req)
		if err != nil {
			t.Fatal(err)
		}
		if f.str("type") != "sent" || f.str("cmid") != at.cmid {
			t.Fatalf("resend of %s after reconnect: %v", at.cmid, f)
		}
		led.sent(at, f)
		c2.c.Close()
	}
	// Resent once more on one connection, all of them: still the originals.
	c := fltMustDial(t, srv, fltToken(a))
	for _, at := range led.snapshot() {
		req := map[string]any{"type": "send", "cmid": at.cmid, "body": "other body", "rid": "x"}
		if at.group != 0 {
			req["group"] = at.group
		} else {
			req["to"] = at.to
		}
		f, err := c.request(req)
		if err != nil {
			t.Fatal(err)
		}
		if f.str("type") != "sent" || f.num("seq") != at.seq || f.num("ts") != at.ts {
			t.Errorf("third send of %s: %v, want seq %d ts %d", at.cmid, f, at.seq, at.ts)
		}
	}
	idx := fltVerify(t, srv, led, map[string]uint64{fltDirect(a, b): a, fltGroup(gid): a})
	if len(idx) != n {
		t.Errorf("%d messages stored for %d cmids", len(idx), n)
	}
}

// TestFaultPipelinedBurst: one client writes 3,000 sends without reading
// and must get 3,000 sent on a connection that stays open. One commit batch
// then answers more than IOV_MAX (1024) frames to one connection, which
// used to close it (writev EINVAL inside gnet).
func TestFaultPipelinedBurst(t *testing.T) {
	srv := fltStart(t, "", "--send-rate", "0")
	a, b := fltRegister(t, srv, "burst0"), fltRegister(t, srv, "burst1")
	led := newFltLedger(t)
	const n = 3000
	bu := fltStartBurst(t, srv, led, a, b, n)
	fltFireAll(t, led, bu)
	for got := 0; got < n; {
		f, err := bu.c.next(20 * time.Second)
		if err != nil {
			code, cerr := bu.c.closeCode(time.Second)
			t.Fatalf("after %d of %d sent: %v (close code %d, %v)", got, n, err, code, cerr)
		}
		if f.str("type") != "sent" {
			t.Fatalf("after %d sent: %v", got, f)
		}
		led.sent(bu.sent[f.num("seq")-1], f)
		got++
	}
	fltVerify(t, srv, led, map[string]uint64{fltDirect(a, b): a})
}
