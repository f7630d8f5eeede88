package storage

import "sync/atomic"

// recentCMIDs remembers where the most recently stored (from, cmid) pairs
// went, first in first out, so that a retry (which comes soon after the
// original: a client resends what has no `sent` yet) is answered without a
// lookup in the cmid index. It only ever answers "stored, here"; a miss
// proves nothing and takes the exact lookup in Pebble. Owned by the
// committer goroutine; its counters are read by Stats.
type recentCMIDs struct {
	m    map[cmidKey]cmidLoc
	ring []cmidKey // insertion order; next is the oldest once full
	next int
	hits atomic.Uint64
	n    atomic.Int64
}

type cmidLoc struct {
	conv convKey
	seq  uint64
}

// recentEntrySize approximates the memory of one entry (map slot, ring
// slot, the cmid string shared with the Send).
const recentEntrySize = 128

func newRecentCMIDs(capacity int) *recentCMIDs {
	capacity = max(capacity, 16)
	return &recentCMIDs{m: make(map[cmidKey]cmidLoc, capacity), ring: make([]cmidKey, capacity)}
}

func (r *recentCMIDs) get(k cmidKey) (convKey, uint64, bool) {
	l, ok := r.m[k]
	if ok {
		r.hits.Add(1)
	}
	return l.conv, l.seq, ok
}

// add records a stored pair (a committed one: a failed commit adds none).
func (r *recentCMIDs) add(k cmidKey, conv convKey, seq uint64) {
	old := r.ring[r.next]
	if old.cmid != "" || old.from != 0 {
		delete(r.m, old)
	}
	r.ring[r.next] = k
	r.next = (r.next + 1) % len(r.ring)
	r.m[k] = cmidLoc{conv, seq}
	r.n.Store(int64(len(r.m)))
}
