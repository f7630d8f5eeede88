package server_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Conformance of PROTOCOL §13 (groups, version 2) over real WebSockets
// against the real binary: public and private groups, owners, group_add,
// group_remove and group_rename with their checks in order, and every
// membership or name change as a system message — stored with the next
// seq, pushed to the members after the change (the requesting connection
// too), to the removed and to the user who left, shown in history and
// convs, counted as unread, acked and resent like any msg.

// cfSysBody decodes a system message's body, checking it is a JSON object
// with exactly the keys of its event.
func cfSysBody(t testing.TB, m map[string]any) map[string]any {
	t.Helper()
	var b map[string]any
	if err := json.Unmarshal([]byte(fmt.Sprint(m["body"])), &b); err != nil {
		t.Fatalf("system body %v: %v", m["body"], err)
	}
	keys := map[string][]string{
		"created": {"count", "event", "name", "public"},
		"added":   {"event", "members"},
		"removed": {"event", "members"},
		"joined":  {"event"},
		"renamed": {"event", "name"},
	}[fmt.Sprint(b["event"])]
	if b["event"] == "left" {
		keys = []string{"event"}
		if _, ok := b["owner"]; ok {
			keys = []string{"event", "owner"}
		}
	}
	var got []string
	for k := range b {
		got = append(got, k)
	}
	slices.Sort(got)
	if !slices.Equal(got, keys) {
		t.Fatalf("system body %v: keys %v, want %v", m["body"], got, keys)
	}
	return b
}

