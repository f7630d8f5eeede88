package storage

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// submit queues s for the committer without blocking.
func (s *Store) submit(m *Send) error {
	s.qmu.RLock()
	defer s.qmu.RUnlock()
	if s.closed {
		s.st.rateLimited.Add(1)
		return errClosing
	}
	select {
	case s.q <- m:
		return nil
	default:
		s.st.rateLimited.Add(1)
		return errQueueFull
	}
}

var errQueueFull = &Error{Code: RateLimited, Msg: "storage queue full"}

// do hands r to the committer and waits for its result. It waits for room
// in the queue (blocking callers are not rate limited) and fails with
// RateLimited once the store is closing.
func (s *Store) do(r *request) error {
	r.done = make(chan struct{})
	s.qmu.RLock()
	closed := s.closed
	s.qmu.RUnlock()
	if closed {
		return errClosing
	}
	select {
	case s.ctl <- r:
	case <-s.quit:
		return errClosing
	}
	select {
	case <-r.done:
		return r.err
	case <-s.stopped:
		// The committer closes done before it stops: if done is still
		// open, r arrived after the final drain and was never run.
		select {
		case <-r.done:
			return r.err
		default:
			return errClosing
		}
	}
}

// barrier runs a blocking write alone in its own batch: a unit of work of
// its own (cache.go). An op prepares the batch (reading what it needs from
// the cache or the live DB, pinned) and returns the step that publishes
// its effects once the batch is durable.
func (s *Store) barrier(r *request) {
	defer close(r.done)
	if s.broken.Load() {
		r.err = errInternal
		return
	}
	c := &s.c
	start := time.Now()
	c.beginUnit()
	defer c.endUnit()
	b := s.db.NewBatch()
	defer b.Close()
	var apply func(gen uint64)
	switch r.kind {
	case reqCreateUser:
		apply = s.createUserOp(b, r)
	case reqImportUsers:
		apply = s.importUsersOp(b, r)
	case reqCreateGroup:
		apply = s.createGroupOp(b, r)
	case reqJoinGroup:
		apply = s.joinGroupOp(b, r)
	case reqLeaveGroup:
		apply = s.leaveGroupOp(b, r)
	case reqDemo:
		apply = s.demoOp(b, r)
	default:
		r.err = fmt.Errorf("storage: unknown request kind %d", r.kind)
		return
	}
	if r.err != nil {
		if _, ok := r.err.(*Error); !ok && r.err != ErrExists {
			s.log.Error("storage: write", "err", r.err, "op", r.kind)
			r.err = errInternal
		}
		return
	}
	var syncDur time.Duration
	empty := b.Empty() // before Commit, which may hand a large batch's data to Pebble
	if !empty {
		var err error
		syncDur, err = s.commitPebble(b)
		if err != nil {
			s.st.commitErrors.Add(1)
			s.log.Error("storage: commit failed", "err", err, "op", r.kind)
			r.err = errInternal
			return
		}
	}
	if !empty {
		s.newSnap(c.gen) // before publishing (cache.go INVARIANT 5)
	}
	if apply != nil {
		apply(c.gen)
	}
	if !empty {
		s.pubNextUID.Store(s.nextUID)
		s.pubNextGID.Store(s.nextGID)
	}
	s.st.batches.Add(1)
	if s.o.OnCommit != nil {
		s.o.OnCommit(1, time.Since(start), syncDur)
	}
}

// newUser writes a user and returns it (not yet published).
func newUser(b *pebble.Batch, uid uint64, name string, hash []byte) *User {
	u := &User{UID: uid, Name: name, Hash: append([]byte(nil), hash...)}
	_ = b.Set(keyUser(nil, uid), encodeUser(nil, u), nil)
	_ = b.Set(keyName(nil, strings.ToLower(name)), appendU64(nil, uid), nil)
	return u
}

func (s *Store) createUserOp(b *pebble.Batch, r *request) func(uint64) {
	if r.name == "" {
		r.err = &Error{Code: BadRequest, Msg: "empty username"}
		return nil
	}
	uid, err := loadName(s.db, strings.ToLower(r.name))
	if err != nil {
		r.err = err
		return nil
	}
	if uid != 0 {
		r.err = ErrExists
		return nil
	}
	u := newUser(b, s.nextUID, r.name, r.hash)
	r.id = u.UID
	return func(uint64) { s.nextUID++ }
}

