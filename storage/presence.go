package storage

import (
	"errors"
	"fmt"
	"slices"
)

// Members and read marks of a conversation (PROTOCOL §14 receipts, §15
// typing) and users' last_seen (§16 presence).

// Audience is who takes part in a conversation, for receipts and typing.
type Audience struct {
	Group bool
	Count int // members; 2 for a direct conversation
	// Members are every member, the caller included, ascending; nil for a
	// group of more than the max Audience was given. Shared and
	// immutable: never modify.
	Members []uint64
}

// ErrNotCached is Audience's answer in cachedOnly mode when answering
// would need a Pebble read.
var ErrNotCached = errors.New("storage: not cached")

// Audience checks that uid may read conv, with the errors of History in
// the same order (BadRequest for a malformed conv, NotFound, NotMember),
// and returns its members: both users of a direct conversation, or a
// group's members when it has at most max (0: none; Members nil).
//
// With cachedOnly it answers only from memory and never blocks on I/O
// (it takes cache shard locks, held for a few map operations): it returns
// ErrNotCached when a value it needs is not cached. That mode is meant
// for the event loops' fast path; call again without it, off the loop.
// Without cachedOnly it loads what is missing from the read snapshot and
// offers it to the cache.
func (s *Store) Audience(uid uint64, conv string, max int, cachedOnly bool) (Audience, error) {
	k, ok := parseConvKey(conv)
	if !ok {
		return Audience{}, badConv(conv)
	}
	if !k.group() {
		next := s.pubNextUID.Load()
		if k.a >= next || k.b >= next {
			return Audience{}, &Error{Code: NotFound, Msg: "unknown user"}
		}
		if uid != k.a && uid != k.b {
			return Audience{}, &Error{Code: NotMember, Msg: "not a participant of the conversation"}
		}
		return Audience{Count: 2, Members: []uint64{k.a, k.b}}, nil
	}
	gid := k.a
	if gid >= s.pubNextGID.Load() {
		return Audience{}, &Error{Code: NotFound, Msg: "unknown group"}
	}
	if cachedOnly {
		return s.audienceCached(uid, gid, max)
	}
	r, err := s.reader()
	if err != nil {
		return Audience{}, err
	}
	defer r.close()
	g, err := r.memberOf(gid, uid)
	if err != nil {
		return Audience{}, err
	}
	a := Audience{Group: true, Count: int(g.count)}
	if a.Count > max {
		return a, nil
	}
	l, err := r.memberList(gid)
	if err != nil {
		return Audience{}, r.fail("group members", err)
	}
	a.Members, a.Count = l.uids, len(l.uids)
	if a.Count > max {
		a.Members = nil // the snapshot's list is newer than the cached record
	}
	return a, nil
}

// audienceCached is Audience from the cache alone.
func (s *Store) audienceCached(uid, gid uint64, max int) (Audience, error) {
	v, _, ok := s.cache.get(groupKey(gid))
	if !ok {
		return Audience{}, ErrNotCached
	}
	g := v.(*groupRec)
	var l *memberList
	if v, _, ok := s.cache.get(membersKey(gid)); ok {
		l = v.(*memberList)
	}
	var member bool
	switch {
	case l != nil:
		_, member = slices.BinarySearch(l.uids, uid)
	case !s.cache.view(memberKey(gid, uid), func(e *entry) { member = e.v.(*markEnt).member }):
		return Audience{}, ErrNotCached
	}
	if !member {
		return Audience{}, &Error{Code: NotMember, Msg: "not a member of the group"}
	}
	a := Audience{Group: true, Count: int(g.count)}
	if l != nil {
		a.Count = len(l.uids)
	}
	if a.Count > max {
		return a, nil
	}
	if l == nil {
		return Audience{}, ErrNotCached
	}
	a.Members = l.uids
	return a, nil
}

// memberList returns group gid's member list: the cached one, or the
// snapshot's (offered to the cache when it fits).
func (r reader) memberList(gid uint64) (*memberList, error) {
	if l := r.members(gid); l != nil {
		return l, nil
	}
	// The count comes from the snapshot's record, like the list (the
	// cached record may be newer).
	g, err := loadGroup(r.sn.snap, gid)
	if err != nil {
		return nil, err
	}
	if g == nil {
		return &memberList{}, nil // created after the snapshot: nobody yet
	}
	uids, err := loadMembers(r.sn.snap, gid, g.count)
	if err != nil {
		return nil, err
	}
	if uint64(len(uids)) != g.count {
		return nil, fmt.Errorf("%w: group %d counts %d members, %d found", errCorrupt, gid, g.count, len(uids))
	}
	l := &memberList{uids}
	if size := listSize(len(uids)); size <= r.s.cache.maxList {
		r.s.cache.offer(membersKey(gid), l, 0, size, r.sn.gen)
	}
	return l, nil
}

// ReadState is one member's read position in a conversation.
type ReadState struct {
	UID     uint64
	ReadSeq uint64
}

