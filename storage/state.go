package storage

import "slices"

// The cached metadata values (cache.go holds them). Pebble is the source
// of truth; a value is loaded on demand (load.go) and changed only by the
// committer.
//
// Values are of two kinds:
//
//   - mutable ones (head, markEnt) have committer-only fields, which
//     include the effects of the unit of work being prepared (not durable
//     yet), and published fields, which describe durable state: the
//     committer writes those under the entry's shard lock after the unit
//     is durable, readers copy them under that lock.
//   - immutable ones (groupRec, memberList, convSet, User) are replaced
//     whole by the committer when they change (copy on write), so a reader
//     may keep one after unlocking.
//
// INVARIANT: a published read mark never exceeds its conversation's
// published lastSeq (marks are set to a seq already assigned, or clamped
// to last_seq).

// head is one conversation's head: last seq, last ts, last message and,
// for a direct conversation, the read marks of a and b.
type head struct {
	key  convKey
	name string // "d:a:b" or "g:gid"; shared by every Message of the conversation
	// recips is the direct conversation's [a, b]; immutable, shared by
	// every Send to it. nil for a group.
	recips []uint64

	// Committer only.
	seq   uint64
	ts    int64
	reads [2]uint64
	gen   uint64 // unit of work that last touched it
	idx   int    // its entry in that batch's conv effects
	ent   *entry // its cache entry, while the committer holds it pinned

	// Published: guarded by the shard lock.
	lastSeq  uint64
	lastTS   int64
	pubReads [2]uint64
	last     Message // valid when lastSeq > 0
}

func newHead(ck convKey, seq uint64, ts int64, reads [2]uint64, last Message) *head {
	h := &head{key: ck, name: ck.String(), seq: seq, ts: ts, reads: reads, lastSeq: seq, lastTS: ts, pubReads: reads, last: last}
	if seq > 0 {
		h.last.Conv = h.name
	}
	if !ck.group() {
		h.recips = []uint64{ck.a, ck.b}
	}
	return h
}

// size is the memory the head holds (besides the entry).
func (h *head) size() int64 {
	n := int64(200 + len(h.last.Body) + len(h.last.CMID))
	if h.last.Kind != "text" {
		n += int64(len(h.last.Kind))
	}
	return n
}

// readIdx is the index of uid's read mark in a direct conversation (uid
// must be a participant).
func (h *head) readIdx(uid uint64) int {
	if uid == h.key.a {
		return 0
	}
	return 1
}

// headView is a copy of a head's published fields.
type headView struct {
	lastSeq uint64
	lastTS  int64
	reads   [2]uint64
	last    Message
}

// markEnt is one user's membership of one group and read mark in it.
type markEnt struct {
	// Published: guarded by the shard lock. member changes only in
	// barriers.
	member bool
	pub    uint64

	// Committer only.
	head uint64
	gen  uint64 // unit of work that last touched it
	ent  *entry // its cache entry, while the committer holds it pinned
}

const markSize = 64

// groupRec is a group record (immutable; replaced on change).
type groupRec struct {
	id      uint64
	name    string
	created int64 // Unix ms
	creator uint64
	owner   uint64 // 0: none (the group is empty)
	public  bool
	count   uint64 // members
}

func (g *groupRec) size() int64 { return int64(96 + len(g.name)) }

// memberList is a group's sorted member uids (immutable; replaced on
// change, and shared by every Send to the group as its Recipients).
type memberList struct{ uids []uint64 }

func listSize(n int) int64 { return int64(48 + 8*n) }

// convSet is a user's conversations: the groups they are a member of and
// the direct conversations with at least one message, sorted by convKey
// (immutable; replaced on change).
type convSet struct{ convs []convKey }

func convSetSize(n int) int64 { return int64(48 + 16*n) }

func cmpConv(x, y convKey) int {
	switch {
	case x.a < y.a:
		return -1
	case x.a > y.a:
		return 1
	case x.b < y.b:
		return -1
	case x.b > y.b:
		return 1
	}
	return 0
}

// withConv returns a new set of s plus k.
func (s *convSet) withConv(k convKey) *convSet {
	i, found := slices.BinarySearchFunc(s.convs, k, cmpConv)
	if found {
		return s
	}
	n := make([]convKey, len(s.convs)+1)
	copy(n, s.convs[:i])
	n[i] = k
	copy(n[i+1:], s.convs[i:])
	return &convSet{n}
}

// withoutConv returns a new set of s without k.
func (s *convSet) withoutConv(k convKey) *convSet {
	i, found := slices.BinarySearchFunc(s.convs, k, cmpConv)
	if !found {
		return s
	}
	n := make([]convKey, 0, len(s.convs)-1)
	n = append(n, s.convs[:i]...)
	return &convSet{append(n, s.convs[i+1:]...)}
}

func userSize(u *User) int64 { return int64(96 + 2*len(u.Name) + len(u.Hash)) }

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
