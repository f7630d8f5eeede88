package storage

import (
	"hash/maphash"
	"math/bits"
)

// cmidSet is an in-memory filter over every stored (from, cmid) pair: a set
// of 32-bit fingerprints in one open-addressing table (linear probing).
//
// It can only say "certainly new" or "maybe stored": has returning false
// proves that the pair is not in the cmid index, because every pair the
// committer stages is added (before its commit, so a failed commit only adds
// false positives) and Open adds every pair found in the index. A hit, which
// may be a fingerprint collision, falls back to the exact Pebble lookup.
// So the filter can cost a lookup, never a duplicate.
//
// A slot's position comes from the top bits of the fingerprint itself, so
// the table grows by re-inserting the fingerprints it holds, without going
// back to Pebble. 0 marks an empty slot (fingerprint 0 is stored as 1).
// Memory: 4 bytes per slot, at most 3/4 of the slots used, so 5.3–10.7 bytes
// per stored pair (plus the old table for a while after each doubling). Collisions: a new pair hits with probability about
// n/2^32 (0.02 % at a million stored pairs, 2.3 % at 100 million).
//
// Owned by the committer goroutine (and by Open before it starts): no
// locks.
type cmidSet struct {
	seed  maphash.Seed // per process: collisions differ between runs
	slots []uint32
	shift uint // 32 - log2(len(slots))
	n     int  // fingerprints in slots
	// old is the table being moved into slots while growing (see add);
	// nil otherwise. old[:moved] has been moved.
	old      []uint32
	oldShift uint
	moved    int
	// next delivers the next, doubled table once it is allocated (see
	// add); nil when none was requested.
	next chan []uint32
	// off: the table would exceed maxCMIDSetLog; every lookup says "maybe"
	// (the exact lookup decides), which is always safe.
	off bool
	// mask keeps only the top bits of fingerprints; tests narrow it to
	// force collisions. Normally all ones.
	mask uint32
}

// bgAllocMin is the table size from which the next table is allocated in
// the background (smaller ones are quick to allocate); a variable for tests.
var bgAllocMin = 1 << 20

const (
	minCMIDSetLog = 10 // 1,024 slots, 4 KiB
	// maxCMIDSetLog caps the table at 2^31 slots (8 GiB, ~1.6 billion
	// pairs); beyond it the filter switches off rather than grow.
	maxCMIDSetLog = 31
)

func newCMIDSet(fpBits int) *cmidSet {
	s := &cmidSet{seed: maphash.MakeSeed(), mask: ^uint32(0)}
	if fpBits > 0 && fpBits < 32 {
		s.mask = ^uint32(0) << (32 - fpBits)
	}
	s.slots, s.shift = make([]uint32, 1<<minCMIDSetLog), 32-minCMIDSetLog
	return s
}

// fp returns the fingerprint of (from, cmid); never 0.
func (s *cmidSet) fp(from uint64, cmid string) uint32 {
	return s.mix(maphash.String(s.seed, cmid), from)
}

// fpBytes is fp of a cmid held in a byte slice (the same fingerprint).
func (s *cmidSet) fpBytes(from uint64, cmid []byte) uint32 {
	return s.mix(maphash.Bytes(s.seed, cmid), from)
}

func (s *cmidSet) mix(h, from uint64) uint32 {
	h ^= from * 0x9e3779b97f4a7c15
	// splitmix64 finalizer: every input bit affects the top 32 bits.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	f := uint32(h>>32) & s.mask
	if f == 0 {
		f = 1
	}
	return f
}

// has reports whether fingerprint f may be stored. false is a proof that it
// is not.
func (s *cmidSet) has(f uint32) bool {
	if s.off {
		return true
	}
	return probe(s.slots, s.shift, f) || (s.old != nil && probe(s.old, s.oldShift, f))
}

func probe(slots []uint32, shift uint, f uint32) bool {
	m := len(slots) - 1
	for i := int(f >> shift); ; i = (i + 1) & m {
		switch slots[i] {
		case f:
			return true
		case 0:
			return false
		}
	}
}

// migrateStep is the number of old slots moved per add while the table
// grows. The old table (S slots, at most 3/4 full) is gone after S/8 adds,
// when the new one (2S slots) holds at most 3S/4 + S/8: under half full.
const migrateStep = 8

// add inserts fingerprint f (a no-op when it is already there).
//
// Growing doubles the table incrementally: the old table stays readable
// (has checks both) and every add moves migrateStep of its slots, so no add
// stalls the committer for a whole rehash (measured: 2.7 s at 12.6 million
// pairs when done at once).
func (s *cmidSet) add(f uint32) {
	if s.off {
		return
	}
	if s.old != nil {
		s.migrate(migrateStep)
	} else if s.next == nil && s.n*2 > len(s.slots) && len(s.slots) >= bgAllocMin && len(s.slots) < 1<<maxCMIDSetLog {
		// Half full: allocate the next table on another goroutine, so that
		// the committer does not wait for a large allocation (zeroing
		// hundreds of MiB) when the table grows.
		ch := make(chan []uint32, 1)
		go func(n int) { ch <- make([]uint32, n) }(2 * len(s.slots))
		s.next = ch
	}
	if (s.n+1)*4 > len(s.slots)*3 {
		s.migrate(len(s.old)) // never needed (see migrateStep); for safety
		log := uint(bits.TrailingZeros(uint(len(s.slots)))) + 1
		if log > maxCMIDSetLog {
			s.off, s.slots, s.n = true, nil, 0
			return
		}
		s.old, s.oldShift, s.moved = s.slots, s.shift, 0
		if s.next != nil {
			s.slots = <-s.next // allocated in the background, normally long done
			s.next = nil
		} else {
			s.slots = make([]uint32, 1<<log)
		}
		s.shift = 32 - log
		s.n = 0
		s.migrate(migrateStep)
	}
	s.insert(f)
}

// migrate moves up to k slots of the old table into the new one.
func (s *cmidSet) migrate(k int) {
	for ; k > 0 && s.moved < len(s.old); k-- {
		if g := s.old[s.moved]; g != 0 {
			s.insert(g)
		}
		s.moved++
	}
	if s.old != nil && s.moved == len(s.old) {
		s.old = nil
	}
}

func (s *cmidSet) insert(f uint32) {
	m := len(s.slots) - 1
	for i := int(f >> s.shift); ; i = (i + 1) & m {
		switch s.slots[i] {
		case f:
			return
		case 0:
			s.slots[i] = f
			s.n++
			return
		}
	}
}

// bytes is the memory held by the table.
func (s *cmidSet) bytes() int { return 4 * (len(s.slots) + len(s.old)) }
