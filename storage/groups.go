package storage

import (
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"
)

// Group changes (PROTOCOL §4, §13): create, join, leave, add, remove,
// rename, and the demo lobby. Each is a barrier (committer.go): it runs
// alone in its own Pebble batch, after the batch in preparation is
// committed. Every change that changes something also stores its system
// message in that same batch — the membership keys, the group record, the
// read marks, the message, its cmid index entry and the conversation's
// meta are one atomic commit — with the next seq of the group: every send
// committed before the barrier has a lower seq, every later one a higher.
//
// A groupTx stages one group's changes and messages in the barrier's batch
// without touching a published value, and publishes them all once the
// batch is durable (cache.go INVARIANT 2). Nothing it read is changed
// before the commit, so a failed commit needs no undo (INVARIANT 4): the
// head's and the read marks' committer fields are only set when
// publishing, together with the published ones.

// groupTx is one barrier's changes to one group. Owned by the committer.
type groupTx struct {
	s     *Store
	b     *pebble.Batch
	g     *groupRec // the record after the staged changes (a new value)
	h     *head     // the conversation's head, pinned
	seq   uint64    // the conversation's last seq after the staged messages
	ts    int64     // and its ts
	list  []uint64  // members after the staged changes (sorted, immutable)
	isNew bool      // created by this barrier: nothing of it is cached

	listChanged bool
	recChanged  bool
	marks       []txMark // memberships and read marks, in staging order (the last one of a uid wins)
	sets        []txSet  // users' conversation sets
	sends       []*Send  // the system messages, in seq order
	kb          [32]byte // key scratch
	vb          []byte   // value scratch
	body        []byte   // body scratch
}

// txMark is a user's membership and read mark after the change.
type txMark struct {
	uid    uint64
	m      *markEnt // pinned; nil in a new group (nothing to update)
	member bool
	mark   uint64
}

// txSet is a change of a user's conversation set.
type txSet struct {
	uid uint64
	add bool
}

// openGroup starts a groupTx on existing group g: pins its head and loads
// its member list.
func (s *Store) openGroup(b *pebble.Batch, g *groupRec) (*groupTx, error) {
	c := &s.c
	h, err := c.head(convKey{g.id, 0})
	if err != nil {
		return nil, err
	}
	tx := &groupTx{s: s, b: b, g: g, h: h, seq: h.seq, ts: h.ts}
	l, err := c.memberList(g, true)
	if err != nil {
		return nil, err
	}
	if l != nil {
		tx.list = l.uids
	} else {
		// Too large for the cache: read from the live DB (the published
		// state during a barrier), not kept.
		if tx.list, err = loadMembers(s.db, g.id, g.count); err != nil {
			return nil, err
		}
		if uint64(len(tx.list)) != g.count {
			return nil, fmt.Errorf("%w: group %d counts %d members, %d found", errCorrupt, g.id, g.count, len(tx.list))
		}
	}
	return tx, nil
}

// isMember reports whether uid is a member after the staged changes.
func (tx *groupTx) isMember(uid uint64) bool {
	_, ok := slices.BinarySearch(tx.list, uid)
	return ok
}

// record returns a copy of the record to change.
func (tx *groupTx) record() *groupRec {
	if !tx.recChanged {
		ng := *tx.g
		tx.g = &ng
		tx.recChanged = true
	}
	return tx.g
}

// setList replaces the member list (and count) after the change.
func (tx *groupTx) setList(list []uint64) {
	tx.list = list
	tx.listChanged = true
	tx.record().count = uint64(len(list))
}

