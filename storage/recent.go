package storage

import "sync/atomic"

// recentCMIDs remembers where recently stored (from, cmid) pairs went, so
// that a retry (which comes soon after the original: a client resends what
// has no `sent` yet) is answered without a lookup in the cmid index. It is
// direct-mapped by the pair's 64-bit fingerprint (unflushed.go): storing
// overwrites a slot, so it costs one array write per message and holds at
// most its slots. A hit is verified against the stored message (its from
// and cmid), so a fingerprint collision only costs that read; a miss
// proves nothing and takes the lookup in Pebble. Owned by the committer
// goroutine; its counters are read by Stats.
type recentCMIDs struct {
	slots []recentSlot
	mask  uint64
	hits  atomic.Uint64
	n     atomic.Int64 // slots in use
}

type recentSlot struct {
	fp   uint64 // 0: empty
	conv convKey
	seq  uint64
}

// recentSlotSize is the memory of one slot.
const recentSlotSize = 32

// newRecentCMIDs makes a cache of at most bytes (rounded down to a power
// of two slots, at least 16).
func newRecentCMIDs(bytes int64) *recentCMIDs {
	n := uint64(16)
	for n*2*recentSlotSize <= uint64(max(bytes, 0)) {
		n *= 2
	}
	return &recentCMIDs{slots: make([]recentSlot, n), mask: n - 1}
}

// get returns where the pair of fingerprint fp may be stored.
func (r *recentCMIDs) get(fp uint64) (convKey, uint64, bool) {
	sl := &r.slots[fp&r.mask]
	if fp == 0 || sl.fp != fp {
		return convKey{}, 0, false
	}
	return sl.conv, sl.seq, true
}

// add records a stored pair (a committed one: a failed commit adds none).
func (r *recentCMIDs) add(fp uint64, conv convKey, seq uint64) {
	sl := &r.slots[fp&r.mask]
	if sl.fp == 0 {
		r.n.Add(1)
	}
	*sl = recentSlot{fp, conv, seq}
}
