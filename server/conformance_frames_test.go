package server_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// PROTOCOL §4 (frames), §5 (conversation ids) and §10 (unread counts).

const cfQuiet = 150 * time.Millisecond

func TestConformanceFrames(t *testing.T) {
	t.Parallel()
	s := cfStart(t, "--max-body", "100")
	A, atok := s.user(t, "fa")
	B, btok := s.user(t, "fb")
	C, ctok := s.user(t, "fc")
	D, dtok := s.user(t, "fd")
	_ = dtok

	t.Run("rid rules", func(t *testing.T) {
		a := s.connect(t, atok)
		a.name = "A"
		good := []string{"r", strings.Repeat("r", 64), strings.Repeat("€", 21) + "x"}
		for _, rid := range good {
			a.send(map[string]any{"type": "ping", "rid": rid})
			if p := a.expect("pong"); p["rid"] != rid {
				t.Fatalf("pong rid %v, want %q", p["rid"], rid)
			}
		}
		bad := []string{`""`, `"` + strings.Repeat("r", 65) + `"`, `"` + strings.Repeat("€", 22) + `"`, `5`, `true`, `{}`, `["r"]`}
		frames := []string{
			`{"type":"ping","rid":%s}`,
			`{"type":"convs","rid":%s}`,
			fmt.Sprintf(`{"type":"history","conv":%q,"rid":%%s}`, cfD(A, B)),
			fmt.Sprintf(`{"type":"read","conv":%q,"seq":1,"rid":%%s}`, cfD(A, B)),
			`{"type":"group_join","group":1,"rid":%s}`,
			`{"type":"group_create","name":"x","rid":%s}`,
			fmt.Sprintf(`{"type":"ack","conv":%q,"seq":1,"rid":%%s}`, cfD(A, B)),
			`{"type":"nonsense","rid":%s}`,
		}
		for _, f := range frames {
			for _, rid := range bad {
				a.send(fmt.Sprintf(f, rid))
				m := a.next()
				if m["type"] != "error" || m["code"] != "bad_request" {
					t.Errorf("%s: got %v, want error bad_request", fmt.Sprintf(f, rid), m)
				}
				if _, has := m["rid"]; has {
					t.Errorf("%s: error carries rid: %v", fmt.Sprintf(f, rid), m)
				}
			}
		}
		// A send with a bad rid fails (nothing stored) and its error
		// carries the cmid.
		b := s.connect(t, btok)
		a.send(fmt.Sprintf(`{"type":"send","cmid":"badrid-1","to":%d,"body":"x","rid":""}`, B))
		e := a.expectErr("bad_request", "")
		if e["cmid"] != "badrid-1" {
			t.Errorf("error of a send with a bad rid: cmid %v, want badrid-1", e["cmid"])
		}
		a.sendMsg("badrid-1", B, 0, "second try")
		if m := b.expect("msg"); m["body"] != "second try" {
			t.Fatalf("msg %v: the send with a bad rid was stored", m)
		}
		a.ping()
	})

	t.Run("replies copy rid", func(t *testing.T) {
		a := s.connect(t, atok)
		a2 := s.connect(t, atok)
		b := s.connect(t, btok)
		a.send(map[string]any{"type": "ping", "rid": "p1"})
		cfCheckRID(t, a.expect("pong"), "p1")
		a.send(map[string]any{"type": "ping"})
		cfCheckRID(t, a.expect("pong"), "")

		a.send(map[string]any{"type": "send", "rid": "s1", "cmid": "rid-1", "to": B, "body": "x"})
		cfCheckRID(t, a.expect("sent"), "s1")
		cfCheckRID(t, b.expect("msg"), "")
		cfCheckRID(t, a2.expect("msg"), "")
		a.send(map[string]any{"type": "send", "rid": "s2", "cmid": "rid-1", "to": B, "body": "x"}) // dedup
		cfCheckRID(t, a.expect("sent"), "s2")
		a.send(map[string]any{"type": "send", "cmid": "rid-2", "to": B, "body": "y"})
		cfCheckRID(t, a.expect("sent"), "")
		cfCheckRID(t, b.expect("msg"), "")
		cfCheckRID(t, a2.expect("msg"), "")

		a.send(map[string]any{"type": "convs", "rid": "c1"})
		cfCheckRID(t, a.expect("convs"), "c1")
		a.send(map[string]any{"type": "convs"})
		cfCheckRID(t, a.expect("convs"), "")
		a.send(map[string]any{"type": "history", "rid": "h1", "conv": cfD(A, B)})
		cfCheckRID(t, a.expect("history"), "h1")
		a.send(map[string]any{"type": "history", "conv": cfD(A, B)})
		cfCheckRID(t, a.expect("history"), "")

		g := a.group(map[string]any{"type": "group_create", "rid": "g1", "name": "ridgroup", "public": true}, "created")
		cfCheckRID(t, g, "g1")
		a2.expectSys("created")
		gid := cfNum(g["group"])
		cfCheckRID(t, b.group(map[string]any{"type": "group_join", "rid": "g2", "group": gid}, "joined"), "g2")
		cfCheckRID(t, b.group(map[string]any{"type": "group_members", "rid": "g3", "group": gid}, ""), "g3")
		cfCheckRID(t, b.group(map[string]any{"type": "group_leave", "rid": "g4", "group": gid}, "left"), "g4")
		cfCheckRID(t, b.group(map[string]any{"type": "group_join", "group": gid}, "joined"), "")
		for _, ev := range []string{"joined", "left", "joined"} {
			a.expectSys(ev)
			a2.expectSys(ev)
		}
		// PROTOCOL §13's requests copy it too.
		cfCheckRID(t, a.group(map[string]any{"type": "group_rename", "rid": "g5", "group": gid, "name": "r"}, "renamed"), "g5")
		cfCheckRID(t, a.group(map[string]any{"type": "group_remove", "rid": "g6", "group": gid, "members": []int64{B}}, "removed"), "g6")
		cfCheckRID(t, a.group(map[string]any{"type": "group_add", "rid": "g7", "group": gid, "members": []int64{B}}, "added"), "g7")
		for _, ev := range []string{"renamed", "removed", "added"} {
			a2.expectSys(ev)
			b.expectSys(ev)
		}

		a.send(map[string]any{"type": "history", "rid": "e1", "conv": "bogus"})
		a.expectErr("bad_request", "e1")
		a.send(map[string]any{"type": "history", "conv": "bogus"})
		a.expectErr("bad_request", "")

		// read: the rid only on the requesting connection.
		a.send(map[string]any{"type": "read", "rid": "r1", "conv": cfD(A, B), "seq": 1})
		cfCheckRID(t, a.expect("read"), "r1")
		cfCheckRID(t, a2.expect("read"), "")
		// ack: no reply.
		b.send(map[string]any{"type": "ack", "rid": "k1", "conv": cfD(A, B), "seq": 2})
		b.quiet(cfQuiet)
		a.quiet(0)
		a2.quiet(0)
	})

	t.Run("unknown type and malformed frames are bad_request; nothing closes", func(t *testing.T) {
		a := s.connect(t, atok)
		for _, f := range []string{
			`{"type":"bogus","rid":"u1"}`,
			`{"type":"PING","rid":"u2"}`,
			`{"type":"welcome","rid":"u3"}`,
			`{"type":"msg","rid":"u4"}`,
			`{"rid":"u5"}`,
			`{"type":5,"rid":"u6"}`,
		} {
			a.send(f)
			want := ""
			if i := strings.Index(f, `"rid":"`); i >= 0 {
				want = f[i+7 : i+9]
			}
			a.expectErr("bad_request", want)
		}
		for _, f := range []string{`{"type":"ping"`, `[]`, `"ping"`, `null`, `42`, `{"type":"ping"}{}`, ` `} {
			a.send(f)
			a.expectErr("bad_request", "")
		}
		a.ping()
	})

	t.Run("send fields", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		cases := []struct {
			name, frame string
			cmid        string // echoed cmid, "" for none expected/checked
		}{
			{"missing cmid", fmt.Sprintf(`{"type":"send","to":%d,"body":"x"}`, B), ""},
			{"empty cmid", fmt.Sprintf(`{"type":"send","cmid":"","to":%d,"body":"x"}`, B), ""},
			{"cmid 65 bytes", fmt.Sprintf(`{"type":"send","cmid":%q,"to":%d,"body":"x"}`, strings.Repeat("c", 65), B), ""},
			{"cmid a number", fmt.Sprintf(`{"type":"send","cmid":7,"to":%d,"body":"x"}`, B), ""},
			{"neither to nor group", `{"type":"send","cmid":"f-1","body":"x"}`, "f-1"},
			{"both to and group", fmt.Sprintf(`{"type":"send","cmid":"f-2","to":%d,"group":1,"body":"x"}`, B), "f-2"},
			{"to a string", fmt.Sprintf(`{"type":"send","cmid":"f-3","to":"%d","body":"x"}`, B), "f-3"},
			{"to negative", `{"type":"send","cmid":"f-4","to":-2,"body":"x"}`, "f-4"},
			{"to fractional", `{"type":"send","cmid":"f-5","to":1.5,"body":"x"}`, "f-5"},
			{"missing body", fmt.Sprintf(`{"type":"send","cmid":"f-6","to":%d}`, B), "f-6"},
			{"empty body", fmt.Sprintf(`{"type":"send","cmid":"f-7","to":%d,"body":""}`, B), "f-7"},
			{"body a number", fmt.Sprintf(`{"type":"send","cmid":"f-8","to":%d,"body":5}`, B), "f-8"},
			{"lone high surrogate", fmt.Sprintf(`{"type":"send","cmid":"f-9","to":%d,"body":"\ud800"}`, B), "f-9"},
			{"lone low surrogate", fmt.Sprintf(`{"type":"send","cmid":"f-10","to":%d,"body":"a\udc00b"}`, B), "f-10"},
			{"high surrogate then text", fmt.Sprintf(`{"type":"send","cmid":"f-11","to":%d,"body":"\ud800xyzabc"}`, B), "f-11"},
			{"kind 33 bytes", fmt.Sprintf(`{"type":"send","cmid":"f-12","to":%d,"body":"x","kind":%q}`, B, strings.Repeat("k", 33)), "f-12"},
			{"kind a number", fmt.Sprintf(`{"type":"send","cmid":"f-13","to":%d,"body":"x","kind":1}`, B), "f-13"},
		}
		for _, tc := range cases {
			withRID := strings.Replace(tc.frame, `{"type":"send"`, `{"type":"send","rid":"sf"`, 1)
			a.send(withRID)
			m := a.next()
			if m["type"] != "error" || m["code"] != "bad_request" || m["rid"] != "sf" {
				t.Errorf("%s: got %v, want error bad_request with rid sf", tc.name, m)
				continue
			}
			if tc.cmid != "" && m["cmid"] != tc.cmid {
				t.Errorf("%s: error cmid %v, want %q", tc.name, m["cmid"], tc.cmid)
			}
		}
		b.quiet(cfQuiet) // nothing was stored or pushed
		a.ping()
	})

	t.Run("send check order", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		c := s.connect(t, ctok)
		mine := cfNum(a.group(map[string]any{"type": "group_create", "name": "order-c", "rid": "g"}, "created")["group"])
		// A group A is not in.
		notA := cfNum(c.group(map[string]any{"type": "group_create", "name": "not-a", "rid": "g"}, "created")["group"])
		unknownGroup := notA + 1000
		orig := a.sendMsg("ord", B, 0, "first")
		if m := b.expect("msg"); m["body"] != "first" {
			t.Fatalf("msg %v", m)
		}
		big := strings.Repeat("x", 101)
		for _, tc := range []struct {
			name string
			f    map[string]any
		}{
			{"other body", map[string]any{"to": B, "body": "other"}},
			{"too large", map[string]any{"to": B, "body": big}},
			{"to oneself", map[string]any{"to": A, "body": "x"}},
			{"unknown uid", map[string]any{"to": 999999, "body": "x"}},
			{"unknown uid and too large", map[string]any{"to": 999999, "body": big}},
			{"unknown group", map[string]any{"group": unknownGroup, "body": "x"}},
			{"not a member", map[string]any{"group": notA, "body": "x"}},
			{"other recipient", map[string]any{"to": C, "body": "x", "kind": "other"}},
		} {
			f := tc.f
			f["type"], f["cmid"], f["rid"] = "send", "ord", "o"
			a.send(f)
			m := a.next()
			if m["type"] != "sent" || m["cmid"] != "ord" || m["conv"] != orig["conv"] || m["seq"] != orig["seq"] || m["ts"] != orig["ts"] || m["rid"] != "o" {
				t.Errorf("%s: got %v, want the original sent %v (with rid o)", tc.name, m, orig)
			}
		}
		b.quiet(cfQuiet) // nothing new pushed
		c.quiet(0)
		// Fields are checked before the stored cmid.
		a.send(map[string]any{"type": "send", "cmid": "ord", "to": B})
		if e := a.expectErr("bad_request", ""); e["cmid"] != "ord" {
			t.Errorf("cmid %v", e["cmid"])
		}
		a.send(map[string]any{"type": "send", "cmid": "ord", "to": B, "group": notA, "body": "x"})
		a.expectErr("bad_request", "")
		// PROTOCOL §13: kind "system" and cmids beginning with "sys:" fail
		// the fields check, before the stored cmid — also A's own stored
		// system message's cmid (A created group mine: "sys:<mine>:1").
		for _, f := range []map[string]any{
			{"cmid": "ord", "to": B, "body": "x", "kind": "system"},
			{"cmid": fmt.Sprintf("sys:%d:1", mine), "group": mine, "body": "x"},
			{"cmid": fmt.Sprintf("sys:%d:1", mine), "to": B, "body": "x", "kind": "text"},
			{"cmid": "sys:", "to": B, "body": "x"},
			{"cmid": "sys:x", "group": mine, "body": `{"event":"left"}`, "kind": "system"},
		} {
			f["type"], f["rid"] = "send", "sy"
			a.send(f)
			if e := a.expectErr("bad_request", "sy"); e["cmid"] != f["cmid"] {
				t.Errorf("%v: error cmid %v", f, e["cmid"])
			}
		}
		// Not a reserved kind or cmid: "System", "SYS:", "xsys:" and a kind
		// that merely begins with "system" are a client's to use.
		for i, f := range []map[string]any{
			{"cmid": "SYS:1", "kind": "System"},
			{"cmid": "xsys:1", "kind": "systems"},
		} {
			f["type"], f["to"], f["body"] = "send", B, "y"
			a.send(f)
			if m := a.expect("sent"); m["cmid"] != f["cmid"] {
				t.Errorf("case %d: %v", i, m)
			}
			if m := b.expect("msg"); m["kind"] != f["kind"] {
				t.Errorf("case %d: pushed %v", i, m)
			}
		}
		// Body size before recipient.
		for _, f := range []map[string]any{{"to": 999999}, {"to": A}, {"group": notA}, {"group": unknownGroup}} {
			f["type"], f["cmid"], f["body"] = "send", fmt.Sprintf("big-%v%v", f["to"], f["group"]), big
			a.send(f)
			if e := a.expectErr("too_large", ""); e["cmid"] != f["cmid"] {
				t.Errorf("too_large: cmid %v, want %v", e["cmid"], f["cmid"])
			}
		}
		// Recipient checks.
		for _, tc := range []struct {
			f    map[string]any
			code string
		}{
			{map[string]any{"to": 999999}, "not_found"},
			{map[string]any{"group": unknownGroup}, "not_found"},
			{map[string]any{"group": notA}, "not_member"},
			{map[string]any{"to": A}, "bad_request"},
		} {
			f := tc.f
			f["type"], f["cmid"], f["body"], f["rid"] = "send", fmt.Sprintf("rcpt-%v%v", f["to"], f["group"]), "x", "rc"
			a.send(f)
			if e := a.expectErr(tc.code, "rc"); e["cmid"] != f["cmid"] {
				t.Errorf("%s: cmid %v, want %v", tc.code, e["cmid"], f["cmid"])
			}
		}
		// None of the failed cmids was stored: they can be used now.
		s1 := a.sendMsg("rcpt-999999<nil>", B, 0, "now fine")
		if cfNum(s1["seq"]) != cfNum(orig["seq"])+3 { // after SYS:1 and xsys:1
			t.Errorf("seq %v after %v", s1["seq"], orig["seq"])
		}
		b.expect("msg")
		// cmid is unique per sending user: B's "ord" is a new message.
		s2 := b.sendMsg("ord", A, 0, "b's own ord")
		if s2["conv"] != orig["conv"] || cfNum(s2["seq"]) != cfNum(orig["seq"])+4 {
			t.Errorf("B's ord: %v", s2)
		}
		if m := a.expect("msg"); m["body"] != "b's own ord" || cfNum(m["from"]) != B {
			t.Errorf("msg %v", m)
		}
	})

	t.Run("body limits and content", func(t *testing.T) {
		a := s.connect(t, atok)
		c := s.connect(t, ctok)
		for i, tc := range []struct {
			body string // as Go string
			wire string // JSON literal ("" = json.Marshal(body))
			ok   bool
		}{
			{body: strings.Repeat("x", 100), ok: true},
			{body: strings.Repeat("x", 101)},
			{body: strings.Repeat("é", 50), ok: true},
			{body: strings.Repeat("€", 34)},
			{body: strings.Repeat("A", 100), wire: `"` + strings.Repeat(`\u0041`, 100) + `"`, ok: true},
			{body: strings.Repeat("A", 101), wire: `"` + strings.Repeat(`\u0041`, 101) + `"`},
			{body: "y", ok: true},
			{body: "😀", wire: `"\ud83d\ude00"`, ok: true},
			{body: "a\"b\\c\n\t</script>\u2028", ok: true},
		} {
			wire := tc.wire
			if wire == "" {
				wire = string(cfJSON(tc.body))
			}
			cmid := fmt.Sprintf("lim-%d", i)
			a.send(fmt.Sprintf(`{"type":"send","cmid":%q,"to":%d,"body":%s}`, cmid, C, wire))
			m := a.next()
			if !tc.ok {
				if m["type"] != "error" || m["code"] != "too_large" || m["cmid"] != cmid {
					t.Errorf("body of %d bytes: got %v, want too_large", len(tc.body), m)
				}
				continue
			}
			if m["type"] != "sent" {
				t.Errorf("body %q (%d bytes): got %v, want sent", tc.body, len(tc.body), m)
				continue
			}
			if got := c.expect("msg"); got["body"] != tc.body {
				t.Errorf("body %q arrived as %q", tc.body, got["body"])
			}
		}
	})

	t.Run("kind and sender", func(t *testing.T) {
		a := s.connect(t, atok)
		d := s.connect(t, dtok)
		for i, tc := range []struct {
			kind any // nil: absent
			want string
		}{
			{nil, "text"},
			{"", "text"},
			{"image/png", "image/png"},
			{strings.Repeat("k", 32), strings.Repeat("k", 32)},
			{"Üñí", "Üñí"},
			{"text", "text"},
		} {
			f := map[string]any{"type": "send", "cmid": fmt.Sprintf("kind-%d", i), "to": D, "body": "b", "from": 999}
			if tc.kind != nil {
				f["kind"] = tc.kind
			}
			a.send(f)
			sent := a.expect("sent")
			m := d.expect("msg")
			if m["kind"] != tc.want || cfNum(m["from"]) != A || m["ts"] != sent["ts"] || m["cmid"] != f["cmid"] || m["conv"] != cfD(A, D) || m["seq"] != sent["seq"] {
				t.Errorf("kind %v: msg %v (sent %v)", tc.kind, m, sent)
			}
		}
		d.send(map[string]any{"type": "history", "conv": cfD(A, D)})
		h := d.expect("history")
		msgs := h["messages"].([]any)
		if len(msgs) != 6 {
			t.Fatalf("history %v", h)
		}
		for i, want := range []string{"text", "text", "image/png", strings.Repeat("k", 32), "Üñí", "text"} {
			if m := msgs[i].(map[string]any); m["kind"] != want || cfNum(m["from"]) != A {
				t.Errorf("history[%d] %v", i, m)
			}
		}
	})

	t.Run("history pages", func(t *testing.T) {
		c := s.connect(t, ctok)
		const n = 205
		conv := cfD(C, D)
		ts := map[int64]any{}
		for i := 1; i <= n; i++ {
			c.send(map[string]any{"type": "send", "cmid": fmt.Sprintf("h-%d", i), "to": D, "body": fmt.Sprintf("m%d", i)})
		}
		for i := 1; i <= n; i++ {
			m := c.expect("sent")
			if m["cmid"] != fmt.Sprintf("h-%d", i) || cfNum(m["seq"]) != int64(i) || m["conv"] != conv {
				t.Fatalf("sent %v, want seq %d", m, i)
			}
			ts[int64(i)] = m["ts"]
		}
		check := func(q map[string]any, from, to int64, more bool) {
			t.Helper()
			f := map[string]any{"type": "history", "conv": conv, "rid": "hp"}
			for k, v := range q {
				f[k] = v
			}
			c.send(f)
			h := c.expect("history")
			msgs, ok := h["messages"].([]any)
			if !ok || h["conv"] != conv || h["more"] != more || h["rid"] != "hp" {
				t.Errorf("history %v: %.300v, want more=%v", q, h, more)
				return
			}
			if int64(len(msgs)) != to-from+1 {
				t.Errorf("history %v: %d messages, want %d..%d", q, len(msgs), from, to)
				return
			}
			for i, x := range msgs {
				m := x.(map[string]any)
				seq := from + int64(i)
				if cfNum(m["seq"]) != seq || m["conv"] != conv || cfNum(m["from"]) != C || m["body"] != fmt.Sprintf("m%d", seq) ||
					m["kind"] != "text" || m["cmid"] != fmt.Sprintf("h-%d", seq) || m["ts"] != ts[seq] {
					t.Errorf("history %v: [%d] = %v, want seq %d", q, i, m, seq)
					return
				}
			}
		}
		check(nil, 156, 205, true)
		check(map[string]any{"limit": 3}, 203, 205, true)
		check(map[string]any{"limit": 300}, 6, 205, true)
		check(map[string]any{"limit": 100000}, 6, 205, true)
		check(map[string]any{"after": 0}, 1, 50, true)
		check(map[string]any{"after": 0, "limit": 201}, 1, 200, true)
		check(map[string]any{"after": 200}, 201, 205, false)
		check(map[string]any{"after": 150, "limit": 55}, 151, 205, false)
		check(map[string]any{"after": 150, "limit": 54}, 151, 204, true)
		check(map[string]any{"after": 205}, 1, 0, false)
		check(map[string]any{"after": 9999}, 1, 0, false)
		check(map[string]any{"before": 206}, 156, 205, true)
		check(map[string]any{"before": 60}, 10, 59, true)
		check(map[string]any{"before": 11, "limit": 10}, 1, 10, false)
		check(map[string]any{"before": 12, "limit": 10}, 2, 11, true)
		check(map[string]any{"before": 1}, 1, 0, false)
		check(map[string]any{"before": 9999, "limit": 2}, 204, 205, true)
		check(map[string]any{"before": 205, "limit": 500}, 5, 204, true)
		check(map[string]any{"limit": 1}, 205, 205, true)
		check(map[string]any{"limit": 205}, 6, 205, true)
		for _, q := range []string{`"limit":0`, `"limit":-1`, `"limit":"5"`, `"limit":2.5`, `"after":1,"before":5`, `"after":-1`, `"before":-3`, `"after":"1"`} {
			c.send(fmt.Sprintf(`{"type":"history","rid":"hb","conv":%q,%s}`, conv, q))
			c.expectErr("bad_request", "hb")
		}
		// The other party reads the same.
		d := s.connect(t, dtok)
		d.send(map[string]any{"type": "history", "conv": conv, "after": 204})
		if h := d.expect("history"); len(h["messages"].([]any)) != 1 {
			t.Errorf("D's history %v", h)
		}
	})

	t.Run("conv ids and access", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		c := s.connect(t, ctok)
		closed := cfNum(c.group(map[string]any{"type": "group_create", "name": "closed", "rid": "g"}, "created")["group"])
		bad := []string{"", "x", "d", "d:", "d:1", fmt.Sprintf("d:%d", A), fmt.Sprintf("d:%d:%d:1", A, B),
			fmt.Sprintf("d:%d:%d", B, A), fmt.Sprintf("d:%d:%d", A, A), fmt.Sprintf("d:0:%d", A), fmt.Sprintf("d:0%d:%d", A, B),
			fmt.Sprintf("d:%d:0%d", A, B), fmt.Sprintf("d:+%d:%d", A, B), fmt.Sprintf("d: %d:%d", A, B), fmt.Sprintf("d:%d:%d ", A, B),
			fmt.Sprintf("d:-%d:%d", A, B), fmt.Sprintf("D:%d:%d", A, B), fmt.Sprintf("d:%d:%dx", A, B), "d:0:0",
			"g:0", "g:00", fmt.Sprintf("g:0%d", closed), "g:-1", "g:", "g:1.0", "G:1", fmt.Sprintf("g:%d ", closed), "g:1:2", "g:x", "x:1"}
		notFound := []string{fmt.Sprintf("d:%d:999999", A), "d:999998:999999", fmt.Sprintf("d:%d:999999", B), fmt.Sprintf("d:1:%d", 999999), "g:999999"}
		notMember := []string{cfD(B, C), cfD(C, D), cfG(closed)}
		type tc struct{ conv, code string }
		var cases []tc
		for _, x := range bad {
			cases = append(cases, tc{x, "bad_request"})
		}
		for _, x := range notFound {
			cases = append(cases, tc{x, "not_found"})
		}
		for _, x := range notMember {
			cases = append(cases, tc{x, "not_member"})
		}
		for _, k := range cases {
			for _, f := range []map[string]any{
				{"type": "history", "rid": "cv", "conv": k.conv},
				{"type": "history", "rid": "cv", "conv": k.conv, "after": 0},
				{"type": "read", "rid": "cv", "conv": k.conv, "seq": 1},
			} {
				a.send(f)
				m := a.next()
				if m["type"] != "error" || m["code"] != k.code || m["rid"] != "cv" {
					t.Errorf("%v: got %v, want %s", f, m, k.code)
				}
			}
		}
		for _, f := range []string{`{"type":"history","rid":"cv","conv":5}`, `{"type":"history","rid":"cv"}`, `{"type":"read","rid":"cv","seq":1}`, `{"type":"read","rid":"cv","conv":5,"seq":1}`} {
			a.send(f)
			a.expectErr("bad_request", "cv")
		}
		// A direct conversation with no messages: an empty list.
		b.send(fmt.Sprintf(`{"type":"history","rid":"e","conv":%q}`, cfD(B, D)))
		f := b.nextFrame(5 * time.Second)
		if f.M["type"] != "history" || f.M["more"] != false || !strings.Contains(string(f.Raw), `"messages":[]`) {
			t.Errorf("empty direct conv: %s", f.Raw)
		}
		c.ping()
	})

	t.Run("groups", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		d := s.connect(t, dtok)
		convCount := func(c *cfConn) int {
			c.send(map[string]any{"type": "convs"})
			return len(c.expect("convs")["items"].([]any))
		}
		for _, f := range []string{
			`{"type":"group_create","rid":"n","name":""}`,
			`{"type":"group_create","rid":"n"}`,
			`{"type":"group_create","rid":"n","name":5}`,
			`{"type":"group_create","rid":"n","name":"` + strings.Repeat("n", 65) + `"}`,
			`{"type":"group_create","rid":"n","name":"` + strings.Repeat("€", 22) + `"}`,
			`{"type":"group_create","rid":"n","name":"x","public":"yes"}`,
			`{"type":"group_create","rid":"n","name":"x","public":1}`,
		} {
			a.send(f)
			a.expectErr("bad_request", "n")
		}
		beforeA, beforeB := convCount(a), convCount(b)
		a.send(map[string]any{"type": "group_create", "rid": "nf", "name": "ghosts", "members": []int64{B, 999999}})
		a.expectErr("not_found", "nf")
		if convCount(a) != beforeA || convCount(b) != beforeB {
			t.Errorf("a group was created despite not_found")
		}
		name64 := strings.Repeat("€", 21) + "x"
		g := a.group(map[string]any{"type": "group_create", "rid": "mk", "name": name64, "members": []int64{C, B, B, A, C}, "public": true}, "created")
		gid := cfNum(g["group"])
		want := []int64{A, B, C}
		sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
		if gid <= 0 || g["name"] != name64 || cfNum(g["count"]) != 3 || fmt.Sprint(cfNums(g["members"])) != fmt.Sprint(want) || g["more"] != false || g["rid"] != "mk" ||
			g["public"] != true || cfNum(g["owner"]) != A {
			t.Fatalf("group_create: %v, want members %v", g, want)
		}
		b.expectSys("created")
		g = a.group(map[string]any{"type": "group_create", "name": "solo", "public": true}, "created")
		solo := cfNum(g["group"])
		if cfNum(g["count"]) != 1 || fmt.Sprint(cfNums(g["members"])) != fmt.Sprint([]int64{A}) || g["more"] != false || cfNum(g["owner"]) != A {
			t.Errorf("group_create without members: %v", g)
		}
		// Join: count, no members list; twice answered alike (and the
		// second stores nothing: one "joined" reaches the members).
		j1 := d.group(map[string]any{"type": "group_join", "group": gid}, "joined")
		j2 := d.group(map[string]any{"type": "group_join", "group": gid}, "")
		for _, j := range []map[string]any{j1, j2} {
			if cfNum(j["group"]) != gid || j["name"] != name64 || cfNum(j["count"]) != 4 || j["public"] != true || cfNum(j["owner"]) != A {
				t.Errorf("group_join: %v", j)
			}
			if _, has := j["members"]; has {
				t.Errorf("group_join lists members: %v", j)
			}
			if _, has := j["more"]; has {
				t.Errorf("group_join carries more: %v", j)
			}
		}
		// Membership changes are pushed as messages (PROTOCOL §13).
		a.expectSys("joined")
		b.expectSys("joined")
		b.quiet(cfQuiet)
		// group_members paging.
		all := append(want, D)
		sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
		for _, tc := range []struct {
			after, limit any
			want         []int64
			more         bool
		}{
			{nil, nil, all, false},
			{nil, 2, all[:2], true},
			{all[1], 2, all[2:], false},
			{all[1], 1, all[2:3], true},
			{all[3], nil, nil, false},
			{0, 4, all, false},
			{0, 20000, all, false},
			{nil, 3, all[:3], true},
		} {
			f := map[string]any{"type": "group_members", "group": gid, "rid": "gm"}
			if tc.after != nil {
				f["after"] = tc.after
			}
			if tc.limit != nil {
				f["limit"] = tc.limit
			}
			g := b.group(f, "")
			if fmt.Sprint(cfNums(g["members"])) != fmt.Sprint(tc.want) || g["more"] != tc.more || cfNum(g["count"]) != 4 || g["name"] != name64 || g["rid"] != "gm" ||
				g["public"] != true || cfNum(g["owner"]) != A {
				t.Errorf("group_members after=%v limit=%v: %v, want %v more=%v", tc.after, tc.limit, g, tc.want, tc.more)
			}
			if g["members"] == nil {
				t.Errorf("group_members: no members list: %v", g)
			}
		}
		for _, q := range []string{`"limit":0`, `"limit":-1`, `"after":-1`, `"limit":"2"`} {
			b.send(fmt.Sprintf(`{"type":"group_members","rid":"gb","group":%d,%s}`, gid, q))
			b.expectErr("bad_request", "gb")
		}
		// Leave: count after, no list.
		l := d.group(map[string]any{"type": "group_leave", "group": gid, "rid": "lv"}, "left")
		if cfNum(l["count"]) != 3 || cfNum(l["group"]) != gid || cfNum(l["owner"]) != A {
			t.Errorf("group_leave: %v", l)
		}
		if _, has := l["members"]; has {
			t.Errorf("group_leave lists members: %v", l)
		}
		a.expectSys("left")
		b.expectSys("left")
		for _, typ := range []string{"group_leave", "group_members"} {
			d.send(map[string]any{"type": typ, "group": gid, "rid": "nm"})
			d.expectErr("not_member", "nm")
		}
		for _, typ := range []string{"group_join", "group_leave", "group_members", "group_rename", "group_add", "group_remove"} {
			d.send(map[string]any{"type": typ, "group": 999999, "rid": "nf", "name": "n", "members": []int64{A}})
			d.expectErr("not_found", "nf")
			d.send(map[string]any{"type": typ, "rid": "br", "name": "n", "members": []int64{A}})
			d.expectErr("bad_request", "br")
			d.send(map[string]any{"type": typ, "group": "1", "rid": "br", "name": "n", "members": []int64{A}})
			d.expectErr("bad_request", "br")
		}
		// An empty public group stays and can be joined again; its joiner
		// owns it.
		if g := a.group(map[string]any{"type": "group_leave", "group": solo}, "left"); cfNum(g["count"]) != 0 || cfNum(g["owner"]) != 0 {
			t.Errorf("leaving the last member: %v", g)
		}
		if g := b.group(map[string]any{"type": "group_join", "group": solo}, "joined"); cfNum(g["count"]) != 1 || g["name"] != "solo" || cfNum(g["owner"]) != B {
			t.Errorf("rejoin of an empty group: %v", g)
		}
		if g := b.group(map[string]any{"type": "group_members", "group": solo}, ""); fmt.Sprint(cfNums(g["members"])) != fmt.Sprint([]int64{B}) {
			t.Errorf("members of the rejoined group: %v", g)
		}
		a.quiet(cfQuiet) // a left solo: nothing more from it
	})

	t.Run("group history before joining; joiner has nothing unread", func(t *testing.T) {
		a := s.connect(t, atok)
		c := s.connect(t, ctok)
		gid := cfNum(c.group(map[string]any{"type": "group_create", "name": "pre", "public": true}, "created")["group"])
		for i := 1; i <= 3; i++ {
			c.sendMsg(fmt.Sprintf("pre-%d", i), 0, gid, fmt.Sprintf("before %d", i))
		}
		a.send(map[string]any{"type": "history", "conv": cfG(gid), "rid": "x"})
		a.expectErr("not_member", "x")
		if g := a.group(map[string]any{"type": "group_join", "group": gid}, "joined"); cfNum(g["count"]) != 2 {
			t.Errorf("join: %v", g)
		}
		c.expectSys("joined")
		a.send(map[string]any{"type": "history", "conv": cfG(gid)})
		h := a.expect("history")
		// created, three messages, joined: the whole history from seq 1.
		if msgs := h["messages"].([]any); len(msgs) != 5 || msgs[1].(map[string]any)["body"] != "before 1" || h["more"] != false {
			t.Errorf("history after join: %v", h)
		}
		it := cfConvItem(t, a, cfG(gid))
		if cfNum(it["last_seq"]) != 5 || cfNum(it["read_seq"]) != 5 || cfNum(it["unread"]) != 0 {
			t.Errorf("joiner's conv item %v", it)
		}
		a.group(map[string]any{"type": "group_leave", "group": gid}, "left")
		c.expectSys("left")
		a.send(map[string]any{"type": "history", "conv": cfG(gid), "rid": "y"})
		a.expectErr("not_member", "y")
	})
}

