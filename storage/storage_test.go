package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseConv(t *testing.T) {
	for _, tc := range []struct {
		in    string
		group bool
		a, b  uint64
		ok    bool
	}{
		{"d:1:2", false, 1, 2, true},
		{"d:7:1234567", false, 7, 1234567, true},
		{"g:7", true, 7, 0, true},
		{"g:18446744073709551615", true, 18446744073709551615, 0, true},
		{"g:18446744073709551616", false, 0, 0, false},
		{"g:0", false, 0, 0, false},
		{"g:07", false, 0, 0, false},
		{"g:", false, 0, 0, false},
		{"g:-1", false, 0, 0, false},
		{"g:+1", false, 0, 0, false},
		{"g:1:2", false, 0, 0, false},
		{"d:2:1", false, 0, 0, false},
		{"d:1:1", false, 0, 0, false},
		{"d:0:1", false, 0, 0, false},
		{"d:01:2", false, 0, 0, false},
		{"d:1:02", false, 0, 0, false},
		{"d:1", false, 0, 0, false},
		{"d:1:", false, 0, 0, false},
		{"d::2", false, 0, 0, false},
		{"d:1:2:3", false, 0, 0, false},
		{"x:1:2", false, 0, 0, false},
		{"", false, 0, 0, false},
		{"D:1:2", false, 0, 0, false},
		{" d:1:2", false, 0, 0, false},
		{"d:1:2 ", false, 0, 0, false},
	} {
		g, a, b, ok := ParseConv(tc.in)
		if g != tc.group || a != tc.a || b != tc.b || ok != tc.ok {
			t.Errorf("ParseConv(%q) = %v %d %d %v, want %v %d %d %v", tc.in, g, a, b, ok, tc.group, tc.a, tc.b, tc.ok)
		}
	}
	if got := DirectConv(9, 3); got != "d:3:9" {
		t.Errorf("DirectConv(9,3) = %q", got)
	}
	if got := GroupConv(42); got != "g:42" {
		t.Errorf("GroupConv(42) = %q", got)
	}
}

func TestUsers(t *testing.T) { forCaches(t, testUsers) }

