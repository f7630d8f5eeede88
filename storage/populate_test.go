package storage

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPopulateLayout: index numbers the conversations in the order
// Populate writes them, and each lists exactly a user's conversations.
func TestPopulateLayout(t *testing.T) {
	for _, tc := range [][2]int{{2, 1}, {10, 9}, {10, 10}, {10, 45}, {50, 120}, {1000, 999}, {1000, 2500}} {
		l := newLayout(tc[0], tc[1])
		var j uint64
		per := map[uint64][]uint64{}
		for a := uint64(1); a < l.users && j < l.convs; a++ {
			for d := uint64(1); d <= l.k && a+d <= l.users && j < l.convs; d++ {
				if got, ok := l.index(a, d); !ok || got != j {
					t.Fatalf("%v: index(%d, %d) = %d %v, want %d", tc, a, d, got, ok, j)
				}
				per[a] = append(per[a], j)
				per[a+d] = append(per[a+d], j)
				j++
			}
		}
		if j != l.convs {
			t.Fatalf("%v: enumerated %d conversations", tc, j)
		}
		for uid := uint64(1); uid <= l.users; uid++ {
			var got []uint64
			l.each(uid, func(j, a, b uint64) { got = append(got, j) })
			want := per[uid]
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("%v: conversations of %d: %v, want %v", tc, uid, got, want)
			}
		}
	}
}

// TestPopulate: a populated store opens (in both formats), holds what the
// spec says, passes the load-time checks, and takes new messages.
func TestPopulate(t *testing.T) {
	for _, v1 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v1=%v", v1), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db")
			spec := PopulateSpec{Users: 50, Convs: 120, Messages: 1003, Hash: []byte("h"), FormatV1: v1}
			if err := Populate(dir, spec); err != nil {
				t.Fatal(err)
			}
			logs := &logBuf{}
			s := openT(t, dir, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if strings.Contains(logs.String(), "migrated") != v1 {
				t.Fatalf("migration log: %s", logs)
			}
			l := newLayout(50, 120)
			total := 0
			for uid := uint64(1); uid <= 50; uid++ {
				u, ok := s.UserByName(strings.ToUpper(PopulateName("p", 50, uid)))
				if !ok || u.UID != uid || string(u.Hash) != "h" {
					t.Fatalf("user %d: %+v %v", uid, u, ok)
				}
				items, _, err := s.Convs(uid)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				l.each(uid, func(j, a, b uint64) { n++ })
				if len(items) != n {
					t.Fatalf("uid %d: %d conversations, want %d", uid, len(items), n)
				}
				for _, it := range items {
					if it.Unread > 1 || it.LastSeq < 8 || it.LastSeq > 9 {
						t.Fatalf("uid %d: %+v", uid, it)
					}
					total++
				}
			}
			if total != 240 {
				t.Fatalf("%d items in all", total)
			}
			ms := s.all(2, "d:1:2")
			if len(ms) != 9 || ms[0].From != 1 || ms[1].From != 2 || ms[8].TS-ms[0].TS != 8*60000 || len(ms[3].Body) != 60 {
				t.Fatalf("d:1:2: %+v", ms)
			}
			if r := s.send(&Send{From: 2, CMID: ms[3].CMID, To: 1, Body: "retry"}); !r.Dup || r.Msg != ms[3] {
				t.Fatalf("a populated cmid: %+v", r)
			}
			if m := s.sendOK(1, "new", 2, 0, "x"); m.Seq != 10 {
				t.Fatalf("seq %d", m.Seq)
			}
			if uid := s.user("newcomer"); uid != 51 {
				t.Fatalf("uid %d", uid)
			}
		})
	}
}
