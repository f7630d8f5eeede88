package server

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestAuthFrameAndWelcome(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Heartbeat = 7 * time.Second; c.SendRate = 42 })
	uid, tok := ts.user("authf")
	c := dialWS(t, ts.url(""))
	c.send(map[string]any{"type": "auth", "token": tok, "device": "phone"})
	w := c.next()
	if w["type"] != "welcome" || num(w["uid"]) != uid || num(w["heartbeat_ms"]) != 7000 ||
		num(w["idle_timeout_ms"]) != 21000 || num(w["ack_timeout_ms"]) != 5000 ||
		num(w["send_rate"]) != 42 || num(w["max_body"]) != 16384 || num(w["version"]) != 2 || w["server_time"] == nil {
		t.Fatalf("welcome %v", w)
	}
	c.send(map[string]any{"type": "auth", "token": tok, "rid": "again"})
	if e := c.next(); e["type"] != "error" || e["code"] != "bad_request" || e["rid"] != "again" {
		t.Fatalf("second auth: %v", e)
	}
	// Same uid and device: the older connection is replaced (4004).
	c2 := dialWS(t, ts.url("token="+tok+"&device=phone"))
	if w := c2.next(); w["type"] != "welcome" {
		t.Fatal(w)
	}
	if code := c.waitClose(3 * time.Second); code != 4004 {
		t.Fatalf("want 4004, got %d", code)
	}
}

func TestUnauthorized(t *testing.T) {
	ts := startServer(t, nil)
	_, tok := ts.user("unauth")
	for name, frame := range map[string]string{
		"ping before auth": `{"type":"ping"}`,
		"malformed JSON":   `{"type":`,
		"bad token":        `{"type":"auth","token":"v1.1.2.xyz"}`,
		"empty token":      `{"type":"auth","token":""}`,
		"long device":      fmt.Sprintf(`{"type":"auth","token":%q,"device":"%065d"}`, tok, 0),
	} {
		t.Run(name, func(t *testing.T) {
			c := dialWS(t, ts.url(""))
			c.send(frame)
			if code := c.waitClose(3 * time.Second); code != 4001 {
				t.Fatalf("want 4001, got %d", code)
			}
		})
	}
	// Expired token at handshake: 401.
	expired := ts.signer.MintUntil(1, time.Now().Add(-time.Second).UnixMilli())
	r := dialRaw(t, ts.ws)
	fmt.Fprintf(r, "GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", expired)
	if h := r.readHTTP(); len(h) < 12 || h[9:12] != "401" {
		t.Fatalf("expired token: %q", h)
	}
}