// message stages a system message from actor with body, pushed to recips,
// and moves actor's read mark to its seq when actor is a member after the
// change. It returns the message's seq.
func (tx *groupTx) message(actor uint64, body []byte, recips []uint64) (uint64, error) {
	tx.seq++
	tx.ts = max(tx.ts, tx.s.nowMs())
	ck := convKey{tx.g.id, 0}
	m := Message{Conv: tx.h.name, Seq: tx.seq, From: actor, TS: tx.ts, Kind: KindSystem,
		Body: string(body), CMID: SystemCMIDPrefix + strconv.FormatUint(tx.g.id, 10) + ":" + strconv.FormatUint(tx.seq, 10)}
	tx.vb = slices.Grow(tx.vb[:0], msgValueLen(&m))[:msgValueLen(&m)]
	putMsgValue(tx.vb, &m)
	_ = tx.b.Set(keyMsg(tx.kb[:0], ck, m.Seq), tx.vb, nil)
	v := make([]byte, convLen+8)
	putConv(v, ck)
	putU64(v[convLen:], m.Seq)
	_ = tx.b.Set(keyCMID(nil, actor, m.CMID), v, nil)
	tx.sends = append(tx.sends, &Send{From: actor, CMID: m.CMID, Group: tx.g.id, Kind: m.Kind, Body: m.Body,
		Msg: m, Recipients: recips})
	if tx.isMember(actor) {
		if err := tx.setMark(actor, true, m.Seq); err != nil {
			return 0, err
		}
	}
	return m.Seq, nil
}

// setMark stages uid's membership and read mark (the M, G and r keys).
// REQUIRES: tx.list already reflects the change.
func (tx *groupTx) setMark(uid uint64, member bool, mark uint64) error {
	gid := tx.g.id
	var m *markEnt
	if !tx.isNew {
		var err error
		if m, err = tx.s.c.markOf(tx.g, uid); err != nil {
			return err
		}
		if m.member != member {
			tx.s.c.changes(convSetKey(uid))
			tx.sets = append(tx.sets, txSet{uid, member})
		}
	} else {
		tx.s.c.changes(convSetKey(uid))
		tx.sets = append(tx.sets, txSet{uid, member})
	}
	changed := m == nil || m.member != member
	if changed && member {
		_ = tx.b.Set(keyMember(tx.kb[:0], gid, uid), nil, nil)
		_ = tx.b.Set(keyUGroup(tx.kb[:0], uid, gid), nil, nil)
	} else if changed {
		_ = tx.b.Delete(keyMember(tx.kb[:0], gid, uid), nil)
		_ = tx.b.Delete(keyUGroup(tx.kb[:0], uid, gid), nil)
	}
	rk := keyUserConv(tx.kb[:0], pfxRead, uid, convKey{gid, 0})
	switch {
	case member && mark > 0:
		_ = tx.b.Set(rk, appendU64(nil, mark), nil)
	case !tx.isNew:
		_ = tx.b.Delete(rk, nil) // no mark: read_seq 0
	}
	tx.marks = append(tx.marks, txMark{uid: uid, m: m, member: member, mark: mark})
	return nil
}

// finish stages the group record and the conversation's meta, and returns
// the step that publishes everything once the batch is durable.
func (tx *groupTx) finish() func(gen uint64) {
	ck := convKey{tx.g.id, 0}
	if tx.recChanged {
		_ = tx.b.Set(keyGroup(nil, tx.g.id), encodeGroup(nil, tx.g), nil)
	}
	if len(tx.sends) > 0 {
		var v [16]byte
		encodeMeta(v[:], tx.seq, tx.ts, [2]uint64{})
		_ = tx.b.Set(keyConv(nil, pfxMeta, ck), v[:], nil)
	}
	if tx.listChanged {
		tx.s.c.changes(membersKey(tx.g.id))
	}
	return tx.publish
}