func (s *Store) importUsersOp(b *pebble.Batch, r *request) func(uint64) {
	r.ids = make([]uint64, len(r.users))
	pending := make(map[string]uint64)
	next := s.nextUID
	for i, in := range r.users {
		if in.Name == "" {
			r.err = &Error{Code: BadRequest, Msg: fmt.Sprintf("user %d: empty username", i)}
			return nil
		}
		l := strings.ToLower(in.Name)
		if uid, ok := pending[l]; ok {
			r.ids[i] = uid
			continue
		}
		uid, err := loadName(s.db, l)
		if err != nil {
			r.err = err
			return nil
		}
		if uid != 0 {
			r.ids[i] = uid
			continue
		}
		u := newUser(b, next, in.Name, in.Hash)
		next++
		pending[l] = u.UID
		r.ids[i] = u.UID
	}
	return func(uint64) { s.nextUID = next }
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

// newGroupOp writes a new group of members (owner first; duplicates are
// ignored) and returns its record and sorted members, not yet published.
func (s *Store) newGroupOp(b *pebble.Batch, gid uint64, name string, owner uint64, members []uint64, now int64) (*groupRec, []uint64) {
	all := append([]uint64{owner}, members...)
	slices.Sort(all)
	all = slices.Compact(all)
	g := &groupRec{id: gid, name: name, created: now, creator: owner, owner: owner, count: uint64(len(all))}
	_ = b.Set(keyGroup(nil, gid), encodeGroup(nil, g), nil)
	var kb [17]byte
	for _, uid := range all {
		_ = b.Set(keyMember(kb[:0], gid, uid), nil, nil)
		_ = b.Set(keyUGroup(kb[:0], uid, gid), nil, nil)
	}
	return g, all
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

// publishMembership publishes uid joining (member) or leaving group gid,
// with read mark mark, and the group's member list and uid's conversation
// set that change with it.
func (s *Store) publishMembership(gen, gid, uid uint64, member bool, mark uint64) {
	ch := s.cache
	sh, e := ch.publishLock(memberKey(gid, uid), gen)
	if e != nil {
		m := e.v.(*markEnt)
		m.member, m.pub, m.head = member, mark, mark
	}
	sh.mu.Unlock()
	sh, e = ch.publishLock(membersKey(gid), gen)
	if e != nil && e.v != nil {
		l := e.v.(*memberList)
		if len(l.uids) >= copyLimit {
			ch.removeLocked(sh, e)
		} else {
			if member {
				l = &memberList{insertSorted(l.uids, uid)}
			} else {
				l = &memberList{removeSorted(l.uids, uid)}
			}
			e.v = l
			ch.resizeLocked(sh, e, listSize(len(l.uids)))
		}
	}
	sh.mu.Unlock()
	s.publishConvSet(gen, uid, convKey{gid, 0}, member)
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
	g, all := s.newGroupOp(b, s.nextGID, r.name, r.uid, r.members, s.nowMs())
	for _, uid := range all {
		s.c.changes(convSetKey(uid))
	}
	r.info = groupInfo(g, all)
	return func(gen uint64) {
		s.nextGID++
		s.publishNewGroup(gen, g, all)
	}
}

// publishNewGroup publishes a group created with members all (sorted).
func (s *Store) publishNewGroup(gen uint64, g *groupRec, all []uint64) {
	s.publishGroup(gen, g)
	if size := listSize(len(all)); size <= s.cache.maxList {
		sh, e := s.cache.publishLock(membersKey(g.id), gen)
		if e == nil {
			s.cache.addLocked(sh, membersKey(g.id), &memberList{all}, 0, size, 0)
		}
		sh.mu.Unlock()
	}
	for _, uid := range all {
		sh, _ := s.cache.publishLock(memberKey(g.id, uid), gen)
		sh.mu.Unlock()
		s.publishConvSet(gen, uid, convKey{g.id, 0}, true)
	}
}

// join writes uid's membership of g, with read_seq = last_seq, and returns
// the group's new record and the publishing step. REQUIRES: uid is not a
// member; on the committer.
func (s *Store) join(b *pebble.Batch, g *groupRec, uid uint64) (*groupRec, func(uint64), error) {
	h, err := s.c.head(convKey{g.id, 0})
	if err != nil {
		return nil, nil, err
	}
	last := h.seq // == lastSeq: no batch is in preparation during a barrier
	s.c.changes(convSetKey(uid))
	s.c.changes(membersKey(g.id))
	_ = b.Set(keyMember(nil, g.id, uid), nil, nil)
	_ = b.Set(keyUGroup(nil, uid, g.id), nil, nil)
	if last > 0 {
		_ = b.Set(keyUserConv(nil, pfxRead, uid, convKey{g.id, 0}), appendU64(nil, last), nil)
	} else {
		_ = b.Delete(keyUserConv(nil, pfxRead, uid, convKey{g.id, 0}), nil)
	}
	ng := *g
	ng.count++
	if ng.owner == 0 {
		ng.owner = uid // whoever joins an empty group owns it
	}
	_ = b.Set(keyGroup(nil, g.id), encodeGroup(nil, &ng), nil)
	return &ng, func(gen uint64) {
		s.publishGroup(gen, &ng)
		s.publishMembership(gen, g.id, uid, true, last)
	}, nil
}

func (s *Store) joinGroupOp(b *pebble.Batch, r *request) func(uint64) {
	if r.gid == 0 || r.gid >= s.nextGID {
		r.err = &Error{Code: NotFound, Msg: "unknown group"}
		return nil
	}
	if !s.userExists(r.uid) {
		r.err = &Error{Code: NotFound, Msg: "unknown user"}
		return nil
	}
	g, mk := s.membership(r)
	if r.err != nil {
		return nil
	}
	if mk.member {
		r.info = groupInfo(g, nil) // joining twice: answered like the first time
		return nil
	}
	ng, apply, err := s.join(b, g, r.uid)
	if err != nil {
		r.err = err
		return nil
	}
	r.info = groupInfo(ng, nil)
	return apply
}

// membership returns group r.gid's record and r.uid's membership of it
// (pinned), or sets r.err.
func (s *Store) membership(r *request) (*groupRec, *markEnt) {
	g, err := s.c.groupRec(r.gid)
	if err != nil {
		r.err = err
		return nil, nil
	}
	mk, err := s.c.markOf(g, r.uid)
	if err != nil {
		r.err = err
		return nil, nil
	}
	return g, mk
}

func (s *Store) leaveGroupOp(b *pebble.Batch, r *request) func(uint64) {
	if r.gid == 0 || r.gid >= s.nextGID {
		r.err = &Error{Code: NotFound, Msg: "unknown group"}
		return nil
	}
	g, mk := s.membership(r)
	if r.err != nil {
		return nil
	}
	if !mk.member {
		r.err = &Error{Code: NotMember, Msg: "not a member of the group"}
		return nil
	}
	s.c.changes(convSetKey(r.uid))
	s.c.changes(membersKey(g.id))
	_ = b.Delete(keyMember(nil, g.id, r.uid), nil)
	_ = b.Delete(keyUGroup(nil, r.uid, g.id), nil)
	_ = b.Delete(keyUserConv(nil, pfxRead, r.uid, convKey{g.id, 0}), nil)
	ng := *g
	ng.count--
	if ng.owner == r.uid {
		// The remaining member with the lowest uid owns the group; none: 0.
		ng.owner = 0
		err := scanMembers(s.db, g.id, 0, func(uid uint64) bool {
			if uid == r.uid {
				return true
			}
			ng.owner = uid
			return false
		})
		if err != nil {
			r.err = err
			return nil
		}
	}
	_ = b.Set(keyGroup(nil, g.id), encodeGroup(nil, &ng), nil)
	r.info = groupInfo(&ng, nil)
	return func(gen uint64) {
		s.publishGroup(gen, &ng)
		s.publishMembership(gen, g.id, r.uid, false, 0)
	}
}

var demoNames = []string{"alice", "bob", "carol"}

const demoGroup = "lobby"

// demoOp creates what is missing of the demo users and the lobby (the
// group recorded under the D key; it is created once and only gets missing
// demo users added back after that).
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
	if s.demoGID != 0 {
		g, err := s.c.groupRec(s.demoGID)
		if err != nil {
			r.err = err
			return nil
		}
		var applies []func(uint64)
		for _, uid := range uids {
			if uid >= s.nextUID {
				// A new user: not a member, and not loadable yet.
			} else {
				mk, err := s.c.markOf(g, uid)
				if err != nil {
					r.err = err
					return nil
				}
				if mk.member {
					continue
				}
			}
			ng, apply, err := s.join(b, g, uid)
			if err != nil {
				r.err = err
				return nil
			}
			g = ng
			applies = append(applies, apply)
		}
		return func(gen uint64) {
			s.nextUID = next
			for _, a := range applies {
				a(gen)
			}
		}
	}
	gid := s.nextGID
	g, all := s.newGroupOp(b, gid, demoGroup, uids[0], uids, s.nowMs())
	for _, uid := range all {
		s.c.changes(convSetKey(uid))
	}
	_ = b.Set([]byte{pfxDemo}, appendU64(nil, gid), nil)
	return func(gen uint64) {
		s.nextUID = next
		s.nextGID++
		s.demoGID = gid
		s.publishNewGroup(gen, g, all)
	}
}
