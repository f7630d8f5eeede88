package server

import (
	"fmt"
	"testing"
	"time"
)

// Tests of PROTOCOL §15 (typing).

// A typing goes to every connection of the other members, never to the
// typist's own connections, with the typist's uid; it gets no reply.
func TestTypingForward(t *testing.T) {
	for _, cache := range []int64{0, 1} { // 1 byte: every membership check reads the store (on a worker)
		t.Run(fmt.Sprintf("cache=%d", cache), func(t *testing.T) {
			ts := startServer(t, func(c *Config) {
				if cache != 0 {
					c.CacheSize = cache
				}
			})
			a, atok := ts.user("ta")
			b, btok := ts.user("tb")
			c, ctok := ts.user("tc")
			a1, a2 := login(t, ts, atok), login(t, ts, atok)
			b1, b2 := login(t, ts, btok), login(t, ts, btok)
			c1 := login(t, ts, ctok)
			conv := dconv(a, b)
			a1.send(map[string]any{"type": "typing", "rid": "t1", "conv": conv})
			for _, cl := range []*wsClient{b1, b2} {
				m := cl.nextOf("typing", conv)
				if num(m["uid"]) != a || len(m) != 3 {
					t.Fatalf("typing %v, want conv %s uid %d and nothing else", m, conv, a)
				}
			}
			a1.expectQuiet(150 * time.Millisecond) // no reply, no echo
			a2.expectQuiet(50 * time.Millisecond)
			c1.expectQuiet(50 * time.Millisecond)
			// In a group: every other member, the typist's other connection not.
			g := num(a1.request(map[string]any{"type": "group_create", "rid": "g", "name": "t", "members": []uint64{b, c}})["group"])
			gconv := fmt.Sprintf("g:%d", g)
			b1.send(map[string]any{"type": "typing", "conv": gconv})
			for _, cl := range []*wsClient{a1, a2, c1} {
				if m := cl.nextOf("typing", gconv); num(m["uid"]) != b {
					t.Fatalf("group typing %v", m)
				}
			}
			b2.expectNoType("typing", 150*time.Millisecond)
			if off := ts.metric("magpie_typing_checks_offloaded_total"); cache == 1 && off == 0 {
				t.Errorf("a 1-byte cache and no membership check on a worker")
			}
		})
	}
}

// Conv errors as for history, with the rid; a group above
// --receipt-members is accepted and dropped.
func TestTypingErrorsAndBound(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ReceiptMembers = 2 })
	a, atok := ts.user("ea")
	b, btok := ts.user("eb")
	c, ctok := ts.user("ec")
	ca, cb, cc := login(t, ts, atok), login(t, ts, btok), login(t, ts, ctok)
	cases := []struct {
		frame map[string]any
		code  string
	}{
		{map[string]any{"type": "typing", "rid": "1"}, "bad_request"},
		{map[string]any{"type": "typing", "rid": "2", "conv": "d:2:1"}, "bad_request"},
		{map[string]any{"type": "typing", "rid": "3", "conv": 7}, "bad_request"},
		{map[string]any{"type": "typing", "rid": "4", "conv": "g:999"}, "not_found"},
		{map[string]any{"type": "typing", "rid": "5", "conv": "d:1:999"}, "not_found"},
		{map[string]any{"type": "typing", "rid": "6", "conv": dconv(b, c)}, "not_member"},
	}
	for _, tc := range cases {
		wantError(t, ca.request(tc.frame), tc.code, tc.frame["rid"].(string))
	}
	small := num(ca.request(map[string]any{"type": "group_create", "rid": "s", "name": "s", "members": []uint64{b}})["group"])
	large := num(ca.request(map[string]any{"type": "group_create", "rid": "l", "name": "l", "members": []uint64{b, c}})["group"])
	wantError(t, cc.request(map[string]any{"type": "typing", "rid": "7", "conv": fmt.Sprintf("g:%d", small)}), "not_member", "7")
	// Larger than 2: no error, nothing forwarded.
	ca.send(map[string]any{"type": "typing", "rid": "8", "conv": fmt.Sprintf("g:%d", large)})
	ca.expectNoType("error", 200*time.Millisecond)
	cb.expectNoType("typing", 50*time.Millisecond)
	cc.expectNoType("typing", 50*time.Millisecond)
	ca.send(map[string]any{"type": "typing", "conv": fmt.Sprintf("g:%d", small)})
	if m := cb.nextOf("typing", ""); num(m["uid"]) != a || m["conv"] != fmt.Sprintf("g:%d", small) {
		t.Fatalf("small group typing %v", m)
	}
}