// publish makes the staged changes visible (cache.go INVARIANT 2).
// REQUIRES: the batch is durable; the committer.
func (tx *groupTx) publish(gen uint64) {
	s, ch, gid := tx.s, tx.s.cache, tx.g.id
	if tx.recChanged {
		s.publishGroup(gen, tx.g)
	}
	if n := len(tx.sends); n > 0 {
		h := tx.h
		sh := ch.publishEntry(h.ent, gen) // pinned since openGroup
		h.seq, h.ts = tx.seq, tx.ts
		h.lastSeq, h.lastTS, h.last = tx.seq, tx.ts, tx.sends[n-1].Msg
		ch.resizeLocked(sh, h.ent, h.size())
		sh.mu.Unlock()
	}
	for _, m := range tx.marks {
		if m.m != nil {
			sh := ch.publishEntry(m.m.ent, gen) // pinned by markOf
			m.m.member, m.m.pub, m.m.head = m.member, m.mark, m.mark
			sh.mu.Unlock()
			continue
		}
		sh, e := ch.publishLock(memberKey(gid, m.uid), gen)
		if e != nil && e.v != nil {
			me := e.v.(*markEnt)
			me.member, me.pub, me.head = m.member, m.mark, m.mark
		}
		sh.mu.Unlock()
	}
	if tx.listChanged {
		sh, e := ch.publishLock(membersKey(gid), gen)
		switch size := listSize(len(tx.list)); {
		case size <= ch.maxList && e != nil:
			e.v = &memberList{tx.list}
			ch.resizeLocked(sh, e, size)
		case size <= ch.maxList:
			ch.addLocked(sh, membersKey(gid), &memberList{tx.list}, 0, size, 0)
		case e != nil:
			ch.removeLocked(sh, e)
		}
		sh.mu.Unlock()
	}
	for _, c := range tx.sets {
		s.publishConvSet(gen, c.uid, convKey{gid, 0}, c.add)
	}
}

// publishGroup publishes a new or changed group record.
func (s *Store) publishGroup(gen uint64, g *groupRec) {
	ch := s.cache
	sh, e := ch.publishLock(groupKey(g.id), gen)
	if e != nil {
		e.v = g
		ch.resizeLocked(sh, e, g.size())
	} else {
		ch.addLocked(sh, groupKey(g.id), g, 0, g.size(), 0)
	}
	sh.mu.Unlock()
}

// groupInfo describes g; members only when withMembers.
func groupInfo(g *groupRec, members []uint64) GroupInfo {
	gi := GroupInfo{ID: g.id, Name: g.name, Count: int(g.count), Owner: g.owner, Public: g.public}
	if members != nil {
		gi.Members = append([]uint64{}, members...)
	}
	return gi
}

func validGroupName(name string) *Error {
	if len(name) < 1 || len(name) > 64 {
		return &Error{Code: BadRequest, Msg: "group name must be 1-64 bytes"}
	}
	return nil
}

// maxChangeMembers bounds the members of one group_add or group_remove
// (PROTOCOL §13), counted as sent.
const maxChangeMembers = 1000

func validMemberList(members []uint64) *Error {
	if len(members) < 1 || len(members) > maxChangeMembers {
		return &Error{Code: BadRequest, Msg: "members must hold 1-1000 uids"}
	}
	for _, uid := range members {
		if uid == 0 {
			return &Error{Code: BadRequest, Msg: "members must be positive uids"}
		}
	}
	return nil
}

// sortedSet returns the distinct values of v, ascending (a new slice).
func sortedSet(v []uint64) []uint64 {
	out := slices.Clone(v)
	slices.Sort(out)
	return slices.Compact(out)
}

