package storage

import (
	"slices"
	"testing"
)

// MarkReadGrew reports the read_seq a read set, and 0 when the mark did
// not move — also after the user's own send moved it (no receipt for
// that, PROTOCOL §14).
func TestMarkReadGrew(t *testing.T) {
	forCaches(t, func(t *testing.T) {
		s := newT(t)
		a, b := s.user("a"), s.user("b")
		g := s.group(a, "g", b)
		for i := 0; i < 3; i++ {
			s.sendOK(a, "d"+string(rune('0'+i)), b, 0, "x")
			s.sendOK(a, "g"+string(rune('0'+i)), 0, g, "x")
		}
		// The group's seq 1 is its "created" system message (§13), so its
		// last seq is 4 where the direct conversation's is 3.
		for _, c := range []struct {
			conv string
			last uint64
		}{{"d:1:2", 3}, {GroupConv(g), 4}} {
			conv, last := c.conv, c.last
			steps := []struct{ seq, read, grew uint64 }{
				{2, 2, 2}, {2, 2, 0}, {1, 2, 0}, {9, last, last}, {9, last, 0},
			}
			for _, st := range steps {
				read, _, _, grew, err := s.MarkReadGrew(b, conv, st.seq)
				if err != nil || read != st.read || grew != st.grew {
					t.Fatalf("%s MarkReadGrew(%d) = read %d grew %d %v, want %d %d", conv, st.seq, read, grew, err, st.read, st.grew)
				}
			}
			// a's sends moved a's mark: a read of what a sent does not grow it.
			if _, _, _, grew, err := s.MarkReadGrew(a, conv, last); err != nil || grew != 0 {
				t.Fatalf("%s: sender's read grew %d %v, want 0", conv, grew, err)
			}
		}
		_, _, _, _, err := s.MarkReadGrew(b, "d:1:9", 1)
		wantCode(t, "unknown peer", err, NotFound)
	})
}

func TestAudience(t *testing.T) {
	forCaches(t, func(t *testing.T) {
		s := newT(t)
		a, b, c := s.user("a"), s.user("b"), s.user("c")
		g := s.group(a, "g", b)
		big := s.group(a, "big", b, c)
		conv, bigConv := GroupConv(g), GroupConv(big)
		cases := []struct {
			uid  uint64
			conv string
			max  int
			code Code
			want Audience
		}{
			{a, "d:1:2", 0, "", Audience{Count: 2, Members: []uint64{a, b}}},
			{b, "d:1:2", 100, "", Audience{Count: 2, Members: []uint64{a, b}}},
			{c, "d:1:2", 100, NotMember, Audience{}},
			{a, "d:1:9", 100, NotFound, Audience{}},
			{a, "d:2:1", 100, BadRequest, Audience{}},
			{a, "x", 100, BadRequest, Audience{}},
			{a, conv, 2, "", Audience{Group: true, Count: 2, Members: []uint64{a, b}}},
			{a, bigConv, 2, "", Audience{Group: true, Count: 3}},
			{a, bigConv, 0, "", Audience{Group: true, Count: 3}},
			{c, conv, 100, NotMember, Audience{}},
			{c, "g:99", 100, NotFound, Audience{}},
		}
		for _, tc := range cases {
			got, err := s.Audience(tc.uid, tc.conv, tc.max, false)
			wantCode(t, tc.conv, err, tc.code)
			if err == nil && (got.Group != tc.want.Group || got.Count != tc.want.Count || !slices.Equal(got.Members, tc.want.Members)) {
				t.Errorf("Audience(%d, %s, %d) = %+v, want %+v", tc.uid, tc.conv, tc.max, got, tc.want)
			}
			// The cached path agrees, or says it needs a read.
			got2, err2 := s.Audience(tc.uid, tc.conv, tc.max, true)
			if err2 == ErrNotCached {
				continue
			}
			if codeOf(err2) != tc.code || got2.Count != got.Count || !slices.Equal(got2.Members, got.Members) {
				t.Errorf("cached Audience(%d, %s, %d) = %+v %v, want %+v %v", tc.uid, tc.conv, tc.max, got2, err2, got, err)
			}
		}
		// With the default cache, a group whose list was read once is
		// answered from memory.
		if testCacheSize(t) == 0 {
			if _, err := s.Audience(b, conv, 10, true); err != nil {
				t.Errorf("cached Audience after a load: %v", err)
			}
		}
		// A leave shows at once in both paths.
		if _, err := s.LeaveGroup(b, g); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Audience(b, conv, 10, false); codeOf(err) != NotMember {
			t.Errorf("after leaving: %v", err)
		}
		if _, err := s.Audience(b, conv, 10, true); err != ErrNotCached && codeOf(err) != NotMember {
			t.Errorf("cached, after leaving: %v", err)
		}
		if got, err := s.Audience(a, conv, 10, false); err != nil || !slices.Equal(got.Members, []uint64{a}) {
			t.Errorf("after b left: %+v %v", got, err)
		}
	})
}