func testUsers(t *testing.T) {
	s := newT(t)
	alice := s.user("Alice")
	bob := s.user("bob")
	if alice != 1 || bob != 2 {
		t.Fatalf("uids %d %d, want 1 2", alice, bob)
	}
	if _, err := s.CreateUser("ALICE", nil); err != ErrExists {
		t.Fatalf("CreateUser ALICE: %v, want ErrExists", err)
	}
	if _, err := s.CreateUser("", nil); codeOf(err) != BadRequest {
		t.Fatalf("CreateUser empty: %v", err)
	}
	u, ok := s.UserByName("aLiCe")
	if !ok || u.UID != alice || u.Name != "Alice" || string(u.Hash) != "hash-Alice" {
		t.Fatalf("UserByName: %+v %v", u, ok)
	}
	if _, ok := s.UserByName("carol"); ok {
		t.Fatal("UserByName carol found")
	}
	if u, ok := s.UserByID(bob); !ok || u.Name != "bob" {
		t.Fatalf("UserByID: %+v %v", u, ok)
	}
	if _, ok := s.UserByID(99); ok {
		t.Fatal("UserByID 99 found")
	}

	ids, err := s.ImportUsers([]User{{Name: "carol"}, {Name: "BOB"}, {Name: "al"}, {Name: "Carol"}, {Name: "alan"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{3, bob, 4, 3, 5}; !slices.Equal(ids, want) {
		t.Fatalf("ImportUsers ids %v, want %v", ids, want)
	}
	names := func(us []User) string {
		var n []string
		for _, u := range us {
			n = append(n, fmt.Sprintf("%d:%s", u.UID, u.Name))
		}
		return strings.Join(n, " ")
	}
	for _, tc := range []struct {
		prefix string
		after  uint64
		limit  int
		want   string
	}{
		{"", 0, 100, "1:Alice 2:bob 3:carol 4:al 5:alan"},
		{"AL", 0, 100, "1:Alice 4:al 5:alan"},
		{"al", 1, 100, "4:al 5:alan"},
		{"al", 0, 2, "1:Alice 4:al"},
		{"ala", 0, 2, "5:alan"},
		{"", 5, 10, ""},
		{"z", 0, 10, ""},
		{"", 0, 0, ""},
	} {
		if got := names(s.Users(tc.prefix, tc.after, tc.limit)); got != tc.want {
			t.Errorf("Users(%q, %d, %d) = %q, want %q", tc.prefix, tc.after, tc.limit, got, tc.want)
		}
	}
	s = s.reopen()
	if got := names(s.Users("", 0, 100)); got != "1:Alice 2:bob 3:carol 4:al 5:alan" {
		t.Fatalf("after reopen: %q", got)
	}
	if uid := s.user("dave"); uid != 6 {
		t.Fatalf("uid after reopen %d, want 6", uid)
	}
	if _, err := s.CreateUser("CAROL", nil); err != ErrExists {
		t.Fatalf("CreateUser CAROL after reopen: %v", err)
	}
}

func TestImportUsersMany(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	s := newT(t)
	us := make([]User, 19000)
	for i := range us {
		us[i] = User{Name: fmt.Sprintf("user%05d", i), Hash: []byte("$2a$10$0123456789012345678901234567890123456789012345678901")}
	}
	ids, err := s.ImportUsers(us)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 19000 || ids[0] != 1 || ids[18999] != 19000 {
		t.Fatalf("ids: %d %d %d", len(ids), ids[0], ids[len(ids)-1])
	}
	s = s.reopen()
	if u, ok := s.UserByName("USER12345"); !ok || u.UID != 12346 {
		t.Fatalf("after reopen: %+v %v", u, ok)
	}
	ids2, err := s.ImportUsers(us[:10])
	if err != nil || !slices.Equal(ids2, ids[:10]) {
		t.Fatalf("re-import: %v %v", ids2, err)
	}
}

func TestSendRules(t *testing.T) { forCaches(t, testSendRules) }

func testSendRules(t *testing.T) {
	s := openT(t, t.TempDir(), Options{MaxBody: 10})
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	g := s.group(a, "g", b)

	m := s.sendOK(a, "x1", b, 0, "hello")
	if m.Conv != "d:1:2" || m.Seq != 1 || m.From != a || m.Kind != "text" || m.Body != "hello" || m.CMID != "x1" || m.TS == 0 {
		t.Fatalf("first message %+v", m)
	}
	r := s.send(&Send{From: b, CMID: "x1", To: a, Body: "hello"})
	if r.Err != nil || r.Dup || r.Msg.Seq != 2 {
		t.Fatalf("same cmid, other sender: %+v", r)
	}
	if !slices.Equal(r.Recipients, []uint64{a, b}) {
		t.Fatalf("direct recipients %v", r.Recipients)
	}

	// A stored cmid wins over every other rule.
	for _, dup := range []*Send{
		{From: a, CMID: "x1", To: c, Body: "other"},
		{From: a, CMID: "x1", To: b, Body: "far too large body"},
		{From: a, CMID: "x1", To: 99, Body: "x"},
		{From: a, CMID: "x1", Group: 99, Body: "x"},
		{From: a, CMID: "x1", To: a, Body: "x"},
	} {
		r := s.send(dup)
		if r.Err != nil || !r.Dup || r.Msg != m {
			t.Fatalf("dup %+v: got err %v dup %v msg %+v, want original %+v", dup, r.Err, r.Dup, r.Msg, m)
		}
	}

	// Then size, then recipient, in that order.
	for _, tc := range []struct {
		m    Send
		want Code
	}{
		{Send{From: a, CMID: "e1", To: 99, Body: "12345678901"}, TooLarge},
		{Send{From: a, CMID: "e2", To: a, Body: "12345678901"}, TooLarge},
		{Send{From: a, CMID: "e3", To: 99, Body: "x"}, NotFound},
		{Send{From: a, CMID: "e4", Group: 99, Body: "x"}, NotFound},
		{Send{From: c, CMID: "e5", Group: g, Body: "x"}, NotMember},
		{Send{From: a, CMID: "e6", To: a, Body: "x"}, BadRequest},
		{Send{From: a, CMID: "e7", To: b, Group: g, Body: "x"}, BadRequest},
		{Send{From: a, CMID: "e8", Body: "x"}, BadRequest},
	} {
		r := s.send(&tc.m)
		if codeOf(errOrNil(r.Err)) != tc.want || r.Dup {
			t.Errorf("%+v: err %v, want %s", tc.m, r.Err, tc.want)
		}
	}
	// Rejected cmids were not stored: they can be used now.
	if m := s.sendOK(a, "e1", b, 0, "ok now"); m.Seq != 3 {
		t.Fatalf("e1 retry seq %d", m.Seq)
	}
	// Exactly MaxBody is fine.
	s.sendOK(a, "max", b, 0, "1234567890")

	gm := s.sendOK(b, "g1", 0, g, "to group")
	if gm.Conv != fmt.Sprintf("g:%d", g) || gm.Seq != 2 { // after "created"
		t.Fatalf("group message %+v", gm)
	}
	r = s.send(&Send{From: a, CMID: "g2", Group: g, Body: "x", Kind: "sticker"})
	if r.Err != nil || r.Msg.Kind != "sticker" || !slices.Equal(r.Recipients, []uint64{a, b}) {
		t.Fatalf("group send %+v", r)
	}
	st := s.Stats()
	if st.Stored != 7 || st.Dups != 5 || st.Rejected != 8 { // the "created" message counts

		t.Fatalf("stats %+v", st)
	}
}

func errOrNil(e *Error) error {
	if e == nil {
		return nil
	}
	return e
}

// gate blocks the committer inside OnSent of a marker send, so that a test
// can queue operations and have them taken as one batch.
type gate struct {
	entered, release chan struct{}
}

func newGate() *gate { return &gate{make(chan struct{}), make(chan struct{})} }

func (g *gate) onSent(batch []*Send) {
	for _, m := range batch {
		if m.Tag == g {
			close(g.entered)
			<-g.release
		}
	}
}

func TestDedupSameBatchAndQueue(t *testing.T) { forCaches(t, testDedupSameBatchAndQueue) }

func testDedupSameBatchAndQueue(t *testing.T) {
	g := newGate()
	var sizes []int
	var mu sync.Mutex
	s := openT(t, t.TempDir(), Options{OnSent: g.onSent, OnCommit: func(n int, _, _ time.Duration) {
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
	}})
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	if err := s.Submit(&Send{From: a, CMID: "block", To: b, Body: "x", Tag: g}); err != nil {
		t.Fatal(err)
	}
	<-g.entered
	mu.Lock()
	sizes = nil
	mu.Unlock()
	// Queued behind the blocked committer: one batch. The duplicate names
	// another recipient and a too large body: it still gets the original.
	orig := &Send{From: a, CMID: "same", To: b, Body: "first"}
	dup := &Send{From: a, CMID: "same", To: c, Body: strings.Repeat("x", 20000)}
	failed := &Send{From: a, CMID: "bad", To: 99, Body: "x"}
	retry := &Send{From: a, CMID: "bad", To: c, Body: "retry"}
	other := &Send{From: b, CMID: "same", To: a, Body: "other sender"}
	chans := make([]chan struct{}, 5)
	for i, m := range []*Send{orig, dup, failed, retry, other} {
		chans[i] = make(chan struct{})
		m.Tag = chans[i]
		if err := s.Submit(m); err != nil {
			t.Fatal(err)
		}
	}
	close(g.release)
	for _, ch := range chans {
		<-ch
	}
	mu.Lock()
	if !slices.Equal(sizes, []int{5}) {
		t.Errorf("batch sizes %v, want [5]", sizes)
	}
	mu.Unlock()
	if orig.Err != nil || orig.Dup || orig.Msg.Seq != 2 {
		t.Fatalf("orig %+v", orig)
	}
	if dup.Err != nil || !dup.Dup || dup.Msg != orig.Msg || !slices.Equal(dup.Recipients, orig.Recipients) {
		t.Fatalf("dup %+v", dup)
	}
	if codeOf(errOrNil(failed.Err)) != NotFound {
		t.Fatalf("failed %+v", failed)
	}
	if retry.Err != nil || retry.Dup || retry.Msg.Conv != "d:1:3" || retry.Msg.Seq != 1 {
		t.Fatalf("retry after a rejected cmid %+v", retry)
	}
	if other.Err != nil || other.Dup || other.Msg.Seq != 3 {
		t.Fatalf("other %+v", other)
	}
	// Across a reopen.
	s = s.reopen()
	r := s.send(&Send{From: a, CMID: "same", To: b, Body: "again"})
	if !r.Dup || r.Msg != orig.Msg {
		t.Fatalf("after reopen: %+v, want %+v", r.Msg, orig.Msg)
	}
	if got := seqs(s.all(a, "d:1:2")); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("history seqs %v", got)
	}
}

func TestGaplessConcurrentGroup(t *testing.T) { forCaches(t, testGaplessConcurrentGroup) }

// testGaplessConcurrentGroup: concurrent senders and, between their
// batches, membership and name changes (barriers with their system
// messages, PROTOCOL §13) share one gapless seq sequence, and OnSent
// sees every message of the group in seq order.
func testGaplessConcurrentGroup(t *testing.T) {
	s := newT(t)
	const senders, each, changes = 8, 300, 40
	uids := make([]uint64, senders)
	for i := range uids {
		uids[i] = s.user(fmt.Sprintf("u%d", i))
	}
	extra := s.user("extra")
	g := s.group(uids[0], "busy", uids[1:]...)
	var wg sync.WaitGroup
	results := make([][]*Send, senders)
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pending []chan struct{}
			for j := range each {
				m := &Send{From: uids[i], CMID: fmt.Sprintf("c%d", j), Group: g, Body: fmt.Sprintf("%d/%d", i, j)}
				ch := make(chan struct{})
				m.Tag = ch
				if err := s.Submit(m); err != nil {
					t.Error(err)
					return
				}
				results[i] = append(results[i], m)
				pending = append(pending, ch)
			}
			for _, ch := range pending {
				<-ch
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for j := range changes {
			var err error
			switch j % 4 {
			case 0:
				_, err = s.AddMembers(uids[0], g, []uint64{extra})
			case 1:
				_, err = s.RenameGroup(uids[0], g, fmt.Sprint("busy", j))
			case 2:
				_, err = s.RemoveMembers(uids[0], g, []uint64{extra})
			case 3:
				_, err = s.GroupMembers(uids[1], g, 0, 10)
			}
			if err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
	seen := make(map[uint64]string)
	for i, rs := range results {
		var prev uint64
		for _, m := range rs {
			if m.Err != nil || m.Dup {
				t.Fatalf("sender %d: %+v", i, m)
			}
			if m.Msg.Seq <= prev {
				t.Fatalf("sender %d: seq %d after %d", i, m.Msg.Seq, prev)
			}
			prev = m.Msg.Seq
			if o, dup := seen[m.Msg.Seq]; dup {
				t.Fatalf("seq %d given to %q and %q", m.Msg.Seq, o, m.Body)
			}
			seen[m.Msg.Seq] = m.Body
		}
	}
	systems := 1 + changes/4*3 // created, then added, renamed, removed per round
	for _, m := range s.systems() {
		if o, dup := seen[m.Msg.Seq]; dup {
			t.Fatalf("seq %d given to %q and the system message %q", m.Msg.Seq, o, m.Body)
		}
		seen[m.Msg.Seq] = m.Body
	}
	total := senders*each + systems
	hist := s.all(uids[3], GroupConv(g))
	if len(hist) != total || len(seen) != total {
		t.Fatalf("history has %d messages, %d were reported, want %d", len(hist), len(seen), total)
	}
	var prevTS int64
	for i, m := range hist {
		if m.Seq != uint64(i+1) || seen[m.Seq] != m.Body {
			t.Fatalf("history[%d] = %+v", i, m)
		}
		if m.TS < prevTS {
			t.Fatalf("ts went back at seq %d", m.Seq)
		}
		prevTS = m.TS
	}
	// OnSent order is commit order: per conversation, seq order.
	var last uint64
	for _, b := range s.batches {
		for _, m := range b {
			if m.Err == nil && m.Msg.Conv == GroupConv(g) {
				if m.Msg.Seq != last+1 {
					t.Fatalf("OnSent seq %d after %d", m.Msg.Seq, last)
				}
				last = m.Msg.Seq
			}
		}
	}
	auditCache(t, s.Store)
	// Seqs continue after a reopen, without gaps or reuse.
	s = s.reopen()
	if m := s.sendOK(uids[5], "after-reopen", 0, g, "x"); m.Seq != uint64(total)+1 {
		t.Fatalf("seq after reopen %d", m.Seq)
	}
}

func TestTimestampsMonotonic(t *testing.T) { forCaches(t, testTimestampsMonotonic) }

func testTimestampsMonotonic(t *testing.T) {
	var now atomic.Int64
	now.Store(1_000_000)
	s := openT(t, t.TempDir(), Options{clock: now.Load})
	a, b := s.user("a"), s.user("b")
	m1 := s.sendOK(a, "1", b, 0, "x")
	now.Store(500) // the clock steps back
	m2 := s.sendOK(b, "2", a, 0, "x")
	now.Store(2_000_000)
	m3 := s.sendOK(a, "3", b, 0, "x")
	if m1.TS != 1_000_000 || m2.TS != 1_000_000 || m3.TS != 2_000_000 {
		t.Fatalf("ts %d %d %d", m1.TS, m2.TS, m3.TS)
	}
	now.Store(10)
	s = s.reopen()
	if m4 := s.sendOK(a, "4", b, 0, "x"); m4.TS != 2_000_000 {
		t.Fatalf("ts after reopen %d", m4.TS)
	}
	// A new conversation starts from the clock.
	c := s.user("c")
	if m := s.sendOK(a, "5", c, 0, "x"); m.TS != 10 {
		t.Fatalf("new conv ts %d", m.TS)
	}
}

func TestHistory(t *testing.T) { forCaches(t, testHistory) }

func testHistory(t *testing.T) {
	s := newT(t)
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	for i := 1; i <= 10; i++ {
		s.sendOK(a, fmt.Sprint(i), b, 0, fmt.Sprint("m", i))
	}
	const conv = "d:1:2"
	q := func(after, before uint64, hasAfter, hasBefore bool, limit int) ([]uint64, bool) {
		t.Helper()
		ms, more, err := s.History(b, HistoryQuery{Conv: conv, After: after, HasAfter: hasAfter, Before: before, HasBefore: hasBefore, Limit: limit})
		if err != nil {
			t.Fatalf("History: %v", err)
		}
		for _, m := range ms {
			if m.Conv != conv || m.Body != fmt.Sprint("m", m.Seq) || m.From != a {
				t.Fatalf("message %+v", m)
			}
		}
		return seqs(ms), more
	}
	for _, tc := range []struct {
		name             string
		after, before    uint64
		hasAfter, hasBef bool
		limit            int
		want             []uint64
		more             bool
	}{
		{"newest", 0, 0, false, false, 3, []uint64{8, 9, 10}, true},
		{"newest all", 0, 0, false, false, 10, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, false},
		{"newest big", 0, 0, false, false, 200, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, false},
		{"after 0", 0, 0, true, false, 3, []uint64{1, 2, 3}, true},
		{"after 7", 7, 0, true, false, 3, []uint64{8, 9, 10}, false},
		{"after 8", 8, 0, true, false, 3, []uint64{9, 10}, false},
		{"after 10", 10, 0, true, false, 3, []uint64{}, false},
		{"after 1000", 1000, 0, true, false, 3, []uint64{}, false},
		{"after max", ^uint64(0), 0, true, false, 3, []uint64{}, false},
		{"before 6", 0, 6, false, true, 3, []uint64{3, 4, 5}, true},
		{"before 4", 0, 4, false, true, 3, []uint64{1, 2, 3}, false},
		{"before 3", 0, 3, false, true, 3, []uint64{1, 2}, false},
		{"before 1", 0, 1, false, true, 3, []uint64{}, false},
		{"before 0", 0, 0, false, true, 3, []uint64{}, false},
		{"before 1000", 0, 1000, false, true, 2, []uint64{9, 10}, true},
		{"before max", 0, ^uint64(0), false, true, 2, []uint64{9, 10}, true},
		{"limit 1", 0, 0, false, false, 1, []uint64{10}, true},
	} {
		got, more := q(tc.after, tc.before, tc.hasAfter, tc.hasBef, tc.limit)
		if !slices.Equal(got, tc.want) || more != tc.more {
			t.Errorf("%s: got %v more=%v, want %v more=%v", tc.name, got, more, tc.want, tc.more)
		}
	}
	// Errors, in precedence order.
	for _, tc := range []struct {
		uid  uint64
		q    HistoryQuery
		want Code
	}{
		{a, HistoryQuery{Conv: "d:2:1", Limit: 1}, BadRequest},
		{a, HistoryQuery{Conv: "g:0", Limit: 1}, BadRequest},
		{a, HistoryQuery{Conv: "nope", Limit: 1}, BadRequest},
		{a, HistoryQuery{Conv: conv, Limit: 0}, BadRequest},
		{a, HistoryQuery{Conv: conv, Limit: 5, HasAfter: true, HasBefore: true}, BadRequest},
		{a, HistoryQuery{Conv: "d:1:99", Limit: 5}, NotFound},
		{c, HistoryQuery{Conv: "d:1:99", Limit: 5}, NotFound}, // not_found before not_member
		{c, HistoryQuery{Conv: "d:98:99", Limit: 5}, NotFound},
		{a, HistoryQuery{Conv: "g:5", Limit: 5}, NotFound},
		{c, HistoryQuery{Conv: conv, Limit: 5}, NotMember},
	} {
		_, _, err := s.History(tc.uid, tc.q)
		wantCode(t, fmt.Sprintf("History(%d, %+v)", tc.uid, tc.q), err, tc.want)
	}
	// A direct conversation without messages: empty.
	ms, more, err := s.History(a, HistoryQuery{Conv: "d:1:3", Limit: 5})
	if err != nil || len(ms) != 0 || ms == nil || more {
		t.Fatalf("empty conversation: %v %v %v", ms, more, err)
	}
	// Group members read everything, also from before they joined; leavers
	// read nothing.
	g := s.pubGroup(a, "g", b)
	gc := GroupConv(g)
	s.sendOK(a, "g1", 0, g, "m1")
	s.sendOK(b, "g2", 0, g, "m2")
	_, _, err = s.History(c, HistoryQuery{Conv: gc, Limit: 5})
	wantCode(t, "non-member", err, NotMember)
	if _, err := s.JoinGroup(c, g); err != nil {
		t.Fatal(err)
	}
	if got := seqs(s.all(c, gc)); !slices.Equal(got, []uint64{1, 2, 3, 4}) { // created, m1, m2, joined
		t.Fatalf("joiner reads %v", got)
	}
	if _, err := s.LeaveGroup(c, g); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.History(c, HistoryQuery{Conv: gc, Limit: 5})
	wantCode(t, "leaver", err, NotMember)
}

func TestConvsAndUnread(t *testing.T) { forCaches(t, testConvsAndUnread) }

func testConvsAndUnread(t *testing.T) {
	var now atomic.Int64
	now.Store(1000)
	s := openT(t, t.TempDir(), Options{clock: now.Load})
	a, b, c, d := s.user("a"), s.user("b"), s.user("c"), s.user("d")

	items, total, err := s.Convs(a)
	if err != nil || len(items) != 0 || total != 0 {
		t.Fatalf("empty convs: %v %d %v", items, total, err)
	}
	_, _, err = s.Convs(99)
	wantCode(t, "Convs unknown user", err, NotFound)

	now.Store(2000)
	g1 := s.group(b, "one", a) // created 2000 (its "created" message)
	now.Store(3000)
	s.sendOK(b, "1", a, 0, "b→a") // d:1:2 ts 3000
	s.sendOK(b, "2", a, 0, "b→a")
	now.Store(4000)
	s.sendOK(c, "3", a, 0, "c→a") // d:1:3 ts 4000
	now.Store(1500)
	g2 := s.pubGroup(c, "two", a, d) // created 1500
	now.Store(4000)
	g3 := s.group(d, "three", a)  // created 4000: ties with d:1:3, "d:" < "g:"
	s.sendOK(a, "4", d, 0, "a→d") // a sends: its read_seq follows

	type row struct {
		conv               string
		last, read, unread uint64
		peer, group        uint64
		name               string
		hasLast            bool
	}
	check := func(uid uint64, want []row, wantTotal uint64) {
		t.Helper()
		items, total, err := s.Convs(uid)
		if err != nil {
			t.Fatal(err)
		}
		var got []row
		for _, it := range items {
			got = append(got, row{it.Conv, it.LastSeq, it.ReadSeq, it.Unread, it.Peer, it.Group, it.Name, it.Last != nil})
			if it.Last != nil && (it.Last.Seq != it.LastSeq || it.Last.Conv != it.Conv) {
				t.Fatalf("last of %s: %+v", it.Conv, it.Last)
			}
		}
		if !slices.Equal(got, want) || total != wantTotal {
			t.Fatalf("Convs(%d):\n got %+v total %d\nwant %+v total %d", uid, got, total, want, wantTotal)
		}
	}
	// Every group starts with its "created" message (PROTOCOL §13), at
	// its creation time; a, put in by others, has it unread.
	check(a, []row{
		{"d:1:3", 1, 0, 1, c, 0, "", true},
		{"d:1:4", 1, 1, 0, d, 0, "", true},
		{GroupConv(g3), 1, 0, 1, 0, g3, "three", true},
		{"d:1:2", 2, 0, 2, b, 0, "", true},
		{GroupConv(g1), 1, 0, 1, 0, g1, "one", true},
		{GroupConv(g2), 1, 0, 1, 0, g2, "two", true},
	}, 6)

	// Group messages and unread.
	now.Store(5000)
	s.sendOK(c, "5", 0, g2, "x")
	s.sendOK(c, "6", 0, g2, "y")
	s.sendOK(d, "7", 0, g2, "z")
	check(d, []row{
		{GroupConv(g2), 4, 4, 0, 0, g2, "two", true},
		{"d:1:4", 1, 0, 1, a, 0, "", true},
		{GroupConv(g3), 1, 1, 0, 0, g3, "three", true}, // d created it
	}, 1)

	// MarkRead: max(read, min(seq, last)).
	for _, tc := range []struct {
		conv              string
		seq               uint64
		read, unread, tot uint64
	}{
		{GroupConv(g2), 1, 1, 3, 8},
		{GroupConv(g2), 0, 1, 3, 8}, // never backwards
		{GroupConv(g2), 100, 4, 0, 5},
		{"d:1:2", 1, 1, 1, 4},
		{"d:1:2", 2, 2, 0, 3},
	} {
		r, u, tot, err := s.MarkRead(a, tc.conv, tc.seq)
		if err != nil || r != tc.read || u != tc.unread || tot != tc.tot {
			t.Fatalf("MarkRead(%s, %d) = %d %d %d %v, want %d %d %d", tc.conv, tc.seq, r, u, tot, err, tc.read, tc.unread, tc.tot)
		}
	}
	// A direct conversation without messages: read_seq stays 0.
	if r, u, tot, err := s.MarkRead(b, "d:2:3", 5); err != nil || r != 0 || u != 0 || tot != 0 {
		t.Fatalf("MarkRead empty: %d %d %d %v", r, u, tot, err)
	}
	for _, tc := range []struct {
		uid  uint64
		conv string
		want Code
	}{
		{a, "d:1", BadRequest},
		{a, "d:1:99", NotFound},
		{b, "d:1:99", NotFound},
		{a, "g:99", NotFound},
		{b, GroupConv(g2), NotMember},
		{b, "d:3:4", NotMember},
	} {
		_, _, _, err := s.MarkRead(tc.uid, tc.conv, 1)
		wantCode(t, "MarkRead "+tc.conv, err, tc.want)
	}

	// A joiner starts with nothing unread (its read_seq is its "joined"
	// message's seq); joining twice changes nothing.
	gi, err := s.JoinGroup(b, g2)
	if err != nil || gi.Count != 4 || gi.Members != nil || gi.Name != "two" {
		t.Fatalf("join: %+v %v", gi, err)
	}
	s.sendOK(c, "8", 0, g2, "after b joined")
	gi2, err := s.JoinGroup(b, g2)
	if err != nil || gi2.Count != 4 {
		t.Fatalf("join twice: %+v %v", gi2, err)
	}
	items, total, _ = s.Convs(b)
	if total != 1 || items[0].Conv != GroupConv(g2) || items[0].ReadSeq != 5 || items[0].Unread != 1 {
		t.Fatalf("b after join: %+v total %d", items, total)
	}
	// total_unread counts only current memberships.
	_, _, totA, _ := s.MarkRead(a, GroupConv(g2), 0)
	if _, err := s.LeaveGroup(a, g2); err != nil {
		t.Fatal(err)
	}
	_, _, totA2, _ := s.MarkRead(a, "d:1:2", 0)
	if totA != 5 || totA2 != 3 {
		t.Fatalf("total before/after leaving: %d %d", totA, totA2)
	}

	// Everything survives a reopen.
	before := map[uint64][]ConvItem{}
	for _, u := range []uint64{a, b, c, d} {
		before[u], _, _ = s.Convs(u)
	}
	s = s.reopen()
	for _, u := range []uint64{a, b, c, d} {
		after, _, _ := s.Convs(u)
		if fmt.Sprint(after) != fmt.Sprint(before[u]) {
			// Last is a pointer: compare the values.
			if !sameItems(after, before[u]) {
				t.Fatalf("uid %d after reopen:\n%+v\nwant\n%+v", u, after, before[u])
			}
		}
	}
}

func sameItems(x, y []ConvItem) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		a, b := x[i], y[i]
		if (a.Last == nil) != (b.Last == nil) || (a.Last != nil && *a.Last != *b.Last) {
			return false
		}
		a.Last, b.Last = nil, nil
		if a != b {
			return false
		}
	}
	return true
}

func TestGroups(t *testing.T) { forCaches(t, testGroups) }

func testGroups(t *testing.T) {
	s := newT(t)
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	for _, name := range []string{"", strings.Repeat("n", 65)} {
		_, err := s.CreateGroup(a, name, nil)
		wantCode(t, fmt.Sprintf("name of %d bytes", len(name)), err, BadRequest)
	}
	_, err := s.CreateGroup(a, "x", []uint64{b, 99})
	wantCode(t, "unknown member", err, NotFound)
	gi, err := s.CreateGroupWith(a, strings.Repeat("n", 64), []uint64{c, b, c, a}, true)
	if err != nil {
		t.Fatal(err)
	}
	if gi.ID != 1 || gi.Count != 3 || !slices.Equal(gi.Members, []uint64{a, b, c}) || gi.More {
		t.Fatalf("create: %+v (nothing may have been created by the failed one)", gi)
	}
	g := gi.ID
	solo, err := s.CreateGroupWith(b, "solo", nil, true)
	if err != nil || solo.Count != 1 || !slices.Equal(solo.Members, []uint64{b}) {
		t.Fatalf("solo: %+v %v", solo, err)
	}

	_, err = s.JoinGroup(a, 99)
	wantCode(t, "join unknown", err, NotFound)
	_, err = s.LeaveGroup(a, 99)
	wantCode(t, "leave unknown", err, NotFound)
	_, err = s.LeaveGroup(a, solo.ID)
	wantCode(t, "leave non-member", err, NotMember)
	_, err = s.GroupMembers(a, 99, 0, 10)
	wantCode(t, "members unknown", err, NotFound)
	_, err = s.GroupMembers(a, solo.ID, 0, 10)
	wantCode(t, "members non-member", err, NotMember)
	_, err = s.GroupMembers(b, solo.ID, 0, 0)
	wantCode(t, "members limit 0", err, BadRequest)

	more := make([]uint64, 0, 20)
	for i := range 20 {
		uid := s.user(fmt.Sprintf("m%d", i))
		more = append(more, uid)
		if gi, err := s.JoinGroup(uid, g); err != nil || gi.Count != 4+i {
			t.Fatalf("join %d: %+v %v", uid, gi, err)
		}
	}
	page, err := s.GroupMembers(b, g, 0, 5)
	if err != nil || !slices.Equal(page.Members, []uint64{1, 2, 3, 4, 5}) || !page.More || page.Count != 23 || page.Name != gi.Name {
		t.Fatalf("page 1: %+v %v", page, err)
	}
	page, _ = s.GroupMembers(b, g, 20, 5)
	if !slices.Equal(page.Members, []uint64{21, 22, 23}) || page.More {
		t.Fatalf("last page: %+v", page)
	}
	page, _ = s.GroupMembers(b, g, 18, 5)
	if !slices.Equal(page.Members, []uint64{19, 20, 21, 22, 23}) || page.More {
		t.Fatalf("exact page: %+v", page)
	}
	page, _ = s.GroupMembers(b, g, ^uint64(0), 5)
	if len(page.Members) != 0 || page.More || page.Count != 23 {
		t.Fatalf("after max: %+v", page)
	}

	// Recipients are shared snapshots: a send before a membership change
	// keeps its list. (A cache that evicts the list reads it again from
	// Pebble: a new list.)
	r1 := s.send(&Send{From: a, CMID: "r1", Group: g, Body: "x"})
	r2 := s.send(&Send{From: b, CMID: "r2", Group: g, Body: "x"})
	if &r1.Recipients[0] != &r2.Recipients[0] && testCacheSize(t) == 0 {
		t.Error("recipients copied per message")
	}
	if gi, err := s.LeaveGroup(more[0], g); err != nil || gi.Count != 22 || gi.Members != nil {
		t.Fatalf("leave: %+v %v", gi, err)
	}
	r3 := s.send(&Send{From: a, CMID: "r3", Group: g, Body: "x"})
	if len(r1.Recipients) != 23 || len(r3.Recipients) != 22 || slices.Contains(r3.Recipients, more[0]) {
		t.Fatalf("recipients %d %d", len(r1.Recipients), len(r3.Recipients))
	}
	// A leaver can't send; the last member leaving keeps the group.
	if r := s.send(&Send{From: more[0], CMID: "r4", Group: g, Body: "x"}); codeOf(errOrNil(r.Err)) != NotMember {
		t.Fatalf("leaver send: %+v", r.Err)
	}
	if gi, err := s.LeaveGroup(b, solo.ID); err != nil || gi.Count != 0 {
		t.Fatalf("last leaves: %+v %v", gi, err)
	}
	if gi, err := s.JoinGroup(c, solo.ID); err != nil || gi.Count != 1 || gi.Name != "solo" || gi.Owner != c {
		t.Fatalf("join empty group: %+v %v", gi, err)
	}

	s = s.reopen()
	page, err = s.GroupMembers(a, g, 0, 100)
	if err != nil || page.Count != 22 || slices.Contains(page.Members, more[0]) {
		t.Fatalf("after reopen: %+v %v", page, err)
	}
	if gi, err := s.CreateGroup(a, "next", nil); err != nil || gi.ID != 3 {
		t.Fatalf("gid after reopen: %+v %v", gi, err)
	}
	// created, 20 joined, r1, r2, left, r3.
	if m := s.sendOK(c, "r5", 0, g, "x"); m.Seq != 26 {
		t.Fatalf("group seq after reopen %d", m.Seq)
	}
}

func TestEnsureDemo(t *testing.T) { forCaches(t, testEnsureDemo) }

func testEnsureDemo(t *testing.T) {
	s := newT(t)
	var calls atomic.Int32
	hash := func(p string) []byte {
		calls.Add(1)
		return []byte("h(" + p + ")")
	}
	s.user("Bob") // exists already, in another case
	if err := s.EnsureDemo(hash); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 {
		t.Fatalf("hash calls %d, want 2 (alice, carol)", calls.Load())
	}
	check := func(s *tstore) {
		t.Helper()
		var uids []uint64
		for _, n := range []string{"alice", "bob", "carol"} {
			u, ok := s.UserByName(n)
			if !ok {
				t.Fatalf("%s missing", n)
			}
			uids = append(uids, u.UID)
		}
		items, _, err := s.Convs(uids[0])
		if err != nil {
			t.Fatal(err)
		}
		var lobbies []ConvItem
		for _, it := range items {
			if it.Name == "lobby" {
				lobbies = append(lobbies, it)
			}
		}
		if len(lobbies) != 1 {
			t.Fatalf("lobbies %+v", lobbies)
		}
		page, err := s.GroupMembers(uids[0], lobbies[0].Group, 0, 10)
		slices.Sort(uids)
		if err != nil || !slices.Equal(page.Members, uids) {
			t.Fatalf("lobby members %+v %v, want %v", page, err, uids)
		}
	}
	check(s)
	if u, _ := s.UserByName("alice"); string(u.Hash) != "h(password)" {
		t.Fatalf("alice hash %q", u.Hash)
	}
	if err := s.EnsureDemo(hash); err != nil {
		t.Fatal(err)
	}
	check(s)
	s = s.reopen()
	// carol left the lobby; the demo puts her back, no second lobby.
	carol, _ := s.UserByName("carol")
	if _, err := s.LeaveGroup(carol.UID, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureDemo(hash); err != nil {
		t.Fatal(err)
	}
	check(s)
	if calls.Load() != 2 {
		t.Fatalf("hash calls %d after re-runs", calls.Load())
	}
}

func TestQueueFullAndClose(t *testing.T) { forCaches(t, testQueueFullAndClose) }

func testQueueFullAndClose(t *testing.T) {
	g := newGate()
	s := openT(t, t.TempDir(), Options{QueueSize: 4, OnSent: g.onSent})
	a, b := s.user("a"), s.user("b")
	if err := s.Submit(&Send{From: a, CMID: "block", To: b, Body: "x", Tag: g}); err != nil {
		t.Fatal(err)
	}
	<-g.entered
	var queued []*Send
	for i := range 4 {
		m := &Send{From: a, CMID: fmt.Sprint(i), To: b, Body: "x", Tag: make(chan struct{})}
		if err := s.Submit(m); err != nil {
			t.Fatalf("Submit %d: %v", i, err)
		}
		queued = append(queued, m)
	}
	full := &Send{From: a, CMID: "full", To: b, Body: "x"}
	wantCode(t, "full queue", s.Submit(full), RateLimited)
	if st := s.Stats(); st.QueueLen != 4 || st.QueueCap != 4 || st.RateLimited != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Close commits everything queued; OnSent still runs for it.
	closed := make(chan error)
	go func() { closed <- s.Close() }()
	close(g.release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for _, m := range queued {
		<-m.Tag.(chan struct{})
		if m.Err != nil || m.Dup {
			t.Fatalf("queued send %+v", m)
		}
	}
	wantCode(t, "Submit after Close", s.Submit(&Send{From: a, CMID: "late", To: b, Body: "x"}), RateLimited)
	_, err := s.CreateUser("late", nil)
	wantCode(t, "CreateUser after Close", err, RateLimited)
	_, _, _, err = s.MarkRead(a, "d:1:2", 1)
	wantCode(t, "MarkRead after Close", err, RateLimited)
	// Reads after Close answer at once (they used to spin forever on the
	// released snapshot).
	_, _, err = s.History(a, HistoryQuery{Conv: "d:1:2", Limit: 10})
	wantCode(t, "History after Close", err, RateLimited)
	_, _, err = s.Convs(a)
	wantCode(t, "Convs after Close", err, RateLimited)
	_, err = s.ReadMarks(a, "d:1:2", 0)
	wantCode(t, "ReadMarks after Close", err, RateLimited)
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	s = openT(t, s.dir, Options{})
	if got := seqs(s.all(a, "d:1:2")); len(got) != 5 {
		t.Fatalf("after reopen %v", got)
	}
	if m := s.send(&Send{From: a, CMID: "full", To: b, Body: "x"}); m.Dup || m.Msg.Seq != 6 {
		t.Fatalf("the refused send was stored: %+v", m)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(file, "db"), Options{Logger: quietLogger()}); err == nil {
		t.Fatal("Open under a regular file succeeded")
	}
	if _, err := Open(t.TempDir(), Options{QueueSize: -1, MaxBatch: -1}); err == nil ||
		!strings.Contains(err.Error(), "QueueSize") || !strings.Contains(err.Error(), "MaxBatch") {
		t.Fatalf("bad options: %v", err)
	}
	// A directory Pebble can't use: open twice (the lock is held).
	s := newT(t)
	if _, err := Open(s.dir, Options{Logger: quietLogger()}); err == nil {
		t.Fatal("second Open of a locked dir succeeded")
	}
	// Not our format.
	s2 := newT(t)
	if err := s2.db.Set(formatKey, []byte("something else"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(s2.dir, Options{Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "format") {
		t.Fatalf("foreign format: %v", err)
	}
	var e *Error
	if errors.As(errClosing, &e); e.Code != RateLimited {
		t.Fatal("errClosing")
	}
}

// TestConcurrentReadersAndWriters runs sends, read marks, membership
// changes and every read path at once (for the race detector), and checks
// that readers only ever see consistent, durable state.
func TestConcurrentReadersAndWriters(t *testing.T) { forCaches(t, testConcurrentReadersAndWriters) }

func testConcurrentReadersAndWriters(t *testing.T) {
	var sentMu sync.Mutex
	sentSeq := map[string]uint64{} // conv → highest seq reported by OnSent
	s := openT(t, t.TempDir(), Options{OnSent: func(batch []*Send) {
		sentMu.Lock()
		for _, m := range batch {
			if m.Err == nil && m.Msg.Seq > sentSeq[m.Msg.Conv] {
				sentSeq[m.Msg.Conv] = m.Msg.Seq
			}
		}
		sentMu.Unlock()
	}})
	var uids []uint64
	for i := range 6 {
		uids = append(uids, s.user(fmt.Sprint("u", i)))
	}
	g := s.pubGroup(uids[0], "g", uids[1:4]...)
	stop := make(chan struct{})
	var writers, readers sync.WaitGroup
	for w := range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			from := uids[w]
			for j := range 300 {
				m := &Send{From: from, CMID: fmt.Sprint(j), Body: "x"}
				if j%2 == 0 {
					m.Group = g
				} else {
					m.To = uids[(w+1+j%5)%6]
					if m.To == from {
						m.To = uids[5]
					}
				}
				s.send(m)
				if j%10 == 0 {
					if _, _, _, err := s.MarkRead(from, GroupConv(g), uint64(j)); err != nil && codeOf(err) != NotMember {
						t.Error(err)
					}
				}
			}
		}()
	}
	writers.Add(1)
	go s.churn(&writers, uids[5], g, 50)
	for r := range 3 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			uid := uids[r]
			for {
				select {
				case <-stop:
					return
				default:
				}
				items := s.convsChecked(uid)
				if items == nil {
					return
				}
				for _, it := range items {
					ms, _, err := s.History(uid, HistoryQuery{Conv: it.Conv, Limit: 50})
					if err != nil {
						t.Error(err)
						return
					}
					for i := 1; i < len(ms); i++ {
						if ms[i].Seq != ms[i-1].Seq+1 {
							t.Errorf("history gap in %s", it.Conv)
						}
					}
				}
				if _, err := s.GroupMembers(uid, g, 0, 100); err != nil {
					t.Error(err)
				}
				s.Users("u", 0, 10)
				_ = s.Stats()
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	// Everything reported is readable, and nothing beyond it.
	sentMu.Lock()
	defer sentMu.Unlock()
	for conv, last := range sentSeq {
		_, a, b, _ := ParseConv(conv)
		if b == 0 {
			a = uids[0]
		}
		if got := s.all(a, conv); uint64(len(got)) != last {
			t.Errorf("%s: %d messages, OnSent reported up to %d", conv, len(got), last)
		}
	}
}

// TestDedupAfterCompaction checks dedup and history when everything has
// been flushed and compacted into the bottom level (the cmid lookup uses
// Bloom filters there).
func TestDedupAfterCompaction(t *testing.T) { forCaches(t, testDedupAfterCompaction) }

func testDedupAfterCompaction(t *testing.T) {
	s := newT(t)
	a, b := s.user("a"), s.user("b")
	var orig []Message
	for i := range 50 {
		orig = append(orig, s.sendOK(a, fmt.Sprint("c", i), b, 0, fmt.Sprint("m", i)))
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		r := s.send(&Send{From: a, CMID: fmt.Sprint("c", i), To: b, Body: "again"})
		if !r.Dup || r.Msg != orig[i] {
			t.Fatalf("cmid c%d after compaction: %+v", i, r)
		}
	}
	if m := s.sendOK(a, "new", b, 0, "x"); m.Seq != 51 {
		t.Fatalf("seq %d", m.Seq)
	}
	if got := s.all(b, "d:1:2"); len(got) != 51 || got[10] != orig[10] {
		t.Fatalf("history %d", len(got))
	}
	s = s.reopen()
	if r := s.send(&Send{From: a, CMID: "c7", To: b, Body: "again"}); !r.Dup || r.Msg != orig[7] {
		t.Fatalf("after reopen %+v", r)
	}
}