// merged returns the sorted union of sorted a and b (a new slice).
func merged(a, b []uint64) []uint64 {
	out := make([]uint64, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			out = append(out, a[i])
			i++
		case a[i] > b[j]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

// without returns sorted a without the values of sorted b (a new slice).
func without(a, b []uint64) []uint64 {
	out := make([]uint64, 0, len(a))
	j := 0
	for _, v := range a {
		for j < len(b) && b[j] < v {
			j++
		}
		if j < len(b) && b[j] == v {
			continue
		}
		out = append(out, v)
	}
	return out
}

// System message bodies (PROTOCOL §13): JSON objects with exactly these
// keys, members ascending.

func bodyCreated(dst []byte, name string, public bool, count int) []byte {
	dst = append(dst, `{"event":"created","name":`...)
	dst = appendJSONString(dst, name)
	dst = append(dst, `,"public":`...)
	dst = strconv.AppendBool(dst, public)
	dst = append(dst, `,"count":`...)
	dst = strconv.AppendInt(dst, int64(count), 10)
	return append(dst, '}')
}

func bodyMembers(dst []byte, event string, uids []uint64) []byte {
	dst = append(dst, `{"event":"`...)
	dst = append(dst, event...)
	dst = append(dst, `","members":[`...)
	for i, u := range uids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendUint(dst, u, 10)
	}
	return append(dst, "]}"...)
}

func bodyLeft(dst []byte, ownerLeft bool, owner uint64) []byte {
	if !ownerLeft {
		return append(dst, `{"event":"left"}`...)
	}
	dst = append(dst, `{"event":"left","owner":`...)
	dst = strconv.AppendUint(dst, owner, 10)
	return append(dst, '}')
}

func bodyRenamed(dst []byte, name string) []byte {
	dst = append(dst, `{"event":"renamed","name":`...)
	dst = appendJSONString(dst, name)
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
			i++
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			i++
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				dst = append(dst, `\ufffd`...)
			} else {
				dst = append(dst, s[i:i+n]...)
			}
			i += n
		}
	}
	return append(dst, '"')
}

// groupOf checks gid and returns its record: NotFound for an unknown
// group.
func (s *Store) groupOf(gid uint64) (*groupRec, error) {
	if gid == 0 || gid >= s.nextGID {
		return nil, &Error{Code: NotFound, Msg: "unknown group"}
	}
	return s.c.groupRec(gid)
}

var (
	errNotMember = &Error{Code: NotMember, Msg: "not a member of the group"}
	errNotOwner  = &Error{Code: Forbidden, Msg: "only the group's owner may do this"}
)

// done ends an op: the request's result and, when the tx stored
// something, its publishing step.
func (tx *groupTx) done(r *request, members bool) func(uint64) {
	var list []uint64
	if members {
		list = tx.list
	}
	r.info = groupInfo(tx.g, list)
	if !tx.recChanged && len(tx.sends) == 0 && len(tx.marks) == 0 {
		return nil
	}
	r.sends = tx.sends
	return tx.finish()
}

func (s *Store) createGroupOp(b *pebble.Batch, r *request) func(uint64) {
	if e := validGroupName(r.name); e != nil {
		r.err = e
		return nil
	}
	if !s.userExists(r.uid) {
		r.err = &Error{Code: NotFound, Msg: "unknown creator"}
		return nil
	}
	for _, uid := range r.members {
		if !s.userExists(uid) {
			r.err = &Error{Code: NotFound, Msg: fmt.Sprintf("unknown user %d", uid)}
			return nil
		}
	}
	tx, err := s.newGroup(b, s.nextGID, r.name, r.uid, r.members, r.public, false)
	if err != nil {
		r.err = err
		return nil
	}
	apply := tx.done(r, true)
	return func(gen uint64) {
		s.nextGID++
		apply(gen)
	}
}

// newGroup stages group gid of creator (its owner) and members, with its
// "created" message: the creator's read mark is its seq (1), the others'
// 0 (one unread) — or 1 too when allRead (the demo lobby, which no
// user's request makes).
func (s *Store) newGroup(b *pebble.Batch, gid uint64, name string, creator uint64, members []uint64, public, allRead bool) (*groupTx, error) {
	all := sortedSet(append([]uint64{creator}, members...))
	g := &groupRec{id: gid, name: name, created: s.nowMs(), creator: creator, owner: creator, public: public}
	h, err := s.c.head(convKey{gid, 0})
	if err != nil {
		return nil, err
	}
	tx := &groupTx{s: s, b: b, g: g, h: h, seq: h.seq, ts: h.ts, isNew: true, recChanged: true}
	tx.setList(all)
	tx.body = bodyCreated(tx.body[:0], name, public, len(all))
	seq, err := tx.message(creator, tx.body, all)
	if err != nil {
		return nil, err
	}
	mark := seq - 1
	if allRead {
		mark = seq
	}
	for _, uid := range all {
		if uid != creator {
			if err := tx.setMark(uid, true, mark); err != nil {
				return nil, err
			}
		}
	}
	return tx, nil
}