func TestConformanceGroupsV2(t *testing.T) {
	t.Parallel()
	s := cfStart(t)
	A, atok := s.user(t, "va")
	B, btok := s.user(t, "vb")
	C, ctok := s.user(t, "vc")
	D, dtok := s.user(t, "vd")

	t.Run("created: owner, public, the message to every connection", func(t *testing.T) {
		a := s.connect(t, atok)
		a2 := s.connect(t, atok)
		b := s.connect(t, btok)
		d := s.connect(t, dtok)
		g, push := a.groupCall(map[string]any{"type": "group_create", "rid": "c", "name": `te"am`, "members": []int64{C, B, C}}, "created")
		gid := cfNum(g["group"])
		if g["public"] != false || cfNum(g["owner"]) != A || cfNum(g["count"]) != 3 {
			t.Fatalf("reply %v", g)
		}
		if push["conv"] != cfG(gid) || cfNum(push["seq"]) != 1 || cfNum(push["from"]) != A || push["cmid"] == "" || push["ts"] == nil {
			t.Fatalf("push %v", push)
		}
		if push["body"] != `{"event":"created","name":"te\"am","public":false,"count":3}` {
			t.Errorf("created body %v", push["body"])
		}
		cfSysBody(t, push)
		for _, c := range []*cfConn{a2, b} {
			if m := c.expectSys("created"); m["seq"] != push["seq"] || m["ts"] != push["ts"] || m["cmid"] != push["cmid"] || m["body"] != push["body"] {
				t.Errorf("%v, want %v", m, push)
			}
		}
		d.quiet(cfQuiet) // not a member
		// History and convs show it; the creator has read it, B has not.
		a.send(map[string]any{"type": "history", "conv": cfG(gid)})
		h := a.expect("history")["messages"].([]any)
		if len(h) != 1 || h[0].(map[string]any)["kind"] != "system" || h[0].(map[string]any)["cmid"] != push["cmid"] {
			t.Fatalf("history %v", h)
		}
		if it := cfConvItem(t, a, cfG(gid)); cfNum(it["unread"]) != 0 || cfNum(it["read_seq"]) != 1 || it["public"] != false || cfNum(it["owner"]) != A {
			t.Errorf("creator's item %v", it)
		}
		if it := cfConvItem(t, b, cfG(gid)); cfNum(it["unread"]) != 1 || cfNum(it["read_seq"]) != 0 || it["last"].(map[string]any)["kind"] != "system" {
			t.Errorf("member's item %v", it)
		}
		// Public, and members may be empty.
		p := a.group(map[string]any{"type": "group_create", "name": "open", "public": true, "members": []int64{}}, "created")
		if p["public"] != true || cfNum(p["owner"]) != A || cfNum(p["count"]) != 1 {
			t.Errorf("public create %v", p)
		}
		if m := a2.expectSys("created"); m["body"] != `{"event":"created","name":"open","public":true,"count":1}` {
			t.Errorf("public created body %v", m["body"])
		}
		// members is bounded by --max-message only: 12,000 entries.
		big := a.group(map[string]any{"type": "group_create", "name": "big", "members": slices.Repeat([]int64{B}, 12000)}, "created")
		if cfNum(big["count"]) != 2 {
			t.Errorf("big create %v", big)
		}
		a2.expectSys("created")
		b.expectSys("created")
	})

	t.Run("join: forbidden for a private group, a member answered as usual", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		c := s.connect(t, ctok)
		gid := cfNum(a.group(map[string]any{"type": "group_create", "name": "priv", "members": []int64{B}}, "created")["group"])
		b.expectSys("created")
		c.send(map[string]any{"type": "group_join", "rid": "j", "group": gid})
		c.expectErr("forbidden", "j")
		// A member: answered as usual, nothing stored.
		if g := b.group(map[string]any{"type": "group_join", "rid": "m", "group": gid}, ""); cfNum(g["count"]) != 2 || cfNum(g["owner"]) != A || g["public"] != false {
			t.Errorf("member joins: %v", g)
		}
		a.quiet(cfQuiet)
		b.quiet(0)
		// A former member is forbidden too.
		b.group(map[string]any{"type": "group_leave", "group": gid}, "left")
		a.expectSys("left")
		b.send(map[string]any{"type": "group_join", "rid": "f", "group": gid})
		b.expectErr("forbidden", "f")
		// not_found before forbidden.
		c.send(map[string]any{"type": "group_join", "rid": "n", "group": 999999})
		c.expectErr("not_found", "n")
		a.quiet(cfQuiet) // nothing was stored
	})

	t.Run("public join and leave; owners", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		b2 := s.connect(t, btok)
		c := s.connect(t, ctok)
		gid := cfNum(b.group(map[string]any{"type": "group_create", "name": "pub", "public": true}, "created")["group"])
		b2.expectSys("created")
		// The joiner's own connection gets its "joined" too; it starts with
		// nothing unread.
		j, push := c.groupCall(map[string]any{"type": "group_join", "group": gid}, "joined")
		if cfNum(j["count"]) != 2 || cfNum(j["owner"]) != B || j["public"] != true || cfNum(push["from"]) != C || cfNum(push["seq"]) != 2 {
			t.Fatalf("join %v push %v", j, push)
		}
		b.expectSys("joined")
		b2.expectSys("joined")
		if it := cfConvItem(t, c, cfG(gid)); cfNum(it["unread"]) != 0 || cfNum(it["read_seq"]) != 2 {
			t.Errorf("joiner's item %v", it)
		}
		a.group(map[string]any{"type": "group_join", "group": gid}, "joined")
		for _, x := range []*cfConn{b, b2, c} {
			x.expectSys("joined")
		}
		// The owner leaves: the lowest remaining uid owns the group; every
		// connection of the leaver gets the "left" (its last push).
		low := min(A, C)
		l := b.group(map[string]any{"type": "group_leave", "group": gid}, "left")
		if cfNum(l["owner"]) != low || cfNum(l["count"]) != 2 {
			t.Errorf("owner leaves: %v", l)
		}
		for _, x := range []*cfConn{b2, a, c} {
			m := x.expectSys("left")
			if body := cfSysBody(t, m); cfNum(body["owner"]) != low || cfNum(m["from"]) != B {
				t.Errorf("left %v", m)
			}
		}
		// No new pushes to the leaver; history not_member.
		a.sendMsg("after-b", 0, gid, "b is gone")
		c.expect("msg")
		b.quiet(cfQuiet)
		b2.quiet(0)
		b.send(map[string]any{"type": "history", "rid": "h", "conv": cfG(gid)})
		b.expectErr("not_member", "h")
		// A non-owner leaves: no owner in the body.
		other := A + C - low
		x := map[int64]*cfConn{A: a, C: c}
		x[other].group(map[string]any{"type": "group_leave", "group": gid}, "left")
		if m := x[low].expectSys("left"); m["body"] != `{"event":"left"}` {
			t.Errorf("left of a non-owner: %v", m["body"])
		}
		// The last member leaves: owner 0; the next joiner owns the empty
		// public group.
		if g := x[low].group(map[string]any{"type": "group_leave", "group": gid}, "left"); cfNum(g["owner"]) != 0 || cfNum(g["count"]) != 0 {
			t.Errorf("last leaves %v", g)
		}
		if g := b.group(map[string]any{"type": "group_join", "group": gid}, "joined"); cfNum(g["owner"]) != B || cfNum(g["count"]) != 1 {
			t.Errorf("join of the empty group %v", g)
		}
		b2.expectSys("joined")
		a.quiet(cfQuiet)
		c.quiet(0)
	})

	t.Run("group_add: checks in order, the added are told", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		c := s.connect(t, ctok)
		d := s.connect(t, dtok)
		gid := cfNum(a.group(map[string]any{"type": "group_create", "name": "adds", "members": []int64{B}}, "created")["group"])
		b.expectSys("created")
		notMine := cfNum(d.group(map[string]any{"type": "group_create", "name": "d's"}, "created")["group"])
		for _, tc := range []struct {
			f    string
			code string
		}{
			{`{"type":"group_add","rid":"x","members":[UC]}`, "bad_request"},
			{`{"type":"group_add","rid":"x","group":GID}`, "bad_request"},
			{`{"type":"group_add","rid":"x","group":GID,"members":[]}`, "bad_request"},
			{`{"type":"group_add","rid":"x","group":GID,"members":[0]}`, "bad_request"},
			{`{"type":"group_add","rid":"x","group":GID,"members":[-3]}`, "bad_request"},
			{`{"type":"group_add","rid":"x","group":GID,"members":["3"]}`, "bad_request"},
			{`{"type":"group_add","rid":"x","group":GID,"members":OVER}`, "bad_request"}, // 1,001 entries
			{`{"type":"group_add","rid":"x","group":999999,"members":[999999]}`, "not_found"},
			{`{"type":"group_add","rid":"x","group":NOTMINE,"members":[999999]}`, "not_member"},
			{`{"type":"group_add","rid":"x","group":GID,"members":[UC,999999]}`, "not_found"},
		} {
			over := "[" + strings.TrimSuffix(strings.Repeat(fmt.Sprint(C)+",", 1001), ",") + "]"
			a.send(strings.NewReplacer("GID", fmt.Sprint(gid), "UC", fmt.Sprint(C), "OVER", over, "NOTMINE", fmt.Sprint(notMine)).Replace(tc.f))
			a.expectErr(tc.code, "x")
		}
		c.quiet(cfQuiet) // nothing added, nothing pushed
		b.quiet(0)
		if g := a.group(map[string]any{"type": "group_members", "group": gid}, ""); fmt.Sprint(cfNums(g["members"])) != fmt.Sprint(sortedInts(A, B)) {
			t.Fatalf("members after the failed adds %v", g)
		}
		// Repeats count once, towards the 1,000 of the list as sent;
		// members already in are left out of the event.
		list := append(slices.Repeat([]int64{D}, 997), C, B, D)
		g, push := b.groupCall(map[string]any{"type": "group_add", "rid": "ok", "group": gid, "members": list}, "added")
		if cfNum(g["count"]) != 4 || cfNum(g["owner"]) != A || g["rid"] != "ok" {
			t.Errorf("add %v", g)
		}
		if _, has := g["members"]; has {
			t.Errorf("group_add lists members: %v", g)
		}
		if want := fmt.Sprintf(`{"event":"added","members":[%d,%d]}`, min(C, D), max(C, D)); push["body"] != want || cfNum(push["from"]) != B {
			t.Errorf("added %v, want body %s", push, want)
		}
		for _, x := range []*cfConn{a, c, d} {
			x.expectSys("added")
		}
		// The added have it unread; the actor has read it.
		for _, x := range []*cfConn{c, d} {
			if it := cfConvItem(t, x, cfG(gid)); cfNum(it["unread"]) != 1 || cfNum(it["read_seq"]) != cfNum(push["seq"])-1 {
				t.Errorf("added member's item %v", it)
			}
		}
		if it := cfConvItem(t, b, cfG(gid)); cfNum(it["unread"]) != 0 || cfNum(it["read_seq"]) != cfNum(push["seq"]) {
			t.Errorf("actor's item %v", it)
		}
		// Nobody new: answered as usual, nothing stored.
		if g := c.group(map[string]any{"type": "group_add", "group": gid, "members": []int64{A, D}}, ""); cfNum(g["count"]) != 4 {
			t.Errorf("add of members %v", g)
		}
		for _, x := range []*cfConn{a, b, d} {
			x.quiet(cfQuiet / 3)
		}
	})

	t.Run("group_remove: owner only, the removed are told and then left alone", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		c := s.connect(t, ctok)
		d := s.connect(t, dtok)
		gid := cfNum(a.group(map[string]any{"type": "group_create", "name": "rm", "members": []int64{B, C}}, "created")["group"])
		b.expectSys("created")
		c.expectSys("created")
		for _, tc := range []struct {
			who  *cfConn
			f    string
			code string
		}{
			{a, `{"type":"group_remove","rid":"x","group":%[1]d,"members":[]}`, "bad_request"},
			{a, `{"type":"group_remove","rid":"x","group":%[1]d}`, "bad_request"},
			{a, `{"type":"group_remove","rid":"x","group":%[1]d,"members":[0]}`, "bad_request"},
			{a, `{"type":"group_remove","rid":"x","group":999999,"members":[%[2]d]}`, "not_found"},
			{d, `{"type":"group_remove","rid":"x","group":%[1]d,"members":[%[2]d]}`, "not_member"},
			{b, `{"type":"group_remove","rid":"x","group":%[1]d,"members":[%[2]d]}`, "forbidden"},
			{b, `{"type":"group_remove","rid":"x","group":%[1]d,"members":[%[3]d]}`, "forbidden"},
			{a, `{"type":"group_remove","rid":"x","group":%[1]d,"members":[%[2]d,%[3]d]}`, "bad_request"},
		} {
			tc.who.send(fmt.Sprintf(tc.f, gid, C, A))
			tc.who.expectErr(tc.code, "x")
		}
		// Nobody of the list a member: nothing stored.
		if g := a.group(map[string]any{"type": "group_remove", "group": gid, "members": []int64{D, 999999}}, ""); cfNum(g["count"]) != 3 {
			t.Errorf("remove of non-members %v", g)
		}
		b.quiet(cfQuiet)
		c.quiet(0)
		g, push := a.groupCall(map[string]any{"type": "group_remove", "group": gid, "members": []int64{C, D, C}}, "removed")
		if cfNum(g["count"]) != 2 || cfNum(g["owner"]) != A {
			t.Errorf("remove %v", g)
		}
		if want := fmt.Sprintf(`{"event":"removed","members":[%d]}`, C); push["body"] != want {
			t.Errorf("removed body %v, want %s", push["body"], want)
		}
		b.expectSys("removed")
		c.expectSys("removed") // the removed user is told
		d.quiet(cfQuiet)       // never a member
		// Then nothing more for C, and no history.
		b.sendMsg("after-rm", 0, gid, "c is out")
		a.expect("msg")
		c.quiet(cfQuiet)
		c.send(map[string]any{"type": "history", "rid": "h", "conv": cfG(gid)})
		c.expectErr("not_member", "h")
		c.send(map[string]any{"type": "send", "rid": "s", "cmid": "c-after", "group": gid, "body": "x"})
		c.expectErr("not_member", "s")
	})

	t.Run("group_rename: owner only; the same name stores nothing", func(t *testing.T) {
		a := s.connect(t, atok)
		b := s.connect(t, btok)
		c := s.connect(t, ctok)
		gid := cfNum(a.group(map[string]any{"type": "group_create", "name": "old", "members": []int64{B}}, "created")["group"])
		b.expectSys("created")
		for _, tc := range []struct {
			who  *cfConn
			f    string
			code string
		}{
			{a, `{"type":"group_rename","rid":"x","group":%d}`, "bad_request"},
			{a, `{"type":"group_rename","rid":"x","group":%d,"name":""}`, "bad_request"},
			{a, `{"type":"group_rename","rid":"x","group":%d,"name":"` + strings.Repeat("n", 65) + `"}`, "bad_request"},
			{a, `{"type":"group_rename","rid":"x","name":"n"}`, "bad_request"},
			{a, `{"type":"group_rename","rid":"x","group":999999,"name":"n"}`, "not_found"},
			{c, `{"type":"group_rename","rid":"x","group":%d,"name":"n"}`, "not_member"},
			{b, `{"type":"group_rename","rid":"x","group":%d,"name":"n"}`, "forbidden"},
		} {
			f := tc.f
			if strings.Contains(f, "%d") {
				f = fmt.Sprintf(f, gid)
			}
			tc.who.send(f)
			tc.who.expectErr(tc.code, "x")
		}
		if g := a.group(map[string]any{"type": "group_rename", "group": gid, "name": "old"}, ""); g["name"] != "old" {
			t.Errorf("same name %v", g)
		}
		b.quiet(cfQuiet)
		g, push := a.groupCall(map[string]any{"type": "group_rename", "group": gid, "name": "néw"}, "renamed")
		if g["name"] != "néw" || cfNum(g["count"]) != 2 || push["body"] != `{"event":"renamed","name":"néw"}` {
			t.Errorf("rename %v push %v", g, push)
		}
		b.expectSys("renamed")
		if it := cfConvItem(t, b, cfG(gid)); it["name"] != "néw" || cfNum(it["unread"]) != 2 {
			t.Errorf("item after rename %v", it)
		}
	})
}

