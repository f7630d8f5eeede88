package server_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/server"
)

// PROTOCOL §3: sessions.

func TestConformanceSession(t *testing.T) {
	t.Parallel()
	s := cfStart(t, "--heartbeat", "7s", "--ack-timeout", "3s", "--send-rate", "42", "--max-body", "1000")
	alice, atok := s.user(t, "alice")
	bob, btok := s.user(t, "bob")
	expired := s.signer.MintUntil(uint64(alice), time.Now().Add(-time.Second).UnixMilli())
	forged, _ := server.NewSigner([]byte("not-the-server-secret-000000000000"), time.Hour).Mint(uint64(alice))

	checkWelcome := func(t *testing.T, w map[string]any, uid int64) {
		t.Helper()
		now := time.Now().UnixMilli()
		if w["type"] != "welcome" || cfNum(w["version"]) != 2 || cfNum(w["uid"]) != uid ||
			cfNum(w["heartbeat_ms"]) != 7000 || cfNum(w["idle_timeout_ms"]) != 21000 ||
			cfNum(w["ack_timeout_ms"]) != 3000 || cfNum(w["send_rate"]) != 42 || cfNum(w["max_body"]) != 1000 {
			t.Fatalf("welcome %v", w)
		}
		if st := cfNum(w["server_time"]); st < now-5000 || st > now+1000 {
			t.Fatalf("server_time %d, now %d", st, now)
		}
	}
	t.Run("URL token", func(t *testing.T) {
		c := cfDial(t, s.url("token="+atok))
		checkWelcome(t, c.next(), alice)
	})
	t.Run("auth frame", func(t *testing.T) {
		c := cfDial(t, s.url(""))
		c.send(map[string]any{"type": "auth", "token": btok, "device": "d1"})
		checkWelcome(t, c.next(), bob)
		c.ping()
	})
	t.Run("auth frame after empty URL token", func(t *testing.T) {
		c := cfDial(t, s.url("token="))
		c.send(map[string]any{"type": "auth", "token": btok})
		checkWelcome(t, c.next(), bob)
	})
	t.Run("auth frame with rid", func(t *testing.T) {
		c := cfDial(t, s.url(""))
		c.send(map[string]any{"type": "auth", "token": btok, "rid": "a1"})
		checkWelcome(t, c.next(), bob)
	})
	t.Run("handshake statuses", func(t *testing.T) {
		for _, tc := range []struct {
			name, q string
			status  int
		}{
			{"bad token", "token=garbage", 401},
			{"expired token", "token=" + expired, 401},
			{"other secret", "token=" + forged, 401},
			{"device 65 bytes", "token=" + atok + "&device=" + strings.Repeat("d", 65), 400},
			{"device 65 bytes, no token", "device=" + strings.Repeat("d", 65), 400},
			{"device 64 bytes", "token=" + atok + "&device=" + strings.Repeat("d", 64), 101},
			{"empty device", "token=" + atok + "&device=", 101},
			{"empty token", "token=", 101},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := cfDialRaw(t, s.WSAddr)
				h := r.handshake(tc.q)
				if !strings.HasPrefix(h, fmt.Sprintf("HTTP/1.1 %d", tc.status)) {
					t.Fatalf("got %q, want %d", h, tc.status)
				}
			})
		}
	})
	t.Run("4001 before authentication", func(t *testing.T) {
		for _, tc := range []struct{ name, frame string }{
			{"bad token", `{"type":"auth","token":"garbage"}`},
			{"expired token", `{"type":"auth","token":"` + expired + `"}`},
			{"other secret", `{"type":"auth","token":"` + forged + `"}`},
			{"empty token", `{"type":"auth","token":""}`},
			{"no token", `{"type":"auth"}`},
			{"device 65 bytes", `{"type":"auth","token":"` + atok + `","device":"` + strings.Repeat("d", 65) + `"}`},
			{"ping", `{"type":"ping"}`},
			{"send", `{"type":"send","cmid":"x","to":1,"body":"x"}`},
			{"malformed JSON", `{"type":"auth",`},
			{"not an object", `[1,2]`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := cfDial(t, s.url(""))
				c.send(tc.frame)
				if code := c.waitClose(3 * time.Second); code != 4001 {
					t.Fatalf("close %d, want 4001", code)
				}
			})
		}
	})
	t.Run("device 64 bytes in auth frame", func(t *testing.T) {
		c := cfDial(t, s.url(""))
		c.send(map[string]any{"type": "auth", "token": atok, "device": strings.Repeat("e", 64)})
		checkWelcome(t, c.next(), alice)
	})
	t.Run("second auth is bad_request and the connection stays", func(t *testing.T) {
		c := s.connect(t, atok)
		c.send(map[string]any{"type": "auth", "token": atok, "rid": "again"})
		c.expectErr("bad_request", "again")
		c.send(map[string]any{"type": "auth", "token": "garbage"})
		c.expectErr("bad_request", "")
		c.ping()
	})
	t.Run("4004 replacement", func(t *testing.T) {
		old := s.connect(t, atok, "device=phone")
		other := s.connect(t, btok, "device=phone") // another uid, same device: no effect
		keep := s.connect(t, atok, "device=tablet")
		nodev := s.connect(t, atok)
		// The newer connection authenticates by auth frame.
		nw := cfDial(t, s.url(""))
		nw.send(map[string]any{"type": "auth", "token": atok, "device": "phone"})
		nw.expect("welcome")
		if code := old.waitClose(3 * time.Second); code != 4004 {
			t.Fatalf("older connection: close %d, want 4004", code)
		}
		for _, c := range []*cfConn{nw, other, keep, nodev} {
			c.ping()
		}
		// Replace the replacer again, by URL.
		nw2 := s.connect(t, atok, "device=phone")
		if code := nw.waitClose(3 * time.Second); code != 4004 {
			t.Fatalf("second replacement: close %d, want 4004", code)
		}
		nw2.ping()
	})
	t.Run("empty or absent device is each its own device", func(t *testing.T) {
		a := s.connect(t, atok, "device=")
		b := s.connect(t, atok, "device=")
		c := cfDial(t, s.url(""))
		c.send(map[string]any{"type": "auth", "token": atok, "device": ""})
		c.expect("welcome")
		d := cfDial(t, s.url(""))
		d.send(map[string]any{"type": "auth", "token": atok})
		d.expect("welcome")
		for _, x := range []*cfConn{a, b, c, d} {
			x.ping()
		}
	})
	t.Run("every connection of a uid receives its messages", func(t *testing.T) {
		var bs []*cfConn
		for i := 0; i < 4; i++ {
			bs = append(bs, s.connect(t, btok))
		}
		bs = append(bs, s.connect(t, btok, "device=x1"))
		a := s.connect(t, atok)
		sent := a.sendMsg("many-1", bob, 0, "to all of bob")
		for i, c := range bs {
			m := c.expect("msg")
			if m["conv"] != sent["conv"] || cfNum(m["seq"]) != cfNum(sent["seq"]) || m["body"] != "to all of bob" || cfNum(m["from"]) != alice {
				t.Fatalf("connection %d: %v", i, m)
			}
		}
	})
	t.Run("token expiry is checked only when authenticating", func(t *testing.T) {
		exp := time.Now().Add(400 * time.Millisecond)
		tok := s.signer.MintUntil(uint64(bob), exp.UnixMilli())
		c := s.connect(t, tok)
		time.Sleep(time.Until(exp) + 100*time.Millisecond) // let the token expire
		c.ping()
		r := cfDialRaw(t, s.WSAddr)
		if h := r.handshake("token=" + tok); !strings.HasPrefix(h, "HTTP/1.1 401") {
			t.Fatalf("expired token at handshake: %q", h)
		}
	})
	t.Run("client close is echoed", func(t *testing.T) {
		c := s.connect(t, atok)
		_ = c.WriteClose(4321, "bye")
		if code := c.waitClose(2 * time.Second); code != 4321 {
			t.Fatalf("echo %d, want 4321", code)
		}
	})
}