// ReadMarks returns the read_seq of every member of conv other than uid,
// ascending by uid (PROTOCOL §14 `receipts`): the peer of a direct
// conversation (0 while it has no messages), or the members of a group of
// at most max members. Errors, in order: those of History (BadRequest,
// NotFound, NotMember), then Forbidden for a larger group.
func (s *Store) ReadMarks(uid uint64, conv string, max int) ([]ReadState, error) {
	k, ok := parseConvKey(conv)
	if !ok {
		return nil, badConv(conv)
	}
	r, err := s.reader()
	if err != nil {
		return nil, err
	}
	defer r.close()
	h, _, err := r.access(uid, k, true)
	if err != nil {
		return nil, err
	}
	if !k.group() {
		peer, i := k.b, 1
		if uid == k.b {
			peer, i = k.a, 0
		}
		return []ReadState{{UID: peer, ReadSeq: min(h.reads[i], h.lastSeq)}}, nil
	}
	g, err := r.group(k.a)
	if err != nil {
		return nil, r.fail("group", err)
	}
	if g == nil {
		return nil, &Error{Code: NotFound, Msg: "unknown group"}
	}
	forbidden := &Error{Code: Forbidden, Msg: fmt.Sprintf("receipts are kept for groups of at most %d members", max)}
	if int(g.count) > max {
		return nil, forbidden
	}
	l, err := r.memberList(k.a)
	if err != nil {
		return nil, r.fail("group members", err)
	}
	if len(l.uids) > max {
		return nil, forbidden
	}
	out := make([]ReadState, 0, len(l.uids))
	for _, m := range l.uids {
		if m == uid {
			continue
		}
		member, mark, err := r.mark(g, m)
		if err != nil {
			return nil, r.fail("read mark", err)
		}
		if member {
			out = append(out, ReadState{UID: m, ReadSeq: min(mark, h.lastSeq)})
		}
	}
	return out, nil
}

// Last seen (PROTOCOL §16). The server keeps presence in memory and
// checkpoints what changed every few seconds with SaveLastSeen, so no
// connect or disconnect waits for Pebble. A record is
//
//	L uid → last_seen (8 bytes BE, Unix ms): the user went offline then
//	L uid → last_seen, run (16 bytes): the user came online during server
//	        run `run` (last_seen: the one before, 0 when not known)
//	L 0 run → Unix ms of that run's last checkpoint (17-byte key)
//
// A run that ends gracefully writes every online user as offline at the
// shutdown's time and deletes its run record. After a crash, the users
// that run had recorded online read as last seen at its last checkpoint.

// LastSeen is one user's state for a checkpoint.
type LastSeen struct {
	UID    uint64
	At     int64 // Unix ms: when the last connection closed (offline); with Online, the last_seen before, 0 if not known
	Online bool  // online in this run
}

// lastSeenBatch is SaveLastSeen's request.
type lastSeenBatch struct {
	run, now int64
	final    bool
	items    []LastSeen
}

// SaveLastSeen stores items (at most one per uid) and now as run's last
// checkpoint, through the committer, batched with sends (one WAL sync
// for both). final ends the run: its run record is deleted, and items must
// then hold every user that was ever recorded online by it, as offline.
// Only one call may be in progress at a time.
func (s *Store) SaveLastSeen(run, now int64, items []LastSeen, final bool) error {
	if run <= 0 {
		return &Error{Code: BadRequest, Msg: "run must be positive"}
	}
	return s.do(&request{kind: reqLastSeen, seen: lastSeenBatch{run: run, now: now, final: final, items: items}})
}

// lastSeen stages a checkpoint. REQUIRES: the committer.
func (c *committer) lastSeen(r *request) {
	c.n++
	c.reqs = append(c.reqs, r)
	if c.s.broken.Load() {
		r.err = errInternal
		return
	}
	ls := &r.seen
	for _, it := range ls.items {
		if it.UID == 0 {
			continue
		}
		n := 8
		if it.Online {
			n = 16
		}
		k, v := c.put(9, n)
		k[0] = pfxLastSeen
		putU64(k[1:], it.UID)
		putU64(v, uint64(max(it.At, 0)))
		if it.Online {
			putU64(v[8:], uint64(ls.run))
		}
	}
	var rk [17]byte
	runKey(rk[:], ls.run)
	if ls.final {
		_ = c.pb.Delete(rk[:], nil) // not a staged key: no repeat
		return
	}
	k, v := c.put(17, 8)
	copy(k, rk[:])
	putU64(v, uint64(max(ls.now, 0)))
}

// runKey fills dst (17 bytes) with the key of run's record.
func runKey(dst []byte, run int64) {
	dst[0] = pfxLastSeen
	putU64(dst[1:], 0)
	putU64(dst[9:], uint64(run))
}

// LoadLastSeen returns the stored last_seen of each uid, Unix ms (0: not
// known): for a user recorded online by another run, that run's last
// checkpoint (the run crashed); by run itself, the last_seen before.
// It reads the read snapshot.
func (s *Store) LoadLastSeen(run int64, uids []uint64) ([]int64, error) {
	out := make([]int64, len(uids))
	r, err := s.reader()
	if err != nil {
		return nil, err
	}
	defer r.close()
	var kb [17]byte
	runs := map[int64]int64{}
	for i, uid := range uids {
		kb[0] = pfxLastSeen
		putU64(kb[1:], uid)
		var at, other int64
		_, err := getValue(r.sn.snap, kb[:9], func(v []byte) error {
			switch len(v) {
			case 16:
				other = int64(getU64(v[8:]))
			case 8:
			default:
				return errCorrupt
			}
			at = int64(getU64(v))
			return nil
		})
		if err != nil {
			return nil, r.fail("last seen", fmt.Errorf("uid %d: %w", uid, err))
		}
		if other != 0 && other != run {
			ck, ok := runs[other]
			if !ok {
				runKey(kb[:], other)
				_, err = getValue(r.sn.snap, kb[:], func(v []byte) error {
					if len(v) != 8 {
						return errCorrupt
					}
					ck = int64(getU64(v))
					return nil
				})
				if err != nil {
					return nil, r.fail("last seen", fmt.Errorf("run %d: %w", other, err))
				}
				runs[other] = ck
			}
			if ck > 0 {
				at = ck
			}
		}
		out[i] = at
	}
	return out, nil
}
