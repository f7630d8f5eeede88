package storage

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
)

// testdata/v1 is a data dir written by the release before format v2
// (df74be6, storage code of that commit, Fsync on) with:
//
//	users 1 alice, 2 bob, 3 carol, 4 dave, 5 eve, 6 Frank
//	g:1 "lobby" (EnsureDemo): creator alice; members 1 2 3
//	g:2 "team": creator dave; members 1 4 5
//	g:3 "left": creator bob, who left; members 3
//	g:4 "empty": creator eve, who left; no members
//	d:1:2: alice "a1", bob "b1", alice "a2"; bob read up to 2
//	d:2:6: Frank "f1"
//	g:2: dave "d1", eve "e1"; alice read up to 1
//	g:1: carol "c1"
//
// It was written by a test of that commit's storage package (the
// generator is in the i12 report), its WAL not yet flushed: Open replays
// it, as after a crash.

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func openFixtureCopy(t *testing.T) (string, *logBuf) {
	t.Helper()
	dir := t.TempDir()
	copyDir(t, "testdata/v1", dir)
	return dir, &logBuf{}
}

func TestMigrateV1Fixture(t *testing.T) { forCaches(t, testMigrateV1Fixture) }

func testMigrateV1Fixture(t *testing.T) {
	dir, logs := openFixtureCopy(t)
	s := openT(t, dir, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if !strings.Contains(logs.String(), "migrated data dir to format v2") || !strings.Contains(logs.String(), "groups=4") {
		t.Fatalf("no migration log line:\n%s", logs)
	}
	checkFixture(t, s)

	// Writes go on from the migrated state.
	if m := s.sendOK(1, "a3", 2, 0, "after migration"); m.Seq != 4 || m.Conv != "d:1:2" {
		t.Fatalf("send after migration %+v", m)
	}
	if r := s.send(&Send{From: 1, CMID: "a1", To: 2, Body: "retry"}); !r.Dup || r.Msg.Seq != 1 || r.Msg.Body != "hello bob" {
		t.Fatalf("a v1 cmid after migration: %+v", r)
	}
	if uid := s.user("grace"); uid != 7 {
		t.Fatalf("next uid %d", uid)
	}
	if gi, err := s.CreateGroup(7, "new", nil); err != nil || gi.ID != 5 {
		t.Fatalf("next gid %+v %v", gi, err)
	}
	// Groups from before the upgrade are private (PROTOCOL §13): the empty
	// one cannot be joined; a member adds someone, and that change is the
	// group's first system message, after the migrated ones (none were
	// made up for the past).
	if _, err := s.JoinGroup(6, 4); codeOf(err) != Forbidden {
		t.Fatalf("join the empty migrated group: %v, want forbidden", err)
	}
	if _, err := s.JoinGroup(6, 2); codeOf(err) != Forbidden {
		t.Fatalf("join a migrated group: %v, want forbidden", err)
	}
	if gi, err := s.AddMembers(5, 2, []uint64{6}); err != nil || gi.Count != 4 || gi.Owner != 4 || gi.Public {
		t.Fatalf("add to a migrated group: %+v %v", gi, err)
	}
	if ms := s.all(6, "g:2"); len(ms) != 3 || ms[2].Kind != KindSystem || ms[2].From != 5 || ms[2].Body != `{"event":"added","members":[6]}` {
		t.Fatalf("history after the first change: %+v", ms)
	}

	// A second Open does not migrate again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	logs2 := &logBuf{}
	s = openT(t, dir, Options{Logger: slog.New(slog.NewTextHandler(logs2, nil))})
	if strings.Contains(logs2.String(), "migrat") {
		t.Fatalf("migrated twice:\n%s", logs2)
	}
	if gi, err := s.GroupMembers(6, 2, 0, 10); err != nil || gi.Owner != 4 || !slices.Equal(gi.Members, []uint64{1, 4, 5, 6}) {
		t.Fatalf("after reopen: %+v %v", gi, err)
	}
	if items, total, err := s.Convs(6); err != nil || total != 1 || len(items) != 2 || items[0].Conv != "g:2" || items[0].ReadSeq != 2 {
		t.Fatalf("Frank's convs after being added: %+v %d %v", items, total, err)
	}
}

// checkFixture checks the content of testdata/v1 (see above).
func checkFixture(t *testing.T, s *tstore) {
	t.Helper()
	for i, n := range []string{"alice", "bob", "carol", "dave", "eve", "Frank"} {
		u, ok := s.UserByName(strings.ToUpper(n))
		if !ok || u.UID != uint64(i+1) || u.Name != n {
			t.Fatalf("user %s: %+v %v", n, u, ok)
		}
	}
	for _, tc := range []struct {
		gid     uint64
		name    string
		members []uint64
		owner   uint64
	}{
		{1, "lobby", []uint64{1, 2, 3}, 1},
		{2, "team", []uint64{1, 4, 5}, 4},
		{3, "left", []uint64{3}, 3},
	} {
		gi, err := s.GroupMembers(tc.members[0], tc.gid, 0, 10)
		if err != nil || gi.Name != tc.name || gi.Count != len(tc.members) || gi.Owner != tc.owner || gi.Public ||
			!slices.Equal(gi.Members, tc.members) {
			t.Fatalf("group %d: %+v %v", tc.gid, gi, err)
		}
	}
	if _, err := s.GroupMembers(5, 4, 0, 10); codeOf(err) != NotMember {
		t.Fatalf("empty group: %v", err)
	}
	for conv, want := range map[string][]string{
		"d:1:2": {"hello bob", "hi alice", "how are you"},
		"d:2:6": {"frank here"},
		"g:2":   {"team msg 1", "team msg 2"},
		"g:1":   {"lobby msg"},
	} {
		_, a, _, _ := ParseConv(conv)
		reader := a
		if conv == "g:2" {
			reader = 4
		}
		var got []string
		for _, m := range s.all(reader, conv) {
			got = append(got, m.Body)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: %q", conv, got)
		}
	}
	items, total, err := s.Convs(2)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		conv             string
		last, read, peer uint64
	}
	var got []row
	for _, it := range items {
		got = append(got, row{it.Conv, it.LastSeq, it.ReadSeq, it.PeerReadSeq})
	}
	// Newest first: g:1 (ts 18), g:2 is not bob's, d:2:6 (15), d:1:2 (14).
	want := []row{{"g:1", 1, 0, 0}, {"d:2:6", 1, 0, 1}, {"d:1:2", 3, 2, 3}}
	if !slices.Equal(got, want) || total != 3 {
		t.Fatalf("bob's convs %+v total %d, want %+v total 3", got, total, want)
	}
	items, total, _ = s.Convs(1)
	if len(items) != 3 || total != 2 || items[1].Conv != "g:2" || items[1].ReadSeq != 1 || items[1].Unread != 1 || items[1].Owner != 4 {
		t.Fatalf("alice's convs %+v total %d", items, total)
	}
}

