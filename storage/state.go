package storage

import "slices"

// In-memory metadata. Pebble is the source of truth; this is a cache loaded
// at Open and kept current by the committer.
//
// # Ownership
//
// The committer goroutine is the only writer. Fields are of two kinds:
//
//   - head fields (headSeq, headTS, mark.head, gen, idx) are touched only by
//     the committer, without locks. They include the effects of the batch
//     being prepared, which is not durable yet.
//   - published fields (everything else) describe durable state. The
//     committer writes them while holding Store.mu exclusively, after the
//     batch that produced them is durable; readers hold Store.mu shared.
//     The committer reads them without the lock (it is the only writer).
//
// INVARIANT: outside a batch in preparation, head == published.
// INVARIANT: a published read mark never exceeds its conversation's
// published lastSeq.

// user is an account with its conversation sets.
type user struct {
	User
	lname string
	// groups the user is a member of; guarded by Store.mu.
	groups map[uint64]*group
	// directs maps a peer uid to the direct conversation with that peer once
	// it has a durable message; guarded by Store.mu.
	directs map[uint64]*conv
}

// conv is one conversation's metadata.
type conv struct {
	key  convKey
	name string // "d:a:b" or "g:gid"; shared by every Message of the conv
	grp  *group // nil for a direct conversation
	// recips is the direct conversation's [a, b]; immutable, shared.
	recips []uint64

	// head: committer only.
	headSeq uint64
	headTS  int64
	gen     uint64 // batch that last touched it
	idx     int    // index of its entry in that batch's conv effects

	// published: guarded by Store.mu.
	lastSeq uint64
	lastTS  int64
	last    Message // valid when lastSeq > 0

	// read holds the read marks of a and b of a direct conversation.
	read [2]mark
}

// markOf returns uid's read mark in direct conversation c (uid must be a
// participant).
func (c *conv) markOf(uid uint64) *mark {
	if uid == c.key.a {
		return &c.read[0]
	}
	return &c.read[1]
}

// mark is one user's read mark in one conversation.
type mark struct {
	head uint64 // committer only
	gen  uint64 // committer only: batch that last touched it
	pub  uint64 // guarded by Store.mu
}

// group is a group conversation and its members.
type group struct {
	id      uint64
	name    string
	created int64 // Unix ms
	creator uint64
	conv    *conv
	// members maps a member uid to its read mark; written only by the
	// committer under Store.mu (membership changes are barriers, so no batch
	// is ever in flight with a pending membership change).
	members map[uint64]*mark
	// recips is the sorted member list: an immutable snapshot replaced on
	// every membership change and shared by every Send to the group.
	recips []uint64
}

// rebuildRecips replaces the member snapshot. REQUIRES: Store.mu held
// exclusively, on the committer.
func (g *group) rebuildRecips() {
	r := make([]uint64, 0, len(g.members))
	for uid := range g.members {
		r = append(r, uid)
	}
	sortU64(r)
	g.recips = r
}

// insertSorted returns a new sorted slice of r plus v (r is a shared
// snapshot: never modified).
func insertSorted(r []uint64, v uint64) []uint64 {
	i, found := slices.BinarySearch(r, v)
	if found {
		return r
	}
	n := make([]uint64, len(r)+1)
	copy(n, r[:i])
	n[i] = v
	copy(n[i+1:], r[i:])
	return n
}

// removeSorted returns a new sorted slice of r without v.
func removeSorted(r []uint64, v uint64) []uint64 {
	i, found := slices.BinarySearch(r, v)
	if !found {
		return r
	}
	n := make([]uint64, 0, len(r)-1)
	n = append(n, r[:i]...)
	return append(n, r[i+1:]...)
}