func cfNums(v any) []int64 {
	l, _ := v.([]any)
	var out []int64
	for _, x := range l {
		out = append(out, cfNum(x))
	}
	return out
}

// cfConvItem returns the convs item of conv (fails when absent).
func cfConvItem(t testing.TB, c *cfConn, conv string) map[string]any {
	t.Helper()
	c.send(map[string]any{"type": "convs"})
	for _, x := range c.expect("convs")["items"].([]any) {
		if it := x.(map[string]any); it["conv"] == conv {
			return it
		}
	}
	t.Fatalf("conv %s not in convs", conv)
	return nil
}

// TestConformanceConvsAndRead: convs ordering and fields, unread counts,
// read marks (§4, §10).
func TestConformanceConvsAndRead(t *testing.T) {
	t.Parallel()
	s := cfStart(t)
	E, etok := s.user(t, "ce")
	F, ftok := s.user(t, "cf")
	H, htok := s.user(t, "ch")
	e := s.connect(t, etok)
	e.name = "E"
	e2 := s.connect(t, etok)
	e2.name = "E2"
	f := s.connect(t, ftok)
	h := s.connect(t, htok)
	// waitTick waits until the wall clock is past ms, so that the next
	// stored timestamp differs (not a synchronisation with the server).
	waitTick := func(ms int64) {
		for time.Now().UnixMilli() <= ms+1 {
			time.Sleep(time.Millisecond)
		}
	}
	convs := func(c *cfConn) (map[string]any, []map[string]any) {
		t.Helper()
		c.send(map[string]any{"type": "convs", "rid": "cv"})
		fr := c.nextFrame(5 * time.Second)
		if fr.M["type"] != "convs" || !strings.Contains(string(fr.Raw), `"items":[`) {
			t.Fatalf("convs: %s", fr.Raw)
		}
		var items []map[string]any
		for _, x := range fr.M["items"].([]any) {
			items = append(items, x.(map[string]any))
		}
		return fr.M, items
	}
	m, items := convs(e)
	if len(items) != 0 || cfNum(m["total_unread"]) != 0 {
		t.Fatalf("fresh user's convs: %v", m)
	}

	g1 := cfNum(e.group(map[string]any{"type": "group_create", "name": "alpha", "members": []int64{F}}, "created")["group"])
	e2.expectSys("created")
	f.expectSys("created")
	waitTick(time.Now().UnixMilli())
	s1 := f.sendMsg("c1", E, 0, "hello E") // d:E:F
	e.expect("msg")
	e2.expect("msg")
	waitTick(cfNum(s1["ts"]))
	beta := e.group(map[string]any{"type": "group_create", "name": "beta"}, "created")
	g2 := cfNum(beta["group"])
	betaCreated := e2.expectSys("created")
	waitTick(time.Now().UnixMilli())
	s2 := f.sendMsg("c2", 0, g1, "hello alpha")
	e.expect("msg")
	e2.expect("msg")

	m, items = convs(e)
	order := []string{cfG(g1), cfG(g2), cfD(E, F)}
	var got []string
	for _, it := range items {
		got = append(got, it["conv"].(string))
	}
	if fmt.Sprint(got) != fmt.Sprint(order) {
		t.Fatalf("convs order %v, want %v", got, order)
	}
	if cfNum(m["total_unread"]) != 2 || m["rid"] != "cv" {
		t.Errorf("total_unread %v, want 2", m["total_unread"])
	}
	// Group item with a message.
	it := items[0]
	last, _ := it["last"].(map[string]any)
	// (The creator's read_seq is its "created" message's, seq 1.)
	if cfNum(it["group"]) != g1 || it["name"] != "alpha" || cfNum(it["last_seq"]) != 2 || cfNum(it["read_seq"]) != 1 || cfNum(it["unread"]) != 1 || last == nil ||
		it["public"] != false || cfNum(it["owner"]) != E {
		t.Errorf("group item %v", it)
	} else if last["conv"] != cfG(g1) || cfNum(last["seq"]) != 2 || cfNum(last["from"]) != F || last["ts"] != s2["ts"] || last["body"] != "hello alpha" || last["kind"] != "text" || last["cmid"] != "c2" {
		t.Errorf("group item last %v", last)
	}
	if _, has := it["peer"]; has {
		t.Errorf("group item has peer: %v", it)
	}
	// A group whose only message is its "created" (PROTOCOL §13): that is
	// its last, read by the creator.
	it = items[1]
	last, _ = it["last"].(map[string]any)
	if cfNum(it["group"]) != g2 || it["name"] != "beta" || cfNum(it["last_seq"]) != 1 || cfNum(it["read_seq"]) != 1 || cfNum(it["unread"]) != 0 ||
		it["public"] != false || cfNum(it["owner"]) != E || last == nil {
		t.Errorf("new group item %v", it)
	} else if last["kind"] != "system" || last["seq"] != betaCreated["seq"] || last["ts"] != betaCreated["ts"] || last["cmid"] != betaCreated["cmid"] || last["body"] != betaCreated["body"] {
		t.Errorf("new group item's last %v, pushed %v", last, betaCreated)
	}
	// Direct item.
	it = items[2]
	if cfNum(it["peer"]) != F || cfNum(it["last_seq"]) != 1 || cfNum(it["unread"]) != 1 || it["last"].(map[string]any)["ts"] != s1["ts"] {
		t.Errorf("direct item %v", it)
	}
	if _, has := it["group"]; has {
		t.Errorf("direct item has group: %v", it)
	}
	if _, has := it["name"]; has {
		t.Errorf("direct item has name: %v", it)
	}
	// A direct conversation without messages is not listed.
	_, items = convs(h)
	if len(items) != 0 {
		t.Errorf("H's convs: %v", items)
	}

	t.Run("ties by conv bytewise; order general rule", func(t *testing.T) {
		// Several messages in a burst, likely within one ms.
		for i := 0; i < 3; i++ {
			h.send(map[string]any{"type": "send", "cmid": fmt.Sprintf("tie-%d", i), "to": E, "body": "t"})
			f.send(map[string]any{"type": "send", "cmid": fmt.Sprintf("tie-%d", i), "group": g1, "body": "t"})
		}
		for i := 0; i < 3; i++ {
			h.expect("sent")
			f.expect("sent")
		}
		for i := 0; i < 6; i++ {
			e.expect("msg")
			e2.expect("msg")
		}
		_, items := convs(e)
		for i := 1; i < len(items); i++ {
			p, q := items[i-1], items[i]
			pl, _ := p["last"].(map[string]any)
			ql, _ := q["last"].(map[string]any)
			if pl == nil || ql == nil {
				continue
			}
			pt, qt := cfNum(pl["ts"]), cfNum(ql["ts"])
			if pt < qt || pt == qt && p["conv"].(string) > q["conv"].(string) {
				t.Errorf("items %d and %d out of order: %v / %v", i-1, i, p, q)
			}
		}
	})

	t.Run("read", func(t *testing.T) {
		conv := cfD(E, H)
		// d:E:H has 3 messages from H now; add two more.
		h.sendMsg("r4", E, 0, "4")
		h.sendMsg("r5", E, 0, "5")
		e.expect("msg")
		e.expect("msg")
		e2.expect("msg")
		e2.expect("msg")
		m, _ := convs(e)
		total := cfNum(m["total_unread"])
		it := cfConvItem(t, e, conv)
		if cfNum(it["last_seq"]) != 5 || cfNum(it["unread"]) != 5 {
			t.Fatalf("item %v", it)
		}
		step := func(seq any, want int64, rid string) {
			t.Helper()
			f := map[string]any{"type": "read", "conv": conv, "seq": seq}
			if rid != "" {
				f["rid"] = rid
			}
			e.send(f)
			for _, c := range []*cfConn{e, e2} {
				r := c.expect("read")
				if r["conv"] != conv || cfNum(r["seq"]) != want || cfNum(r["unread"]) != 5-want || cfNum(r["total_unread"]) != total-want {
					t.Errorf("read %v on %s: %v, want seq %d unread %d total %d", seq, c.name, r, want, 5-want, total-want)
				}
				if c == e {
					cfCheckRID(t, r, rid)
				} else {
					cfCheckRID(t, r, "")
				}
			}
		}
		step(3, 3, "r1")
		step(2, 3, "r2") // max(read_seq, …): unchanged, still sent to both
		step(3, 3, "")
		step(0, 3, "r3")
		step(99, 5, "r4") // min(seq, last_seq)
		step(5, 5, "")
		for _, fr := range []string{
			fmt.Sprintf(`{"type":"read","rid":"rb","conv":%q}`, conv),
			fmt.Sprintf(`{"type":"read","rid":"rb","conv":%q,"seq":-1}`, conv),
			fmt.Sprintf(`{"type":"read","rid":"rb","conv":%q,"seq":"3"}`, conv),
		} {
			e.send(fr)
			e.expectErr("bad_request", "rb")
		}
		e2.quiet(cfQuiet)
		if it := cfConvItem(t, e, conv); cfNum(it["read_seq"]) != 5 || cfNum(it["unread"]) != 0 {
			t.Errorf("after reads: %v", it)
		}
		// Reading a group.
		e.send(map[string]any{"type": "read", "conv": cfG(g1), "seq": 2})
		r := e.expect("read")
		e2.expect("read")
		if cfNum(r["seq"]) != 2 || cfNum(r["unread"]) != 3 { // created, c2, three ties
			t.Errorf("group read %v", r)
		}
	})

	t.Run("sending sets the sender's read_seq silently", func(t *testing.T) {
		// F has unread messages in d:E:F? No: E sends to F; F's view of E's
		// conversation and E's own.
		conv := cfD(E, F)
		before := cfConvItem(t, e, conv)
		sent := e.sendMsg("own-1", F, 0, "from E")
		if m := e2.expect("msg"); m["cmid"] != "own-1" || cfNum(m["from"]) != E {
			t.Errorf("sender's other connection: %v", m)
		}
		f.expect("msg")
		e2.quiet(cfQuiet) // no read frame
		e.quiet(0)
		it := cfConvItem(t, e, conv)
		if cfNum(it["last_seq"]) != cfNum(sent["seq"]) || cfNum(it["read_seq"]) != cfNum(sent["seq"]) || cfNum(it["unread"]) != 0 {
			t.Errorf("sender's item %v (before %v)", it, before)
		}
		fi := cfConvItem(t, f, conv)
		if cfNum(fi["read_seq"]) != cfNum(sent["seq"])-1 || cfNum(fi["unread"]) != 1 {
			t.Errorf("recipient's item %v", fi)
		}
	})

	t.Run("total_unread counts only current groups", func(t *testing.T) {
		f.sendMsg("unr-1", 0, g1, "unread for E")
		e.expect("msg")
		e2.expect("msg")
		m1, _ := convs(e)
		it := cfConvItem(t, e, cfG(g1))
		// E owns g1: its "left" names the new owner, F (PROTOCOL §13), and
		// reaches E's connections too (the last push from that group).
		if g := e.group(map[string]any{"type": "group_leave", "group": g1}, "left"); cfNum(g["owner"]) != F {
			t.Errorf("leave: %v", g)
		}
		for _, c := range []*cfConn{e2, f} {
			if m := c.expectSys("left"); m["body"] != fmt.Sprintf(`{"event":"left","owner":%d}`, F) || cfNum(m["from"]) != E {
				t.Errorf("%s: %v", c.name, m)
			}
		}
		m2, items := convs(e)
		for _, x := range items {
			if x["conv"] == cfG(g1) {
				t.Errorf("left group still listed: %v", x)
			}
		}
		if cfNum(m2["total_unread"]) != cfNum(m1["total_unread"])-cfNum(it["unread"]) || cfNum(it["unread"]) < 1 {
			t.Errorf("total_unread %v after leaving (was %v, group unread %v)", m2["total_unread"], m1["total_unread"], it["unread"])
		}
		var sum int64
		for _, x := range items {
			sum += cfNum(x["unread"])
			if cfNum(x["unread"]) != cfNum(x["last_seq"])-cfNum(x["read_seq"]) {
				t.Errorf("unread != last_seq - read_seq: %v", x)
			}
		}
		if sum != cfNum(m2["total_unread"]) {
			t.Errorf("total_unread %v, sum of items %d", m2["total_unread"], sum)
		}
	})
	_ = json.Marshal
}
