package storage

import (
	"math/rand/v2"
	"testing"
)

// TestUnflushedSet checks the fingerprint multiset against a map through
// growth, FIFO removals (backward-shift deletion) and colliding home
// slots, with both random and narrow (colliding) fingerprints.
func TestUnflushedSet(t *testing.T) {
	for _, narrow := range []bool{false, true} {
		u := newUnflushedCMIDs()
		ref := map[uint64]int{}
		rng := rand.New(rand.NewPCG(1, 2))
		var seq uint64
		for round := range 200 {
			seq++
			for range rng.IntN(400) {
				f := rng.Uint64() | 1
				if narrow {
					f = rng.Uint64N(64) + 1 // few values: many duplicates and long runs
				}
				u.add(f, seq)
				ref[f]++
			}
			if round%3 == 0 {
				// Flush everything up to a random earlier batch.
				u.flushedSeq.Store(seq - uint64(rng.IntN(int(seq))))
				for _, e := range u.fifo[u.head:] {
					if e.seq <= u.flushedSeq.Load() {
						if ref[e.fp]--; ref[e.fp] == 0 {
							delete(ref, e.fp)
						}
					}
				}
				u.prune()
			}
			n := 0
			for f, c := range ref {
				n += c
				if !u.has(f) {
					t.Fatalf("narrow=%v round %d: %x lost", narrow, round, f)
				}
			}
			if n != u.count {
				t.Fatalf("narrow=%v round %d: count %d, want %d", narrow, round, u.count, n)
			}
			for range 100 {
				f := rng.Uint64() | 1
				if narrow {
					f = rng.Uint64N(128) + 1
				}
				if u.has(f) != (ref[f] > 0) {
					t.Fatalf("narrow=%v round %d: has(%x) = %v, want %v", narrow, round, f, u.has(f), ref[f] > 0)
				}
			}
		}
	}
}