// At most one typing per (uid, conv) per second is forwarded, counting one
// that reached no connection; typing does not count toward --send-rate.
func TestTypingThrottle(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.SendRate = 1 })
	a, atok := ts.user("ha")
	b, btok := ts.user("hb")
	c, ctok := ts.user("hc")
	ca := login(t, ts, atok)
	conv, other := dconv(a, b), dconv(a, c)
	// b is offline: the first typing reaches nobody, and still counts.
	t0 := time.Now()
	ca.send(map[string]any{"type": "typing", "conv": conv})
	waitFor(t, func() bool { return ts.metric("magpie_typing_forwarded_total") == 1 })
	cb, cc := login(t, ts, btok), login(t, ts, ctok)
	// Well above --send-rate's bucket of 2: typing is not a send.
	for i := 0; i < 20; i++ {
		ca.send(map[string]any{"type": "typing", "conv": conv})
	}
	ca.send(map[string]any{"type": "typing", "conv": other}) // another conversation has its own second
	if m := cc.nextOf("typing", ""); m["conv"] != other {
		t.Fatalf("typing in the other conversation: %v", m)
	}
	if time.Since(t0) < time.Second {
		// Everything for conv so far came within a second of the first.
		cb.expectNoType("typing", 50*time.Millisecond)
	}
	ca.request(map[string]any{"type": "ping", "rid": "p"}) // the connection is open: no 4029
	if ts.metric("magpie_typing_throttled_total") < 1 {
		t.Fatalf("no typing throttled")
	}
	time.Sleep(time.Until(t0.Add(time.Second + 50*time.Millisecond))) // the rule's second must pass
	ca.send(map[string]any{"type": "typing", "conv": conv})
	if m := cb.nextOf("typing", ""); m["conv"] != conv || num(m["uid"]) != a {
		t.Fatalf("typing after a second: %v", m)
	}
	t1 := time.Now()
	ca.send(map[string]any{"type": "typing", "conv": conv})
	ca.request(map[string]any{"type": "ping", "rid": "p2"})
	if time.Since(t1) < 900*time.Millisecond {
		cb.expectNoType("typing", 100*time.Millisecond)
	}
}

// The throttle's table holds only the last two seconds.
func TestTypingThrottleBounded(t *testing.T) {
	var tt typingThrottle
	sec := int64(time.Second)
	for i := uint64(0); i < 1000; i++ {
		if !tt.allow(typKey{i, 1, 2}, 10*sec) {
			t.Fatal("first typing throttled")
		}
	}
	if tt.allow(typKey{5, 1, 2}, 10*sec+sec-1) {
		t.Fatal("a typing 1 ns short of a second after the last was forwarded")
	}
	if !tt.allow(typKey{5, 1, 2}, 11*sec) {
		t.Fatal("a typing a second after the last was throttled")
	}
	if n := tt.size(11 * sec); n != 1000 {
		t.Fatalf("size %d one second on, want 1000 (two generations)", n)
	}
	if n := tt.size(12*sec + 1); n != 1 {
		t.Fatalf("size %d two seconds on, want 1 (the one renewed at 11 s)", n)
	}
	if n := tt.size(20 * sec); n != 0 {
		t.Fatalf("size %d much later, want 0", n)
	}
}