func TestReadMarks(t *testing.T) {
	forCaches(t, func(t *testing.T) {
		s := newT(t)
		a, b, c := s.user("a"), s.user("b"), s.user("c")
		// A direct conversation without messages: the peer at 0.
		if rs, err := s.ReadMarks(a, "d:1:2", 0); err != nil || !slices.Equal(rs, []ReadState{{b, 0}}) {
			t.Fatalf("empty direct: %v %v", rs, err)
		}
		s.sendOK(a, "1", b, 0, "x")
		s.sendOK(a, "2", b, 0, "x")
		if rs, err := s.ReadMarks(b, "d:1:2", 0); err != nil || !slices.Equal(rs, []ReadState{{a, 2}}) {
			t.Fatalf("direct, peer sent: %v %v", rs, err)
		}
		if _, _, _, err := s.MarkRead(b, "d:1:2", 1); err != nil {
			t.Fatal(err)
		}
		if rs, err := s.ReadMarks(a, "d:1:2", 0); err != nil || !slices.Equal(rs, []ReadState{{b, 1}}) {
			t.Fatalf("direct after read: %v %v", rs, err)
		}
		// The group's seq 1 is its "created" system message; b's send is 2.
		g := s.group(a, "g", b, c)
		s.sendOK(b, "g1", 0, g, "x")
		if _, _, _, err := s.MarkRead(c, GroupConv(g), 1); err != nil {
			t.Fatal(err)
		}
		if rs, err := s.ReadMarks(a, GroupConv(g), 3); err != nil || !slices.Equal(rs, []ReadState{{b, 2}, {c, 1}}) {
			t.Fatalf("group: %v %v", rs, err)
		}
		if rs, err := s.ReadMarks(b, GroupConv(g), 3); err != nil || !slices.Equal(rs, []ReadState{{a, 1}, {c, 1}}) {
			t.Fatalf("group from b: %v %v", rs, err)
		}
		// Checks in order: conv errors first, then the size.
		_, err := s.ReadMarks(a, GroupConv(g), 2)
		wantCode(t, "group above max", err, Forbidden)
		_, err = s.ReadMarks(a, GroupConv(g), 0)
		wantCode(t, "group receipts off", err, Forbidden)
		_, err = s.ReadMarks(a, "g:0", 0)
		wantCode(t, "malformed", err, BadRequest)
		_, err = s.ReadMarks(a, "g:77", 0)
		wantCode(t, "unknown group before forbidden", err, NotFound)
		x := s.user("x")
		_, err = s.ReadMarks(x, GroupConv(g), 0)
		wantCode(t, "non-member before forbidden", err, NotMember)
		_, err = s.ReadMarks(x, "d:1:2", 0)
		wantCode(t, "outsider of a direct conv", err, NotMember)
		_, err = s.ReadMarks(a, "d:1:99", 0)
		wantCode(t, "unknown peer", err, NotFound)
	})
}

func TestLastSeen(t *testing.T) {
	s := newT(t)
	const run1, run2, run3 = 1000, 2000, 3000
	load := func(s *tstore, run int64, uids ...uint64) []int64 {
		t.Helper()
		got, err := s.LoadLastSeen(run, uids)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := load(s, run1, 1, 2); !slices.Equal(got, []int64{0, 0}) {
		t.Fatalf("nothing stored: %v", got)
	}
	// Run 1: user 1 went offline at 500, user 2 came online (last seen
	// 300 before), user 3 came online with nothing known.
	if err := s.SaveLastSeen(run1, 600, []LastSeen{{UID: 1, At: 500}, {UID: 2, At: 300, Online: true}, {UID: 3, Online: true}}, false); err != nil {
		t.Fatal(err)
	}
	if got := load(s, run1, 1, 2, 3, 4); !slices.Equal(got, []int64{500, 300, 0, 0}) {
		t.Fatalf("same run: %v", got)
	}
	if err := s.SaveLastSeen(run1, 900, nil, false); err != nil {
		t.Fatal(err)
	}
	// Run 1 "crashed": its online users read as seen at its last
	// checkpoint, in a later run and after a reopen.
	s = s.reopen()
	if got := load(s, run2, 1, 2, 3); !slices.Equal(got, []int64{500, 900, 900}) {
		t.Fatalf("after run 1 crashed: %v", got)
	}
	// Run 2 ends gracefully: user 3 was online at the shutdown (1200).
	if err := s.SaveLastSeen(run2, 1100, []LastSeen{{UID: 3, Online: true}}, false); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveLastSeen(run2, 1200, []LastSeen{{UID: 3, At: 1200}}, true); err != nil {
		t.Fatal(err)
	}
	s = s.reopen()
	if got := load(s, run3, 1, 2, 3); !slices.Equal(got, []int64{500, 900, 1200}) {
		t.Fatalf("after run 2 ended: %v", got)
	}
	var rk [17]byte
	runKey(rk[:], run2)
	if found, err := exists(s.db, rk[:]); err != nil || found {
		t.Errorf("run 2's record after its final checkpoint: found %v %v", found, err)
	}
	if err := s.SaveLastSeen(0, 1, nil, false); codeOf(err) != BadRequest {
		t.Errorf("run 0: %v", err)
	}
}