func TestDirectChat(t *testing.T) {
	ts := startServer(t, nil)
	a, atok := ts.user("alice")
	b, btok := ts.user("bob")
	ca := login(t, ts, atok)
	ca2 := login(t, ts, atok) // alice's second device gets her own messages too
	cb := login(t, ts, btok)
	conv := fmt.Sprintf("d:%d:%d", a, b)

	ca.send(map[string]any{"type": "send", "cmid": "c-1", "to": b, "body": "hi <b>", "rid": "r1"})
	sent := ca.nextType("sent")
	if sent["cmid"] != "c-1" || sent["conv"] != conv || num(sent["seq"]) != 1 || sent["rid"] != "r1" || sent["ts"] == nil {
		t.Fatalf("sent %v", sent)
	}
	for _, c := range []*wsClient{cb, ca2} {
		m := c.nextType("msg")
		if m["conv"] != conv || num(m["seq"]) != 1 || num(m["from"]) != a || m["body"] != "hi <b>" ||
			m["kind"] != "text" || m["cmid"] != "c-1" || m["ts"] != sent["ts"] {
			t.Fatalf("msg %v", m)
		}
	}
	// Dedup: same cmid, other body → the original sent, nothing pushed.
	ca.send(map[string]any{"type": "send", "cmid": "c-1", "to": b, "body": "other"})
	if s := ca.nextType("sent"); num(s["seq"]) != 1 || s["ts"] != sent["ts"] {
		t.Fatalf("dup sent %v", s)
	}
	cb.send(map[string]any{"type": "ack", "conv": conv, "seq": 1})
	cb.send(map[string]any{"type": "convs", "rid": "cv"})
	cv := cb.nextType("convs")
	items := cv["items"].([]any)
	if len(items) != 1 || cv["rid"] != "cv" || num(cv["total_unread"]) != 1 {
		t.Fatalf("convs %v", cv)
	}
	it := items[0].(map[string]any)
	if it["conv"] != conv || num(it["peer"]) != a || num(it["last_seq"]) != 1 || num(it["read_seq"]) != 0 || num(it["unread"]) != 1 {
		t.Fatalf("conv item %v", it)
	}
	cb.send(map[string]any{"type": "read", "conv": conv, "seq": 99, "rid": "rd"})
	rd := cb.nextType("read")
	if num(rd["seq"]) != 1 || num(rd["unread"]) != 0 || num(rd["total_unread"]) != 0 || rd["rid"] != "rd" {
		t.Fatalf("read %v", rd)
	}
	cb.send(map[string]any{"type": "history", "rid": "h", "conv": conv})
	h := cb.nextType("history")
	msgs := h["messages"].([]any)
	if len(msgs) != 1 || h["more"] != false || h["conv"] != conv || msgs[0].(map[string]any)["body"] != "hi <b>" {
		t.Fatalf("history %v", h)
	}
	// Errors do not close the connection.
	for _, tc := range []struct {
		frame map[string]any
		code  string
	}{
		{map[string]any{"type": "send", "cmid": "c-2", "to": b, "body": "me"}, "bad_request"},
		{map[string]any{"type": "send", "cmid": "c-3", "to": 999, "body": "x"}, "not_found"},
		{map[string]any{"type": "send", "cmid": "c-4", "group": 999, "body": "x"}, "not_found"},
		{map[string]any{"type": "send", "cmid": "c-5", "to": a, "group": 1, "body": "x"}, "bad_request"},
		{map[string]any{"type": "history", "conv": "d:2:1"}, "bad_request"},
		{map[string]any{"type": "history", "conv": "d:1:999"}, "not_found"},
		{map[string]any{"type": "bogus"}, "bad_request"},
	} {
		cb.send(tc.frame)
		if e := cb.nextType("error"); e["code"] != tc.code {
			t.Fatalf("%v: got %v, want %s", tc.frame, e, tc.code)
		}
	}
	cb.send(map[string]any{"type": "ping", "rid": "p"})
	if p := cb.nextType("pong"); p["rid"] != "p" {
		t.Fatal(p)
	}
}

func TestGroupGaplessConcurrentSenders(t *testing.T) {
	ts := startServer(t, nil)
	const senders, per = 8, 50
	var toks []string
	var uids []uint64
	for i := 0; i < senders; i++ {
		u, tok := ts.user(fmt.Sprintf("g%d", i))
		uids = append(uids, u)
		toks = append(toks, tok)
	}
	owner := login(t, ts, toks[0])
	owner.send(map[string]any{"type": "group_create", "rid": "mk", "name": "team", "members": uids[1:]})
	g := owner.nextType("group")
	if num(g["count"]) != senders || g["rid"] != "mk" {
		t.Fatalf("group %v", g)
	}
	gid := num(g["group"])
	var wg sync.WaitGroup
	seqs := make(chan uint64, senders*per)
	for i := 0; i < senders; i++ {
		c := login(t, ts, toks[i])
		wg.Add(1)
		go func(i int, c *wsClient) {
			defer wg.Done()
			for j := 0; j < per; j++ {
				c.send(map[string]any{"type": "send", "cmid": fmt.Sprint(j), "group": gid, "body": "x"})
			}
			got := 0
			for got < per {
				m := c.next()
				switch m["type"] {
				case "sent":
					seqs <- num(m["seq"])
					got++
				case "msg":
					c.send(map[string]any{"type": "ack", "conv": m["conv"], "seq": m["seq"]})
				}
			}
		}(i, c)
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d twice", s)
		}
		seen[s] = true
	}
	for s := uint64(2); s <= senders*per+1; s++ { // seq 1 is the group's "created" (PROTOCOL §13)
		if !seen[s] {
			t.Fatalf("seq %d missing", s)
		}
	}
}

