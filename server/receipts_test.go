package server

import (
	"fmt"
	"testing"
	"time"
)

// Tests of PROTOCOL §14 (read receipts). Each rule has a test that fails
// when the server breaks it.

// expectNoType reads frames for d and fails on one of type typ (other
// frames are allowed; used only to check that something does NOT happen).
func (c *wsClient) expectNoType(typ string, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		f, ok := c.Quiet(left)
		if !ok {
			return
		}
		if f.M["type"] == typ {
			c.t.Fatalf("unexpected %s frame %v", typ, f.M)
		}
	}
}

// request sends v (with its rid) and returns the reply carrying that rid,
// skipping (and acking) everything else.
func (c *wsClient) request(v map[string]any) map[string]any {
	c.t.Helper()
	c.send(v)
	for {
		m := c.next()
		if m["type"] == "msg" {
			c.send(map[string]any{"type": "ack", "conv": m["conv"], "seq": m["seq"]})
			continue
		}
		if m["rid"] == v["rid"] {
			return m
		}
	}
}

// sendMsg sends a message and waits for its sent.
func (c *wsClient) sendMsg(cmid string, to, group uint64) map[string]any {
	c.t.Helper()
	v := map[string]any{"type": "send", "rid": "s-" + cmid, "cmid": cmid, "body": "hello " + cmid}
	if group != 0 {
		v["group"] = group
	} else {
		v["to"] = to
	}
	m := c.request(v)
	if m["type"] != "sent" {
		c.t.Fatalf("send %s: %v", cmid, m)
	}
	return m
}

// nextOf skips frames until one of type typ with conv (acking pushes).
func (c *wsClient) nextOf(typ, conv string) map[string]any {
	c.t.Helper()
	for {
		m := c.next()
		if m["type"] == "msg" {
			c.send(map[string]any{"type": "ack", "conv": m["conv"], "seq": m["seq"]})
		}
		if m["type"] == typ && (conv == "" || m["conv"] == conv) {
			return m
		}
	}
}

func wantError(t *testing.T, m map[string]any, code, rid string) {
	t.Helper()
	if m["type"] != "error" || m["code"] != code || (rid != "" && m["rid"] != rid) {
		t.Fatalf("got %v, want error %s (rid %q)", m, code, rid)
	}
}

func dconv(a, b uint64) string { return fmt.Sprintf("d:%d:%d", min(a, b), max(a, b)) }

// A read that grows read_seq sends a receipt to every connection of the
// other member, not to the reader's own connections; a read that does
// not grow it, and the peer's own send, send none.
func TestReceiptDirect(t *testing.T) {
	ts := startServer(t, nil)
	a, atok := ts.user("ra")
	b, btok := ts.user("rb")
	a1, a2 := login(t, ts, atok), login(t, ts, atok)
	b1, b2 := login(t, ts, btok), login(t, ts, btok)
	conv := dconv(a, b)
	a1.sendMsg("m1", b, 0)
	a1.sendMsg("m2", b, 0)
	b1.send(map[string]any{"type": "read", "rid": "r1", "conv": conv, "seq": 1})
	for _, c := range []*wsClient{a1, a2} {
		r := c.nextOf("receipt", conv)
		if num(r["uid"]) != b || num(r["seq"]) != 1 || len(r) != 4 {
			t.Fatalf("receipt %v, want conv %s uid %d seq 1 and nothing else", r, conv, b)
		}
	}
	if m := b1.nextOf("read", conv); m["rid"] != "r1" || num(m["seq"]) != 1 {
		t.Fatalf("reader's read frame %v", m)
	}
	b2.nextOf("read", conv)
	// The same seq again, and a lower one: nothing grows, no receipt.
	b1.send(map[string]any{"type": "read", "conv": conv, "seq": 1})
	b2.send(map[string]any{"type": "read", "conv": conv, "seq": 0})
	b1.nextOf("read", conv)
	b1.nextOf("read", conv)
	// A seq above last_seq reads up to last_seq: the receipt says 2.
	b2.send(map[string]any{"type": "read", "conv": conv, "seq": 99})
	for _, c := range []*wsClient{a1, a2} {
		if r := c.nextOf("receipt", conv); num(r["seq"]) != 2 {
			t.Fatalf("receipt %v, want seq 2 (clamped to last_seq)", r)
		}
	}
	// b's own send moves b's read_seq silently: a gets the msg, no receipt.
	b1.sendMsg("m3", a, 0)
	a1.nextOf("msg", conv)
	a1.expectNoType("receipt", 300*time.Millisecond)
	a2.expectNoType("receipt", 50*time.Millisecond)
	// The reader's own connections never get a receipt of their own read.
	b1.expectNoType("receipt", 50*time.Millisecond)
	b2.expectNoType("receipt", 50*time.Millisecond)
	// a's read of b's message is a receipt to b's connections.
	a2.send(map[string]any{"type": "read", "conv": conv, "seq": 3})
	for _, c := range []*wsClient{b1, b2} {
		if r := c.nextOf("receipt", conv); num(r["uid"]) != a || num(r["seq"]) != 3 {
			t.Fatalf("receipt to b %v", r)
		}
	}
}

