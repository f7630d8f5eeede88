package storage

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// Tests of PROTOCOL §13 in the store: every membership or name change is a
// system message stored in the same commit; owners; public and private
// groups; read state; the checks of group_add, group_remove and
// group_rename in their order; requests that change nothing store
// nothing. Each runs in every cache mode (forCaches), the one-byte cache
// evicting everything between operations.

// sysCheck is what a group change must have stored and handed to OnSent.
type sysCheck struct {
	seq    uint64
	from   uint64
	body   string
	recips []uint64
}

// wantSystem checks the last message of gid's conversation and the last
// system message handed to OnSent against w.
func (ts *tstore) wantSystem(reader, gid uint64, w sysCheck) {
	ts.t.Helper()
	ms := ts.all(reader, GroupConv(gid))
	if len(ms) == 0 {
		ts.t.Fatalf("g:%d has no messages", gid)
	}
	m := ms[len(ms)-1]
	cmid := fmt.Sprintf("sys:%d:%d", gid, w.seq)
	if m.Seq != w.seq || m.From != w.from || m.Kind != KindSystem || m.Body != w.body || m.CMID != cmid || m.TS == 0 {
		ts.t.Fatalf("last message of g:%d: %+v, want seq %d from %d kind system cmid %s body %s", gid, m, w.seq, w.from, cmid, w.body)
	}
	o := ts.lastSystem()
	if o.Msg != m || o.Err != nil || o.Dup || o.Tag != nil || o.From != w.from || o.CMID != cmid || o.Group != gid ||
		!slices.Equal(o.Recipients, w.recips) {
		ts.t.Fatalf("OnSent got %+v (recipients %v), want the stored %+v to %v", o.Msg, o.Recipients, m, w.recips)
	}
}

// lastSeq returns gid's last seq as reader sees it.
func (ts *tstore) lastSeq(reader, gid uint64) uint64 {
	ts.t.Helper()
	ms, _, err := ts.History(reader, HistoryQuery{Conv: GroupConv(gid), Limit: 1})
	if err != nil {
		ts.t.Fatal(err)
	}
	if len(ms) == 0 {
		return 0
	}
	return ms[0].Seq
}

// readState returns uid's read_seq and unread in conv (from Convs).
func (ts *tstore) readState(uid uint64, conv string) (read, unread uint64, listed bool) {
	ts.t.Helper()
	items, _, err := ts.Convs(uid)
	if err != nil {
		ts.t.Fatal(err)
	}
	for _, it := range items {
		if it.Conv == conv {
			return it.ReadSeq, it.Unread, true
		}
	}
	return 0, 0, false
}

func (ts *tstore) wantRead(uid uint64, gid uint64, read, unread uint64) {
	ts.t.Helper()
	r, u, ok := ts.readState(uid, GroupConv(gid))
	if !ok || r != read || u != unread {
		ts.t.Fatalf("uid %d in g:%d: read %d unread %d listed %v, want read %d unread %d", uid, gid, r, u, ok, read, unread)
	}
}

// nothingStored checks that fn stores no message in gid and hands none
// to OnSent.
func (ts *tstore) nothingStored(reader, gid uint64, what string, fn func()) {
	ts.t.Helper()
	before, n := ts.lastSeq(reader, gid), len(ts.systems())
	fn()
	if after := ts.lastSeq(reader, gid); after != before || len(ts.systems()) != n {
		ts.t.Fatalf("%s stored something: last seq %d → %d, system messages %d → %d", what, before, after, n, len(ts.systems()))
	}
}

func TestGroupCreateMessage(t *testing.T) { forCaches(t, testGroupCreateMessage) }