// groupChange runs change on a groupTx of group r.gid, after the checks
// every request on an existing group starts with, in PROTOCOL §13's
// order: invalid (the request's fields, checked by the caller), the group
// (NotFound), and, when member is set, the requester's membership
// (NotMember). A change that leaves the tx untouched stores nothing.
func (s *Store) groupChange(b *pebble.Batch, r *request, invalid *Error, member bool, change func(tx *groupTx) error) func(uint64) {
	if invalid != nil {
		r.err = invalid
		return nil
	}
	g, err := s.groupOf(r.gid)
	if err == nil {
		var tx *groupTx
		if tx, err = s.openGroup(b, g); err == nil {
			if member && !tx.isMember(r.uid) {
				err = errNotMember
			} else if err = change(tx); err == nil {
				return tx.done(r, false)
			}
		}
	}
	r.err = err
	return nil
}

// ownerOnly is the owner check of group_remove and group_rename.
func (tx *groupTx) ownerOnly(uid uint64) error {
	if tx.g.owner != uid {
		return errNotOwner
	}
	return nil
}

func (s *Store) joinGroupOp(b *pebble.Batch, r *request) func(uint64) {
	return s.groupChange(b, r, nil, false, func(tx *groupTx) error {
		switch {
		case !s.userExists(r.uid):
			return &Error{Code: NotFound, Msg: "unknown user"}
		case tx.isMember(r.uid):
			return nil // joining twice: answered like the first time
		case !tx.g.public:
			return &Error{Code: Forbidden, Msg: "the group is private: a member must add you"}
		}
		return tx.join(r.uid)
	})
}

// join stages uid (not a member) joining: "joined", from uid, whose read
// mark is its seq; whoever joins an empty group owns it.
func (tx *groupTx) join(uid uint64) error {
	tx.setList(insertSorted(tx.list, uid))
	if tx.g.owner == 0 {
		tx.record().owner = uid
	}
	tx.body = append(tx.body[:0], `{"event":"joined"}`...)
	_, err := tx.message(uid, tx.body, tx.list)
	return err
}

func (s *Store) leaveGroupOp(b *pebble.Batch, r *request) func(uint64) {
	return s.groupChange(b, r, nil, true, func(tx *groupTx) error {
		before := tx.list // the recipients: the members after, and the leaver
		tx.setList(removeSorted(tx.list, r.uid))
		ownerLeft := tx.g.owner == r.uid
		if ownerLeft {
			// The remaining member with the lowest uid owns the group; none: 0.
			rec := tx.record()
			rec.owner = 0
			if len(tx.list) > 0 {
				rec.owner = tx.list[0]
			}
		}
		if err := tx.setMark(r.uid, false, 0); err != nil {
			return err
		}
		tx.body = bodyLeft(tx.body[:0], ownerLeft, tx.g.owner)
		_, err := tx.message(r.uid, tx.body, before)
		return err
	})
}

func (s *Store) addMembersOp(b *pebble.Batch, r *request) func(uint64) {
	return s.groupChange(b, r, validMemberList(r.members), true, func(tx *groupTx) error {
		for _, uid := range r.members {
			if !s.userExists(uid) {
				return &Error{Code: NotFound, Msg: fmt.Sprintf("unknown user %d", uid)}
			}
		}
		var added []uint64
		for _, uid := range sortedSet(r.members) {
			if !tx.isMember(uid) {
				added = append(added, uid)
			}
		}
		if len(added) == 0 {
			return nil
		}
		tx.setList(merged(tx.list, added))
		tx.body = bodyMembers(tx.body[:0], "added", added)
		seq, err := tx.message(r.uid, tx.body, tx.list)
		for _, uid := range added {
			if err == nil {
				err = tx.setMark(uid, true, seq-1)
			}
		}
		return err
	})
}

