package storage

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
)

// TestCMIDSetNoFalseNegatives: every added fingerprint is found, across
// growth, and fp and fpBytes agree.
func TestCMIDSetNoFalseNegatives(t *testing.T) {
	defer func(v int) { bgAllocMin = v }(bgAllocMin)
	bgAllocMin = 1 << 12 // exercise the background allocation too
	for _, bits := range []int{0, 8, 1} {
		s := newCMIDSet(bits)
		var fps []uint32
		for i := range 200000 {
			cmid := "c" + strconv.Itoa(i)
			f := s.fp(uint64(i%97+1), cmid)
			if g := s.fpBytes(uint64(i%97+1), []byte(cmid)); g != f {
				t.Fatalf("fp %x, fpBytes %x", f, g)
			}
			if f == 0 {
				t.Fatal("fingerprint 0")
			}
			s.add(f)
			fps = append(fps, f)
			if i%9973 == 0 {
				for _, g := range fps {
					if !s.has(g) {
						t.Fatalf("bits %d: fingerprint %x lost after %d adds", bits, g, i+1)
					}
				}
			}
		}
		for _, g := range fps {
			if !s.has(g) {
				t.Fatalf("bits %d: fingerprint %x lost", bits, g)
			}
		}
		s.migrate(len(s.old))
		slices.Sort(fps)
		if d := len(slices.Compact(fps)); d != s.n {
			t.Fatalf("bits %d: %d distinct fingerprints, set holds %d", bits, d, s.n)
		}
		if bits == 0 {
			// Full fingerprints: a new pair rarely hits.
			hits := 0
			for i := range 100000 {
				if s.has(s.fp(1000, "new"+strconv.Itoa(i))) {
					hits++
				}
			}
			if hits > 100 { // expected about 100000 * 200000 / 2^32 ≈ 5
				t.Fatalf("%d of 100000 new pairs hit", hits)
			}
			t.Logf("%d pairs: %d bytes (%.1f per pair), %d false hits of 100000", s.n, s.bytes(), float64(s.bytes())/float64(s.n), hits)
		}
	}
}

// TestCMIDFilterCollisions runs the send rules with 1- and 2-bit
// fingerprints, so nearly every new cmid collides in the filter: new cmids
// must still be stored (the exact lookup decides), and stored ones must
// dedup, before and after a reopen.
func TestCMIDFilterCollisions(t *testing.T) {
	for _, bits := range []int{1, 2} {
		t.Run(fmt.Sprint("bits=", bits), func(t *testing.T) {
			s := openT(t, t.TempDir(), Options{cmidBits: bits})
			a, b := s.user("a"), s.user("b")
			var orig []Message
			for i := range 300 {
				orig = append(orig, s.sendOK(a, fmt.Sprint("c", i), b, 0, fmt.Sprint("m", i)))
				// Same cmid from the other sender: a different pair.
				s.sendOK(b, fmt.Sprint("c", i), a, 0, "from b")
			}
			if hit := s.seen.has(s.seen.fp(a, "never-sent")); !hit {
				t.Fatalf("a %d-bit filter holding 600 pairs should collide", bits)
			}
			var extra []Message
			check := func(s *tstore) {
				t.Helper()
				for i := range 300 {
					r := s.send(&Send{From: a, CMID: fmt.Sprint("c", i), To: b, Body: "retry"})
					if r.Err != nil || !r.Dup || r.Msg != orig[i] {
						t.Fatalf("retry c%d: %+v, want %+v", i, r, orig[i])
					}
				}
				if got := s.all(a, "d:1:2"); len(got) != 600+len(extra) {
					t.Fatalf("history has %d messages, want %d", len(got), 600+len(extra))
				}
			}
			check(s)
			s = s.reopen()
			check(s)
			m := s.sendOK(a, "after-reopen", b, 0, "new")
			extra = append(extra, m)
			if m.Seq != 601 {
				t.Fatalf("seq %d", m.Seq)
			}
			s = s.reopen()
			check(s)
			if r := s.send(&Send{From: a, CMID: "after-reopen", To: b, Body: "retry"}); !r.Dup || r.Msg != m {
				t.Fatalf("after-reopen retry %+v", r)
			}
		})
	}
}

// TestCMIDFilterReopen: many cmids stored before a reopen (the filter is
// rebuilt by Open, growing several times) all dedup after it, with the
// original message whatever the retry carries, and new cmids are stored.
func TestCMIDFilterReopen(t *testing.T) {
	s := newT(t)
	a, b, c := s.user("a"), s.user("b"), s.user("c")
	const n = 5000
	orig := make([]Message, n)
	done := make([]chan struct{}, n)
	sends := make([]Send, n)
	for i := range sends {
		done[i] = make(chan struct{})
		sends[i] = Send{From: a, To: b, CMID: "k" + strconv.Itoa(i), Body: "m" + strconv.Itoa(i), Tag: done[i]}
		if err := s.Submit(&sends[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range sends {
		<-done[i]
		if sends[i].Err != nil || sends[i].Dup {
			t.Fatalf("send %d: %+v", i, sends[i])
		}
		orig[i] = sends[i].Msg
	}
	s = s.reopen()
	// Open rebuilt the filter from the cmid index (32-bit fingerprints of
	// different pairs may coincide, so n can be a little lower).
	if s.seen.n > n || s.seen.n < n-10 || s.seen.off {
		t.Fatalf("filter holds %d pairs (off %v), want %d", s.seen.n, s.seen.off, n)
	}
	for i := range n {
		if !s.seen.has(s.seen.fp(a, "k"+strconv.Itoa(i))) {
			t.Fatalf("k%d missing from the filter after reopen", i)
		}
	}
	for i := 0; i < n; i += 7 {
		r := s.send(&Send{From: a, To: c, CMID: "k" + strconv.Itoa(i), Body: "different"})
		if r.Err != nil || !r.Dup || r.Msg != orig[i] {
			t.Fatalf("k%d after reopen: %+v, want %+v", i, r, orig[i])
		}
	}
	if m := s.sendOK(a, "k-new", b, 0, "x"); m.Seq != n+1 {
		t.Fatalf("seq %d", m.Seq)
	}
	if got := s.all(c, "d:1:3"); len(got) != 0 {
		t.Fatalf("a duplicate reached d:1:3: %+v", got)
	}
}

// TestCMIDFilterOff: a switched-off filter (past its size cap) answers
// "maybe" for everything; the exact lookup keeps the rules.
func TestCMIDFilterOff(t *testing.T) {
	s := newT(t)
	a, b := s.user("a"), s.user("b")
	first := s.sendOK(a, "x", b, 0, "first")
	s.seen.off, s.seen.slots, s.seen.n = true, nil, 0 // before the next Submit: ordered by the queue
	if r := s.send(&Send{From: a, CMID: "x", To: b, Body: "retry"}); !r.Dup || r.Msg != first {
		t.Fatalf("retry %+v", r)
	}
	if m := s.sendOK(a, "y", b, 0, "second"); m.Seq != 2 {
		t.Fatalf("seq %d", m.Seq)
	}
}