// TestMigrateV1Interrupted: a migration stopped after its first chunk (as
// by a crash) resumes at the next Open and ends in the same state.
func TestMigrateV1Interrupted(t *testing.T) {
	defer func(n int) { migrateChunk, migrateHook = n, nil }(migrateChunk)
	migrateChunk = 1
	dir, _ := openFixtureCopy(t)
	stop := errors.New("stop")
	var done []uint64
	migrateHook = func(gid uint64) error {
		done = append(done, gid)
		if len(done) == 2 {
			return stop
		}
		return nil
	}
	if _, err := Open(dir, Options{Logger: quietLogger()}); !errors.Is(err, stop) {
		t.Fatalf("Open: %v", err)
	}
	logs := &logBuf{}
	s := openT(t, dir, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if !strings.Contains(logs.String(), "resuming_after_gid=2") || !strings.Contains(logs.String(), "groups=2") {
		t.Fatalf("did not resume after gid 2:\n%s", logs)
	}
	if !slices.Equal(done, []uint64{1, 2, 3, 4}) {
		t.Fatalf("chunks %v", done)
	}
	checkFixture(t, s)
}

func TestOpenRefusesUnknownFormat(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	if err := s.db.Set(formatKey, []byte("magpie storage v3"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), `unknown data format "magpie storage v3"`) {
		t.Fatalf("Open: %v", err)
	}
}