func (s *Store) removeMembersOp(b *pebble.Batch, r *request) func(uint64) {
	return s.groupChange(b, r, validMemberList(r.members), true, func(tx *groupTx) error {
		if err := tx.ownerOnly(r.uid); err != nil {
			return err
		}
		if slices.Contains(r.members, r.uid) {
			return &Error{Code: BadRequest, Msg: "the owner cannot remove themselves: leave the group instead"}
		}
		var removed []uint64
		for _, uid := range sortedSet(r.members) {
			if tx.isMember(uid) {
				removed = append(removed, uid)
			}
		}
		if len(removed) == 0 {
			return nil
		}
		before := tx.list // the recipients: the members after, and the removed
		tx.setList(without(tx.list, removed))
		for _, uid := range removed {
			if err := tx.setMark(uid, false, 0); err != nil {
				return err
			}
		}
		tx.body = bodyMembers(tx.body[:0], "removed", removed)
		_, err := tx.message(r.uid, tx.body, before)
		return err
	})
}

func (s *Store) renameGroupOp(b *pebble.Batch, r *request) func(uint64) {
	return s.groupChange(b, r, validGroupName(r.name), true, func(tx *groupTx) error {
		if err := tx.ownerOnly(r.uid); err != nil || tx.g.name == r.name {
			return err
		}
		tx.record().name = r.name
		tx.body = bodyRenamed(tx.body[:0], r.name)
		_, err := tx.message(r.uid, tx.body, tx.list)
		return err
	})
}

var demoNames = []string{"alice", "bob", "carol"}

const demoGroup = "lobby"

// demoOp creates what is missing of the demo users and the lobby (the
// group recorded under the D key, public and alice's; it is created once,
// with every demo user's read mark at its "created" message, so that a
// fresh demo shows nothing unread; after that it is only made public if it
// is not, and gets missing demo users back, each with a "joined"
// message).
func (s *Store) demoOp(b *pebble.Batch, r *request) func(uint64) {
	uids := make([]uint64, len(demoNames))
	next := s.nextUID
	for i, name := range demoNames {
		uid, err := loadName(s.db, name)
		if err != nil {
			r.err = err
			return nil
		}
		if uid != 0 {
			uids[i] = uid
			continue
		}
		hash, ok := r.demo[name]
		if !ok {
			r.err = fmt.Errorf("storage: demo user %s appeared and vanished", name)
			return nil
		}
		uids[i] = newUser(b, next, name, hash).UID
		next++
	}
	if s.demoGID == 0 {
		gid := s.nextGID
		tx, err := s.newGroup(b, gid, demoGroup, uids[0], uids, true, true)
		if err != nil {
			r.err = err
			return nil
		}
		_ = b.Set([]byte{pfxDemo}, appendU64(nil, gid), nil)
		apply := tx.done(r, false)
		return func(gen uint64) {
			s.nextUID = next
			s.nextGID++
			s.demoGID = gid
			apply(gen)
		}
	}
	g, err := s.c.groupRec(s.demoGID)
	if err != nil {
		r.err = err
		return nil
	}
	tx, err := s.openGroup(b, g)
	if err != nil {
		r.err = err
		return nil
	}
	if !g.public {
		tx.record().public = true // a lobby from before PROTOCOL §13
	}
	for _, uid := range uids {
		if !tx.isMember(uid) {
			if err := tx.join(uid); err != nil {
				r.err = err
				return nil
			}
		}
	}
	apply := tx.done(r, false)
	return func(gen uint64) {
		s.nextUID = next
		if apply != nil {
			apply(gen)
		}
	}
}