// Group receipts go to every connection of every other member in groups
// of at most --receipt-members members, and nowhere in larger groups.
func TestReceiptGroupBound(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ReceiptMembers = 3 })
	var uids []uint64
	var cl []*wsClient
	for i := 0; i < 4; i++ {
		u, tok := ts.user(fmt.Sprintf("g%d", i))
		uids = append(uids, u)
		cl = append(cl, login(t, ts, tok))
	}
	small := num(cl[0].request(map[string]any{"type": "group_create", "rid": "c1", "name": "small", "members": uids[1:3]})["group"])
	large := num(cl[0].request(map[string]any{"type": "group_create", "rid": "c2", "name": "large", "members": uids[1:]})["group"])
	sconv, lconv := fmt.Sprintf("g:%d", small), fmt.Sprintf("g:%d", large)
	cl[0].sendMsg("s1", 0, small)
	cl[0].sendMsg("l1", 0, large)
	cl[1].send(map[string]any{"type": "read", "conv": sconv, "seq": 1})
	for _, i := range []int{0, 2} {
		if r := cl[i].nextOf("receipt", sconv); num(r["uid"]) != uids[1] || num(r["seq"]) != 1 {
			t.Fatalf("member %d: receipt %v", i, r)
		}
	}
	cl[3].expectNoType("receipt", 100*time.Millisecond) // not a member of the small group
	// 4 members > 3: the read works, no receipt anywhere.
	cl[1].send(map[string]any{"type": "read", "rid": "rl", "conv": lconv, "seq": 1})
	if m := cl[1].nextOf("read", lconv); num(m["seq"]) != 1 {
		t.Fatalf("read in the large group: %v", m)
	}
	for _, i := range []int{0, 2, 3} {
		cl[i].expectNoType("receipt", 200*time.Millisecond)
	}
}

// --receipt-members 0 turns group receipts off; direct ones stay.
func TestReceiptMembersZero(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ReceiptMembers = 0 })
	a, atok := ts.user("za")
	b, btok := ts.user("zb")
	ca, cb := login(t, ts, atok), login(t, ts, btok)
	g := num(ca.request(map[string]any{"type": "group_create", "rid": "c", "name": "z", "members": []uint64{b}})["group"])
	gconv := fmt.Sprintf("g:%d", g)
	ca.sendMsg("g1", 0, g)
	ca.sendMsg("d1", b, 0)
	cb.send(map[string]any{"type": "read", "conv": gconv, "seq": 1})
	cb.nextOf("read", gconv)
	cb.send(map[string]any{"type": "read", "conv": dconv(a, b), "seq": 1})
	if r := ca.nextOf("receipt", ""); r["conv"] != dconv(a, b) {
		t.Fatalf("first receipt %v, want the direct conversation's only", r)
	}
	if m := cb.request(map[string]any{"type": "receipts", "rid": "q", "conv": gconv}); m["code"] != "forbidden" {
		t.Fatalf("receipts of a group with --receipt-members 0: %v", m)
	}
}

