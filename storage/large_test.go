package storage

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
)

// largeN is the size of the large-group and many-conversations tests:
// 100,000 (issue 12), scaled down to 5,000 under -race or -short (make
// test runs -race: the scaled version runs there).
func largeN() int {
	if raceOn || testing.Short() {
		return 5000
	}
	return 100000
}

func importN(t *testing.T, s *tstore, n int, prefix string) []uint64 {
	t.Helper()
	us := make([]User, n)
	for i := range us {
		us[i] = User{Name: prefix + strconv.Itoa(i), Hash: []byte("h")}
	}
	ids, err := s.ImportUsers(us)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestLargeGroup: a group of largeN members works with a cache that holds
// its member list and with one too small for it (read from Pebble once per
// batch): membership checks, recipients, member pages, joins and leaves.
func TestLargeGroup(t *testing.T) { forCaches(t, testLargeGroup) }

func testLargeGroup(t *testing.T) {
	n := largeN()
	s := newT(t)
	uids := importN(t, s, n+1, "m")
	members, outsider := uids[:n], uids[n]
	gi, err := s.CreateGroupWith(members[0], "big", members[1:], true)
	if err != nil || gi.Count != n || len(gi.Members) != n || gi.Owner != members[0] {
		t.Fatalf("create: count %d, %d members listed, %v", gi.Count, len(gi.Members), err)
	}
	g := gi.ID
	for i, from := range []uint64{members[0], members[n/2], members[n-1]} {
		m := s.send(&Send{From: from, CMID: "c" + strconv.Itoa(i), Group: g, Body: "to everyone"})
		if m.Err != nil || len(m.Recipients) != n || m.Recipients[n-1] != members[n-1] || m.Msg.Seq != uint64(i+2) { // after "created"
			t.Fatalf("send %d: err %v, %d recipients, seq %d", i, m.Err, len(m.Recipients), m.Msg.Seq)
		}
	}
	if m := s.send(&Send{From: outsider, CMID: "x", Group: g, Body: "x"}); codeOf(errOrNil(m.Err)) != NotMember {
		t.Fatalf("outsider send: %v", m.Err)
	}
	// Every page of members.
	var all []uint64
	var after uint64
	for {
		p, err := s.GroupMembers(members[n-1], g, after, 10000)
		if err != nil || p.Count != n {
			t.Fatalf("page after %d: count %d, %v", after, p.Count, err)
		}
		all = append(all, p.Members...)
		if !p.More {
			break
		}
		after = p.Members[len(p.Members)-1]
	}
	if !slices.Equal(all, members) {
		t.Fatalf("pages hold %d members", len(all))
	}
	if _, err := s.GroupMembers(outsider, g, 0, 10); codeOf(err) != NotMember {
		t.Fatalf("outsider members: %v", err)
	}
	// Joins and leaves keep the count and the recipients exact.
	if gi, err := s.JoinGroup(outsider, g); err != nil || gi.Count != n+1 {
		t.Fatalf("join: %+v %v", gi, err)
	}
	if b := s.lastSystem(); b.Msg.Seq != 5 || b.Msg.Body != `{"event":"joined"}` || len(b.Recipients) != n+1 {
		t.Fatalf("joined: seq %d %q, %d recipients", b.Msg.Seq, b.Msg.Body, len(b.Recipients))
	}
	if m := s.send(&Send{From: outsider, CMID: "joined", Group: g, Body: "x"}); m.Err != nil || len(m.Recipients) != n+1 {
		t.Fatalf("send after join: %v, %d recipients", m.Err, len(m.Recipients))
	}
	if gi, err := s.LeaveGroup(members[0], g); err != nil || gi.Count != n || gi.Owner != members[1] {
		t.Fatalf("owner leaves: %+v %v", gi, err)
	}
	if b := s.lastSystem(); b.Msg.Seq != 7 || b.Msg.Body != fmt.Sprintf(`{"event":"left","owner":%d}`, members[1]) || len(b.Recipients) != n+1 {
		t.Fatalf("left: seq %d %q, %d recipients", b.Msg.Seq, b.Msg.Body, len(b.Recipients))
	}
	m := s.send(&Send{From: members[1], CMID: "left", Group: g, Body: "x"})
	if m.Err != nil || len(m.Recipients) != n || slices.Contains(m.Recipients, members[0]) {
		t.Fatalf("send after leave: %v, %d recipients", m.Err, len(m.Recipients))
	}
	items, total, err := s.Convs(members[n/3])
	if err != nil || len(items) != 1 || items[0].LastSeq != 8 || items[0].Unread != 8 || total != 8 {
		t.Fatalf("a member's convs %+v %d %v", items, total, err)
	}
	if got := s.all(outsider, GroupConv(g)); len(got) != 8 {
		t.Fatalf("history %d", len(got))
	}
	s = s.reopen()
	if gi, err := s.GroupMembers(members[n-1], g, members[n-2], 10); err != nil || gi.Count != n || !slices.Equal(gi.Members, []uint64{members[n-1], outsider}) {
		t.Fatalf("after reopen: %+v %v", gi, err)
	}
	auditCache(t, s.Store)
}

// TestManyConversations: a user with largeN direct conversations gets
// them all through convs pages, with exact total_unread, without the
// whole list being cached.
func TestManyConversations(t *testing.T) { forCaches(t, testManyConversations) }

func testManyConversations(t *testing.T) {
	n := largeN()
	var now int64 = 1_000_000
	s := openT(t, t.TempDir(), Options{clock: func() int64 { now++; return now }})
	uids := importN(t, s, n+1, "p")
	me, peers := uids[0], uids[1:]
	// me writes to everybody (in batches), every tenth peer answers.
	const window = 4096
	pending := make([]*Send, 0, window)
	flush := func() {
		for _, m := range pending {
			<-m.Tag.(chan struct{})
			if m.Err != nil {
				t.Fatalf("send %s: %v", m.CMID, m.Err)
			}
		}
		pending = pending[:0]
	}
	submit := func(m *Send) {
		m.Tag = make(chan struct{})
		if err := s.Submit(m); err != nil {
			t.Fatal(err)
		}
		if pending = append(pending, m); len(pending) == window {
			flush()
		}
	}
	for i, p := range peers {
		submit(&Send{From: me, CMID: "m" + strconv.Itoa(i), To: p, Body: "hi"})
	}
	flush()
	answered := 0
	for i := 0; i < n; i += 10 {
		submit(&Send{From: peers[i], CMID: "a", To: me, Body: "hello"})
		answered++
	}
	flush()

	// Without a limit: the first 10,000 (every item for n ≤ 10,000).
	items, total, err := s.Convs(me)
	if err != nil || len(items) != min(n, convsAllMax) || total != uint64(answered) {
		t.Fatalf("convs: %d items, total %d (want %d), %v", len(items), total, answered, err)
	}
	// Pages through the cursor: every conversation once, in order.
	seen := map[string]bool{}
	var q ConvsQuery
	q.Limit = n / 10
	var prev *ConvItem
	pages := 0
	for {
		p, err := s.ConvsPaged(me, q)
		if err != nil || p.TotalUnread != uint64(answered) {
			t.Fatalf("page %d: total %d, %v", pages, p.TotalUnread, err)
		}
		pages++
		for i := range p.Items {
			it := &p.Items[i]
			if seen[it.Conv] {
				t.Fatalf("%s listed twice", it.Conv)
			}
			seen[it.Conv] = true
			if prev != nil && !before(prev.TS, prev.Conv, it.TS, it.Conv) {
				t.Fatalf("order: %s (%d) before %s (%d)", prev.Conv, prev.TS, it.Conv, it.TS)
			}
			prev = it
		}
		if !p.More {
			break
		}
		last := p.Items[len(p.Items)-1]
		q.HasBefore, q.BeforeTS, q.BeforeConv = true, last.TS, last.Conv
	}
	if len(seen) != n || pages != 10 {
		t.Fatalf("%d conversations in %d pages", len(seen), pages)
	}
	// The answers are the newest: they come first.
	first, _ := s.ConvsPaged(me, ConvsQuery{Limit: 3})
	if len(first.Items) != 3 || (first.Items[0].Peer-peers[0])%10 != 0 || first.Items[0].Unread != 1 || !first.More {
		t.Fatalf("first page %+v", first)
	}
	if _, _, tot, err := s.MarkRead(me, first.Items[0].Conv, 2); err != nil || tot != uint64(answered-1) {
		t.Fatalf("mark read: total %d %v", tot, err)
	}
	if _, err := s.ConvsPaged(me, ConvsQuery{HasBefore: true, BeforeConv: "nope"}); codeOf(err) != BadRequest {
		t.Fatalf("bad cursor: %v", err)
	}
	if _, err := s.ConvsPaged(me, ConvsQuery{Limit: -1}); codeOf(err) != BadRequest {
		t.Fatalf("negative limit: %v", err)
	}
	// A peer has one conversation.
	items, _, err = s.Convs(peers[7])
	if err != nil || len(items) != 1 || items[0].Peer != me || items[0].Unread != 1 {
		t.Fatalf("peer: %+v %v", items, err)
	}
	if st := s.Stats(); st.CacheBytes > st.CacheCap {
		// Within budget once idle (pinned entries are released).
		t.Fatalf("cache %d bytes over its %d budget", st.CacheBytes, st.CacheCap)
	}
	auditCache(t, s.Store)
}