func testGroupCreateMessage(t *testing.T) {
	s := newT(t)
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	gi, err := s.CreateGroup(b, `q"\`+"\n"+`é`, []uint64{c, a, c})
	if err != nil || gi.Owner != b || gi.Public || gi.Count != 3 {
		t.Fatalf("create: %+v %v", gi, err)
	}
	s.wantSystem(b, gi.ID, sysCheck{1, b, `{"event":"created","name":"q\"\\\u000aé","public":false,"count":3}`, []uint64{a, b, c}})
	// The creator has read it; those put in by the creator have it unread.
	s.wantRead(b, gi.ID, 1, 0)
	s.wantRead(a, gi.ID, 0, 1)
	s.wantRead(c, gi.ID, 0, 1)

	pub, err := s.CreateGroupWith(a, "open", nil, true)
	if err != nil || !pub.Public || pub.Owner != a || pub.Count != 1 || !slices.Equal(pub.Members, []uint64{a}) {
		t.Fatalf("create public: %+v %v", pub, err)
	}
	s.wantSystem(a, pub.ID, sysCheck{1, a, `{"event":"created","name":"open","public":true,"count":1}`, []uint64{a}})
	s.wantRead(a, pub.ID, 1, 0)
	// Convs and GroupMembers carry public and owner.
	items, _, _ := s.Convs(a)
	for _, it := range items {
		if it.Group == pub.ID && (!it.Public || it.Owner != a || it.Last == nil || it.Last.Kind != KindSystem) {
			t.Fatalf("convs item %+v", it)
		}
		if it.Group == gi.ID && (it.Public || it.Owner != b) {
			t.Fatalf("convs item %+v", it)
		}
	}
	if m, err := s.GroupMembers(c, gi.ID, 0, 10); err != nil || m.Owner != b || m.Public {
		t.Fatalf("members %+v %v", m, err)
	}
	// A failed create stores nothing: no group, no message.
	if _, err := s.CreateGroup(a, "x", []uint64{99}); codeOf(err) != NotFound {
		t.Fatalf("unknown member: %v", err)
	}
	if n := len(s.systems()); n != 2 {
		t.Fatalf("%d system messages", n)
	}
	if _, err := s.GroupMembers(a, pub.ID+1, 0, 10); codeOf(err) != NotFound {
		t.Fatalf("the failed group exists: %v", err)
	}
	// The system message's cmid is idempotent like any other.
	if r := s.send(&Send{From: b, CMID: fmt.Sprintf("sys:%d:1", gi.ID), To: a, Body: "x"}); !r.Dup || r.Msg.Kind != KindSystem || r.Msg.Conv != GroupConv(gi.ID) {
		t.Fatalf("retry of a system cmid: %+v", r)
	}
	auditCache(t, s.Store)
}

func TestGroupJoinLeave(t *testing.T) { forCaches(t, testGroupJoinLeave) }

func testGroupJoinLeave(t *testing.T) {
	s := newT(t)
	a, b, c, d := s.user("a"), s.user("b"), s.user("c"), s.user("d")
	priv := s.group(a, "private", b)
	pub := s.pubGroup(b, "public")

	// A private group: a non-member is forbidden, a member is answered as
	// usual and nothing is stored.
	s.nothingStored(a, priv, "join of a private group", func() {
		if _, err := s.JoinGroup(c, priv); codeOf(err) != Forbidden {
			t.Fatalf("join private: %v", err)
		}
		if gi, err := s.JoinGroup(b, priv); err != nil || gi.Count != 2 || gi.Owner != a || gi.Public || gi.Name != "private" {
			t.Fatalf("member joins: %+v %v", gi, err)
		}
	})
	if _, err := s.JoinGroup(c, 99); codeOf(err) != NotFound {
		t.Fatalf("join unknown: %v", err)
	}

	// A public group: "joined", from the joiner, to every member after;
	// the joiner has nothing unread.
	s.sendOK(b, "p1", 0, pub, "hello")
	gi, err := s.JoinGroup(c, pub)
	if err != nil || gi.Count != 2 || gi.Owner != b || !gi.Public {
		t.Fatalf("join: %+v %v", gi, err)
	}
	s.wantSystem(c, pub, sysCheck{3, c, `{"event":"joined"}`, []uint64{b, c}})
	s.wantRead(c, pub, 3, 0)
	s.wantRead(b, pub, 2, 1)
	s.nothingStored(c, pub, "a second join", func() {
		if gi, err := s.JoinGroup(c, pub); err != nil || gi.Count != 2 {
			t.Fatalf("join twice: %+v %v", gi, err)
		}
	})
	if _, err := s.JoinGroup(d, pub); err != nil {
		t.Fatal(err)
	}
	s.wantSystem(d, pub, sysCheck{4, d, `{"event":"joined"}`, []uint64{b, c, d}})

	// A member leaves: "left" to the members after and the leaver.
	if gi, err := s.LeaveGroup(c, pub); err != nil || gi.Count != 2 || gi.Owner != b {
		t.Fatalf("leave: %+v %v", gi, err)
	}
	s.wantSystem(b, pub, sysCheck{5, c, `{"event":"left"}`, []uint64{b, c, d}})
	if _, _, err := s.History(c, HistoryQuery{Conv: GroupConv(pub), Limit: 5}); codeOf(err) != NotMember {
		t.Fatalf("leaver's history: %v", err)
	}
	if _, _, ok := s.readState(c, GroupConv(pub)); ok {
		t.Fatal("the leaver still lists the group")
	}
	if m := s.sendOK(d, "p2", 0, pub, "after"); m.Seq != 6 {
		t.Fatalf("seq %d", m.Seq)
	}
	if o := s.batches[len(s.batches)-1][0]; slices.Contains(o.Recipients, c) {
		t.Fatalf("the leaver still receives: %v", o.Recipients)
	}
	if _, err := s.LeaveGroup(c, pub); codeOf(err) != NotMember {
		t.Fatalf("leave twice: %v", err)
	}

	// The owner leaves: the lowest remaining uid owns the group.
	if gi, err := s.LeaveGroup(b, pub); err != nil || gi.Owner != d || gi.Count != 1 {
		t.Fatalf("owner leaves: %+v %v", gi, err)
	}
	s.wantSystem(d, pub, sysCheck{7, b, fmt.Sprintf(`{"event":"left","owner":%d}`, d), []uint64{b, d}})
	// The last member leaves: owner 0; the next joiner of the empty public
	// group owns it, and a rejoin follows the joiner's read rule.
	if gi, err := s.LeaveGroup(d, pub); err != nil || gi.Owner != 0 || gi.Count != 0 {
		t.Fatalf("last leaves: %+v %v", gi, err)
	}
	if o := s.lastSystem(); o.Msg.Body != `{"event":"left","owner":0}` || o.Msg.Seq != 8 || !slices.Equal(o.Recipients, []uint64{d}) {
		t.Fatalf("last leaves: %+v %v", o.Msg, o.Recipients)
	}
	if gi, err := s.JoinGroup(c, pub); err != nil || gi.Owner != c || gi.Count != 1 {
		t.Fatalf("rejoin of the empty group: %+v %v", gi, err)
	}
	s.wantSystem(c, pub, sysCheck{9, c, `{"event":"joined"}`, []uint64{c}})
	s.wantRead(c, pub, 9, 0)

	// A former member of a private group is forbidden too.
	if _, err := s.LeaveGroup(b, priv); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JoinGroup(b, priv); codeOf(err) != Forbidden {
		t.Fatalf("former member joins a private group: %v", err)
	}
	// A private group whose last member left stays, empty and closed.
	if gi, err := s.LeaveGroup(a, priv); err != nil || gi.Owner != 0 {
		t.Fatalf("%+v %v", gi, err)
	}
	if _, err := s.JoinGroup(a, priv); codeOf(err) != Forbidden {
		t.Fatalf("join an empty private group: %v", err)
	}
	auditCache(t, s.Store)
	s = s.reopen()
	if gi, err := s.GroupMembers(c, pub, 0, 10); err != nil || gi.Owner != c || !slices.Equal(gi.Members, []uint64{c}) {
		t.Fatalf("after reopen: %+v %v", gi, err)
	}
}

func TestGroupAddRemove(t *testing.T) { forCaches(t, testGroupAddRemove) }

func testGroupAddRemove(t *testing.T) {
	s := newT(t)
	var u []uint64
	for i := range 8 {
		u = append(u, s.user(fmt.Sprint("u", i)))
	}
	owner, m1, m2, x, y, z, out := u[0], u[1], u[2], u[3], u[4], u[5], u[6]
	g := s.group(owner, "team", m1, m2)
	other := s.group(out, "other")

	// group_add checks, in order; nothing is stored when one fails.
	s.nothingStored(owner, g, "failed adds", func() {
		for _, tc := range []struct {
			who, gid uint64
			members  []uint64
			want     Code
		}{
			{m1, 99, nil, BadRequest},
			{m1, 99, []uint64{}, BadRequest},
			{m1, 99, []uint64{x, 0}, BadRequest},
			{m1, 99, make([]uint64, 1001), BadRequest},
			{m1, 99, slices.Repeat([]uint64{x}, 1001), BadRequest}, // the bound counts the list as sent
			{m1, 99, []uint64{x}, NotFound},
			{m1, 0, []uint64{x}, NotFound},
			{out, g, []uint64{99}, NotMember},
			{m1, g, []uint64{x, 99}, NotFound},
			{m1, other, []uint64{x}, NotMember},
		} {
			_, err := s.AddMembers(tc.who, tc.gid, tc.members)
			wantCode(t, fmt.Sprintf("AddMembers(%d, %d, %d uids)", tc.who, tc.gid, len(tc.members)), err, tc.want)
		}
	})
	if gi, _ := s.GroupMembers(owner, g, 0, 10); !slices.Equal(gi.Members, []uint64{owner, m1, m2}) {
		t.Fatalf("a failed add added: %v", gi.Members)
	}

	// Any member adds; repeats count once; members already in are left out
	// of the event; the new members have the event unread, the actor not.
	gi, err := s.AddMembers(m1, g, append(slices.Repeat([]uint64{y}, 998), x, m2))
	if err != nil || gi.Count != 5 || gi.Owner != owner || gi.Members != nil {
		t.Fatalf("add: %+v %v", gi, err)
	}
	s.wantSystem(owner, g, sysCheck{2, m1, fmt.Sprintf(`{"event":"added","members":[%d,%d]}`, x, y), []uint64{owner, m1, m2, x, y}})
	s.wantRead(m1, g, 2, 0)
	s.wantRead(x, g, 1, 1)
	s.wantRead(y, g, 1, 1)
	s.wantRead(owner, g, 1, 1)
	s.nothingStored(owner, g, "adding members", func() {
		if gi, err := s.AddMembers(x, g, []uint64{owner, y, x}); err != nil || gi.Count != 5 {
			t.Fatalf("add members: %+v %v", gi, err)
		}
	})

	// group_remove checks, in order.
	s.nothingStored(owner, g, "failed removes", func() {
		for _, tc := range []struct {
			who, gid uint64
			members  []uint64
			want     Code
		}{
			{m1, 99, nil, BadRequest},
			{m1, 99, []uint64{0}, BadRequest},
			{m1, 99, make([]uint64, 1001), BadRequest},
			{m1, 99, []uint64{x}, NotFound},
			{out, g, []uint64{x}, NotMember},
			{m1, g, []uint64{x}, Forbidden},
			{m1, g, []uint64{owner}, Forbidden}, // forbidden comes first
			{owner, g, []uint64{x, owner}, BadRequest},
			{owner, g, []uint64{owner}, BadRequest},
		} {
			_, err := s.RemoveMembers(tc.who, tc.gid, tc.members)
			wantCode(t, fmt.Sprintf("RemoveMembers(%d, %d, %v)", tc.who, tc.gid, tc.members), err, tc.want)
		}
		// Non-members are ignored: none is a member, nothing stored.
		if gi, err := s.RemoveMembers(owner, g, []uint64{z, out, 99}); err != nil || gi.Count != 5 {
			t.Fatalf("remove non-members: %+v %v", gi, err)
		}
	})
	gi, err = s.RemoveMembers(owner, g, []uint64{y, z, x, y, 99})
	if err != nil || gi.Count != 3 || gi.Owner != owner {
		t.Fatalf("remove: %+v %v", gi, err)
	}
	// To the members after and the removed; only former members listed.
	s.wantSystem(owner, g, sysCheck{3, owner, fmt.Sprintf(`{"event":"removed","members":[%d,%d]}`, x, y), []uint64{owner, m1, m2, x, y}})
	s.wantRead(owner, g, 3, 0)
	for _, uid := range []uint64{x, y} {
		if _, _, err := s.History(uid, HistoryQuery{Conv: GroupConv(g), Limit: 5}); codeOf(err) != NotMember {
			t.Fatalf("removed %d reads history: %v", uid, err)
		}
		if _, _, ok := s.readState(uid, GroupConv(g)); ok {
			t.Fatalf("removed %d still lists the group", uid)
		}
		if r := s.send(&Send{From: uid, CMID: "after-removal", Group: g, Body: "x"}); codeOf(errOrNil(r.Err)) != NotMember {
			t.Fatalf("removed %d sends: %v", uid, r.Err)
		}
	}
	if m := s.send(&Send{From: m2, CMID: "m2", Group: g, Body: "x"}); m.Err != nil || !slices.Equal(m.Recipients, []uint64{owner, m1, m2}) {
		t.Fatalf("send after the removal: %+v", m)
	}
	// A removed user added back starts at the event's seq − 1.
	if _, err := s.AddMembers(m2, g, []uint64{x}); err != nil {
		t.Fatal(err)
	}
	s.wantRead(x, g, 4, 1)
	s.wantRead(m2, g, 5, 0)
	auditCache(t, s.Store)
	s = s.reopen()
	if gi, err := s.GroupMembers(x, g, 0, 10); err != nil || !slices.Equal(gi.Members, []uint64{owner, m1, m2, x}) || gi.Owner != owner {
		t.Fatalf("after reopen: %+v %v", gi, err)
	}
}

func TestGroupRename(t *testing.T) { forCaches(t, testGroupRename) }

func testGroupRename(t *testing.T) {
	s := newT(t)
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	g := s.group(a, "old", b)
	s.nothingStored(a, g, "failed renames", func() {
		for _, tc := range []struct {
			who, gid uint64
			name     string
			want     Code
		}{
			{b, 99, "", BadRequest},
			{b, 99, strings.Repeat("n", 65), BadRequest},
			{b, 99, "x", NotFound},
			{c, g, "x", NotMember},
			{b, g, "x", Forbidden},
		} {
			_, err := s.RenameGroup(tc.who, tc.gid, tc.name)
			wantCode(t, fmt.Sprintf("RenameGroup(%d, %d, %q)", tc.who, tc.gid, tc.name), err, tc.want)
		}
		if gi, err := s.RenameGroup(a, g, "old"); err != nil || gi.Name != "old" {
			t.Fatalf("same name: %+v %v", gi, err)
		}
	})
	name := strings.Repeat("é", 32)
	gi, err := s.RenameGroup(a, g, name)
	if err != nil || gi.Name != name || gi.Count != 2 || gi.Owner != a {
		t.Fatalf("rename: %+v %v", gi, err)
	}
	s.wantSystem(b, g, sysCheck{2, a, `{"event":"renamed","name":"` + name + `"}`, []uint64{a, b}})
	s.wantRead(a, g, 2, 0)
	s.wantRead(b, g, 0, 2)
	items, _, _ := s.Convs(b)
	if len(items) != 1 || items[0].Name != name {
		t.Fatalf("convs after rename: %+v", items)
	}
	auditCache(t, s.Store)
	s = s.reopen()
	if gi, err := s.GroupMembers(b, g, 0, 10); err != nil || gi.Name != name {
		t.Fatalf("after reopen: %+v %v", gi, err)
	}
}

// TestGroupChangeCommitFailure: a group change whose commit fails leaves
// neither the change nor its message, in memory or on disk, and hands
// nothing to OnSent.
func TestGroupChangeCommitFailure(t *testing.T) { forCaches(t, testGroupChangeCommitFailure) }

func testGroupChangeCommitFailure(t *testing.T) {
	failing, fs := walFailFS()
	dir := t.TempDir()
	s := openT(t, dir, Options{Fsync: true, fs: fs})
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	g := s.group(a, "g", b)
	n := len(s.systems())
	failing.Store(true)
	if _, err := s.AddMembers(a, g, []uint64{c}); codeOf(err) != Internal {
		t.Fatalf("add during failure: %v", err)
	}
	failing.Store(false)
	if len(s.systems()) != n {
		t.Fatal("OnSent got the message of a failed commit")
	}
	check := func(s *tstore) {
		t.Helper()
		if gi, err := s.GroupMembers(a, g, 0, 10); err != nil || !slices.Equal(gi.Members, []uint64{a, b}) || gi.Count != 2 {
			t.Fatalf("members %+v %v", gi, err)
		}
		if ms := s.all(a, GroupConv(g)); len(ms) != 1 {
			t.Fatalf("history %+v", ms)
		}
		if _, _, err := s.History(c, HistoryQuery{Conv: GroupConv(g), Limit: 5}); codeOf(err) != NotMember {
			t.Fatalf("c reads: %v", err)
		}
	}
	check(s) // (the live DB may hold the failed batch: no auditCache here)
	if err := s.Close(); err != errBroken {
		t.Fatalf("Close: %v", err)
	}
	cp := t.TempDir()
	copyDir(t, dir, cp)
	s2 := openT(t, cp, Options{})
	check(s2)
	if gi, err := s2.AddMembers(a, g, []uint64{c}); err != nil || gi.Count != 3 {
		t.Fatalf("add after reopen: %+v %v", gi, err)
	}
	s2.wantSystem(c, g, sysCheck{2, a, fmt.Sprintf(`{"event":"added","members":[%d]}`, c), []uint64{a, b, c}})
}

// TestDemoLobbyPublic: the demo lobby is public and alice's, its
// "created" read by every demo user; a lobby from
// before PROTOCOL §13 (private) becomes public at the next EnsureDemo,
// without a message; a demo user put back gets a "joined" message.
func TestDemoLobbyPublic(t *testing.T) { forCaches(t, testDemoLobbyPublic) }

func testDemoLobbyPublic(t *testing.T) {
	s := newT(t)
	hash := func(string) []byte { return []byte("h") }
	if err := s.EnsureDemo(hash); err != nil {
		t.Fatal(err)
	}
	alice, _ := s.UserByName("alice")
	bob, _ := s.UserByName("bob")
	carol, _ := s.UserByName("carol")
	gi, err := s.GroupMembers(bob.UID, 1, 0, 10)
	if err != nil || gi.Name != "lobby" || !gi.Public || gi.Owner != alice.UID || gi.Count != 3 {
		t.Fatalf("lobby %+v %v", gi, err)
	}
	s.wantSystem(alice.UID, 1, sysCheck{1, alice.UID, `{"event":"created","name":"lobby","public":true,"count":3}`, []uint64{alice.UID, bob.UID, carol.UID}})
	// No user's request put them in: a fresh demo has nothing unread.
	for _, u := range []User{alice, bob, carol} {
		s.wantRead(u.UID, 1, 1, 0)
	}
	// A lobby made private (as every group was before §13).
	g, err := loadGroup(s.db, 1)
	if err != nil || g == nil {
		t.Fatal(g, err)
	}
	g.public = false
	if err := s.db.Set(keyGroup(nil, 1), encodeGroup(nil, g), nil); err != nil {
		t.Fatal(err)
	}
	s = s.reopen()
	if _, err := s.LeaveGroup(carol.UID, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureDemo(hash); err != nil {
		t.Fatal(err)
	}
	gi, err = s.GroupMembers(bob.UID, 1, 0, 10)
	if err != nil || !gi.Public || gi.Owner != alice.UID || gi.Count != 3 {
		t.Fatalf("lobby after the upgrade %+v %v", gi, err)
	}
	// left (seq 2), then carol's "joined" (seq 3): nothing for the change
	// of visibility.
	s.wantSystem(carol.UID, 1, sysCheck{3, carol.UID, `{"event":"joined"}`, []uint64{alice.UID, bob.UID, carol.UID}})
	s.nothingStored(bob.UID, 1, "EnsureDemo with nothing missing", func() {
		if err := s.EnsureDemo(hash); err != nil {
			t.Fatal(err)
		}
	})
	auditCache(t, s.Store)
}