// convs direct items carry peer_read_seq; receipts answers every other
// member ascending, with the checks in order.
func TestReceiptsRequest(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ReceiptMembers = 3 })
	a, atok := ts.user("qa")
	b, btok := ts.user("qb")
	c, ctok := ts.user("qc")
	d, dtok := ts.user("qd")
	ca, cb, cc, cd := login(t, ts, atok), login(t, ts, btok), login(t, ts, ctok), login(t, ts, dtok)
	_ = cd
	dc := dconv(a, b)
	// A direct conversation without messages: the peer, at 0.
	if m := ca.request(map[string]any{"type": "receipts", "rid": "e", "conv": dc}); fmt.Sprint(m["items"]) != fmt.Sprintf("[map[read_seq:0 uid:%d]]", b) || m["conv"] != dc {
		t.Fatalf("empty direct conversation: %v", m)
	}
	ca.sendMsg("1", b, 0)
	ca.sendMsg("2", b, 0)
	cb.request(map[string]any{"type": "read", "rid": "r", "conv": dc, "seq": 1})
	conv := ca.request(map[string]any{"type": "convs", "rid": "cv"})
	items, _ := conv["items"].([]any)
	if len(items) != 1 || num(items[0].(map[string]any)["peer_read_seq"]) != 1 {
		t.Fatalf("convs: %v, want peer_read_seq 1", conv)
	}
	if it := cb.request(map[string]any{"type": "convs", "rid": "cv"})["items"].([]any)[0].(map[string]any); num(it["peer_read_seq"]) != 2 {
		t.Fatalf("b's convs item %v, want peer_read_seq 2 (a's sends moved a's mark)", it)
	}
	if m := ca.request(map[string]any{"type": "receipts", "rid": "d", "conv": dc}); fmt.Sprint(m["items"]) != fmt.Sprintf("[map[read_seq:1 uid:%d]]", b) {
		t.Fatalf("direct: %v", m)
	}
	g := num(cc.request(map[string]any{"type": "group_create", "rid": "c", "name": "q", "members": []uint64{b, a}})["group"])
	gc := fmt.Sprintf("g:%d", g)
	seq := num(cb.sendMsg("g1", 0, g)["seq"]) // b's mark moves to it
	cc.request(map[string]any{"type": "read", "rid": "r", "conv": gc, "seq": seq})
	if m := cd.request(map[string]any{"type": "receipts", "rid": "g", "conv": gc}); m["code"] != "not_member" {
		t.Fatalf("non-member: %v", m)
	}
	want := fmt.Sprintf("[map[read_seq:%d uid:%d] map[read_seq:%d uid:%d]]", seq, b, seq, c)
	if m := ca.request(map[string]any{"type": "receipts", "rid": "g", "conv": gc}); fmt.Sprint(m["items"]) != want || m["conv"] != gc {
		t.Fatalf("group from a: %v, want items %s", m, want)
	}
	// Four members > 3: forbidden, but only after the conv checks.
	big := num(cc.request(map[string]any{"type": "group_create", "rid": "c4", "name": "q4", "members": []uint64{a, b, d}})["group"])
	wantError(t, ca.request(map[string]any{"type": "receipts", "rid": "f", "conv": fmt.Sprintf("g:%d", big)}), "forbidden", "f")
	cases := []struct{ conv, code string }{
		{"g:0", "bad_request"}, {"x:1", "bad_request"}, {fmt.Sprintf("d:%d:%d", b, a), "bad_request"},
		{"g:9999", "not_found"}, {"d:1:9999", "not_found"}, {fmt.Sprintf("d:%d:%d", c, d), "not_member"},
	}
	for i, tc := range cases {
		rid := fmt.Sprintf("e%d", i)
		wantError(t, ca.request(map[string]any{"type": "receipts", "rid": rid, "conv": tc.conv}), tc.code, rid)
	}
	wantError(t, ca.request(map[string]any{"type": "receipts", "rid": "nc"}), "bad_request", "nc")
}

// Receipts, typing and presence pushes are not acked, not resent and not
// stored: with a short --ack-timeout nothing comes again and the
// connection stays open (an unacked push would be resent, then close
// 4005), and history and last_seq do not change.
func TestEphemeralFramesNotAcked(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.AckTimeout = 100 * time.Millisecond
		c.AckRetries = 1
		c.PresenceGrace = 0
	})
	a, atok := ts.user("na")
	b, btok := ts.user("nb")
	ca, cb := login(t, ts, atok), login(t, ts, btok)
	conv := dconv(a, b)
	cb.sendMsg("m1", a, 0)
	ca.nextOf("msg", conv) // acked by nextOf
	ca.request(map[string]any{"type": "presence_sub", "rid": "p", "uids": []uint64{b}})
	cb.request(map[string]any{"type": "presence_sub", "rid": "p", "uids": []uint64{a}})
	ca.send(map[string]any{"type": "read", "conv": conv, "seq": 1})
	cb.nextOf("receipt", conv)
	ca.send(map[string]any{"type": "typing", "conv": conv})
	cb.nextOf("typing", conv)
	ca2 := login(t, ts, atok)
	ca.c.Close() // a keeps ca2: no change for cb
	ca2.c.Close()
	cb.nextOf("presence", "") // a offline (grace 0)
	// Three ack timeouts and more: nothing again, still open.
	for _, typ := range []string{"receipt", "typing", "presence"} {
		cb.expectNoType(typ, 150*time.Millisecond)
	}
	if m := cb.request(map[string]any{"type": "ping", "rid": "open"}); m["type"] != "pong" {
		t.Fatalf("ping after the frames: %v", m)
	}
	h := cb.request(map[string]any{"type": "history", "rid": "h", "conv": conv})
	if msgs, _ := h["messages"].([]any); len(msgs) != 1 {
		t.Fatalf("history %v: want the one message only", h)
	}
}