func TestResendScheduleAndAckTimeout(t *testing.T) {
	const T = 200 * time.Millisecond
	ts := startServer(t, func(c *Config) { c.AckTimeout = T; c.AckRetries = 2 })
	_, atok := ts.user("sender")
	b, btok := ts.user("lazy")
	ca := login(t, ts, atok)
	cb := login(t, ts, btok)
	ca.send(map[string]any{"type": "send", "cmid": "x", "to": b, "body": "hello"})
	first := cb.nextType("msg")
	t0 := time.Now()
	// Resends at T·1 and T·3, close 4005 at T·7 (R = 2).
	for k, want := range []time.Duration{T, 3 * T} {
		m := cb.nextType("msg")
		el := time.Since(t0)
		if m["seq"] != first["seq"] || m["ts"] != first["ts"] {
			t.Fatalf("resend %d differs: %v vs %v", k+1, m, first)
		}
		if el < want-20*time.Millisecond || el > want+150*time.Millisecond {
			t.Errorf("resend %d after %v, want %v", k+1, el, want)
		}
	}
	if code := cb.waitClose(3 * time.Second); code != 4005 {
		t.Fatalf("want 4005, got %d", code)
	}
	if el := time.Since(t0); el < 7*T-20*time.Millisecond || el > 7*T+200*time.Millisecond {
		t.Errorf("4005 after %v, want %v", el, 7*T)
	}
}

func TestSlowConsumerInflight(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxInflight = 3 })
	_, atok := ts.user("fast")
	b, btok := ts.user("slow")
	ca := login(t, ts, atok)
	cb := login(t, ts, btok)
	for i := 0; i < 4; i++ {
		ca.send(map[string]any{"type": "send", "cmid": fmt.Sprint(i), "to": b, "body": "x"})
		ca.nextType("sent")
	}
	if code := cb.waitClose(3 * time.Second); code != 4008 {
		t.Fatalf("want 4008, got %d", code)
	}
}

func TestSendRate(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.SendRate = 5 })
	b, _ := ts.user("target")
	_, atok := ts.user("spammer")
	ca := login(t, ts, atok)
	for i := 0; i < 11; i++ { // bucket holds 2R = 10
		ca.send(map[string]any{"type": "send", "cmid": fmt.Sprint(i), "to": b, "body": "x"})
	}
	if code := ca.waitClose(3 * time.Second); code != 4029 {
		t.Fatalf("want 4029, got %d", code)
	}
}

// A device replacement (4004) of a user's only connection leaves
// magpie_online_users at 1 while the newer connection is up and at 0 once
// it is gone: the replaced connection was never a second user.
func TestOnlineUsersAfterReplacement(t *testing.T) {
	ts := startServer(t, nil)
	_, tok := ts.user("alice")
	a := login(t, ts, tok+"&device=phone")
	b := login(t, ts, tok+"&device=phone")
	if code := a.waitClose(5 * time.Second); code != 4004 {
		t.Fatalf("first connection closed %d, want 4004", code)
	}
	// The replaced connection's OnClose has run once the gauge says 1.
	waitFor(t, func() bool { return ts.metric("magpie_online_connections") == 1 })
	if u := ts.metric("magpie_online_users"); u != 1 {
		t.Errorf("one user online, magpie_online_users = %v", u)
	}
	b.c.Close()
	waitFor(t, func() bool { return ts.metric("magpie_online_connections") == 0 })
	if u := ts.metric("magpie_online_users"); u != 0 {
		t.Errorf("nobody online, magpie_online_users = %v", u)
	}
}