func sortedInts(v ...int64) []int64 {
	slices.Sort(v)
	return v
}

// TestConformanceSystemMessageResent: a system message is pushed, acked
// and resent like any msg (PROTOCOL §7, §13).
func TestConformanceSystemMessageResent(t *testing.T) {
	t.Parallel()
	const T = 300 * time.Millisecond
	s := cfStart(t, "--ack-timeout", T.String(), "--ack-retries", "1")
	_, atok := s.user(t, "ra")
	B, btok := s.user(t, "rb")
	a := s.connect(t, atok)
	b := s.connect(t, btok)
	a.group(map[string]any{"type": "group_create", "name": "resent", "members": []int64{B}}, "created")
	first := b.nextFrame(2 * time.Second)
	again := b.nextFrame(T + time.Second) // not acked: resent at T, identical
	if first.M["kind"] != "system" || string(again.Raw) != string(first.Raw) {
		t.Fatalf("first %s, resend %s", first.Raw, again.Raw)
	}
	b.send(map[string]any{"type": "ack", "conv": first.M["conv"], "seq": first.M["seq"]})
	b.quiet(3*T + 200*time.Millisecond) // acked: no more resends, no 4005
	b.ping()
}

// TestConformanceDemoLobby: --demo's lobby is public and owned by alice;
// anyone may join it.
func TestConformanceDemoLobby(t *testing.T) {
	t.Parallel()
	s := cfStart(t, "--demo")
	code, m := s.login(t, "bob", "password")
	if code != 200 {
		t.Fatalf("login bob: %d %v", code, m)
	}
	bob := s.connect(t, m["token"].(string))
	code, m = s.login(t, "alice", "password")
	if code != 200 {
		t.Fatal(code)
	}
	alice := cfNum(m["uid"])
	var lobby map[string]any
	bob.send(map[string]any{"type": "convs"})
	for _, x := range bob.expect("convs")["items"].([]any) {
		if it := x.(map[string]any); it["name"] == "lobby" {
			lobby = it
		}
	}
	// A fresh demo has nothing unread (docs/PROTOCOL.md, Magpie's choices).
	if lobby == nil || lobby["public"] != true || cfNum(lobby["owner"]) != alice || cfNum(lobby["unread"]) != 0 || cfNum(lobby["last_seq"]) != 1 {
		t.Fatalf("lobby %v", lobby)
	}
	_, dtok := s.user(t, "newcomer")
	d := s.connect(t, dtok)
	if g := d.group(map[string]any{"type": "group_join", "group": lobby["group"]}, "joined"); cfNum(g["count"]) != 4 || cfNum(g["owner"]) != alice {
		t.Errorf("join the lobby %v", g)
	}
	bob.expectSys("joined")
}
