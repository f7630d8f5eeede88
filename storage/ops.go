package storage

import (
	"fmt"
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

// barrier runs a blocking write alone in its own batch.
func (s *Store) barrier(r *request) {
	defer close(r.done)
	if s.broken.Load() {
		r.err = errInternal
		return
	}
	start := time.Now()
	b := s.db.NewBatch()
	defer b.Close()
	var apply func()
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
		return
	}
	var syncDur time.Duration
	if !b.Empty() {
		var err error
		syncDur, err = s.commitPebble(b)
		if err != nil {
			s.st.commitErrors.Add(1)
			s.log.Error("storage: commit failed", "err", err, "op", r.kind)
			r.err = errInternal
			return
		}
	}
	if apply != nil {
		s.mu.Lock()
		apply()
		s.mu.Unlock()
	}
	s.st.batches.Add(1)
	if s.o.OnCommit != nil {
		s.o.OnCommit(1, time.Since(start), syncDur)
	}
}

// newUser writes a user and returns it (not yet published).
func (s *Store) newUser(b *pebble.Batch, uid uint64, name string, hash []byte) *user {
	u := &user{User: User{UID: uid, Name: name, Hash: append([]byte(nil), hash...)}, lname: strings.ToLower(name)}
	_ = b.Set(keyUser(nil, uid), encodeUser(nil, &u.User), nil)
	_ = b.Set(keyName(nil, u.lname), appendU64(nil, uid), nil)
	return u
}

// addUsers publishes new users. REQUIRES: s.mu held exclusively.
func (s *Store) addUsers(us []*user) {
	for _, u := range us {
		s.users[u.UID] = u
		s.names[u.lname] = u
		s.byUID = append(s.byUID, u)
	}
}

func (s *Store) createUserOp(b *pebble.Batch, r *request) func() {
	if r.name == "" {
		r.err = &Error{Code: BadRequest, Msg: "empty username"}
		return nil
	}
	if s.names[strings.ToLower(r.name)] != nil {
		r.err = ErrExists
		return nil
	}
	u := s.newUser(b, s.nextUID, r.name, r.hash)
	r.id = u.UID
	return func() {
		s.nextUID++
		s.addUsers([]*user{u})
	}
}

func (s *Store) importUsersOp(b *pebble.Batch, r *request) func() {
	r.ids = make([]uint64, len(r.users))
	pending := make(map[string]uint64)
	var nu []*user
	next := s.nextUID
	for i, in := range r.users {
		if in.Name == "" {
			r.err = &Error{Code: BadRequest, Msg: fmt.Sprintf("user %d: empty username", i)}
			return nil
		}
		l := strings.ToLower(in.Name)
		if u := s.names[l]; u != nil {
			r.ids[i] = u.UID
			continue
		}
		if uid, ok := pending[l]; ok {
			r.ids[i] = uid
			continue
		}
		u := s.newUser(b, next, in.Name, in.Hash)
		next++
		pending[l] = u.UID
		nu = append(nu, u)
		r.ids[i] = u.UID
	}
	return func() {
		s.nextUID = next
		s.addUsers(nu)
	}
}

// groupInfo describes g. REQUIRES: committer or s.mu held.
func groupInfo(g *group, withMembers bool) GroupInfo {
	gi := GroupInfo{ID: g.id, Name: g.name, Count: len(g.recips)}
	if withMembers {
		gi.Members = append([]uint64{}, g.recips...)
	}
	return gi
}

func validGroupName(name string) *Error {
	if len(name) < 1 || len(name) > 64 {
		return &Error{Code: BadRequest, Msg: "group name must be 1-64 bytes"}
	}
	return nil
}

// newGroupOp writes a new group of members (creator first) and returns it,
// not yet published.
func (s *Store) newGroupOp(b *pebble.Batch, gid uint64, name string, creator uint64, members []uint64, now int64) *group {
	g := newGroup(gid, name, now, creator)
	_ = b.Set(keyGroup(nil, gid), encodeGroup(nil, now, creator, name), nil)
	for _, uid := range members {
		if g.members[uid] != nil {
			continue
		}
		g.members[uid] = &mark{}
		_ = b.Set(keyMember(nil, gid, uid), nil, nil)
		_ = b.Set(keyUGroup(nil, uid, gid), nil, nil)
	}
	g.rebuildRecips()
	return g
}

// addGroup publishes a new group. REQUIRES: s.mu held exclusively.
func (s *Store) addGroup(g *group) {
	s.groups[g.id] = g
	for uid := range g.members {
		s.users[uid].joinGroup(g)
	}
}

func (s *Store) createGroupOp(b *pebble.Batch, r *request) func() {
	if e := validGroupName(r.name); e != nil {
		r.err = e
		return nil
	}
	if s.users[r.uid] == nil {
		r.err = &Error{Code: NotFound, Msg: "unknown creator"}
		return nil
	}
	for _, uid := range r.members {
		if s.users[uid] == nil {
			r.err = &Error{Code: NotFound, Msg: fmt.Sprintf("unknown user %d", uid)}
			return nil
		}
	}
	all := append([]uint64{r.uid}, r.members...)
	g := s.newGroupOp(b, s.nextGID, r.name, r.uid, all, s.nowMs())
	r.info = groupInfo(g, true)
	return func() {
		s.nextGID++
		s.addGroup(g)
	}
}

// join writes uid's membership of g, with read_seq = last_seq, and returns
// the publishing step. REQUIRES: uid is not a member; on the committer.
func (s *Store) join(b *pebble.Batch, g *group, u *user) func() {
	_ = b.Set(keyMember(nil, g.id, u.UID), nil, nil)
	_ = b.Set(keyUGroup(nil, u.UID, g.id), nil, nil)
	last := g.conv.lastSeq // == headSeq: no batch is in flight during a barrier
	if last > 0 {
		_ = b.Set(keyUserConv(nil, pfxRead, u.UID, g.conv.key), appendU64(nil, last), nil)
	} else {
		_ = b.Delete(keyUserConv(nil, pfxRead, u.UID, g.conv.key), nil)
	}
	return func() {
		g.members[u.UID] = &mark{head: last, pub: last}
		u.joinGroup(g)
		g.recips = insertSorted(g.recips, u.UID)
	}
}

func (s *Store) joinGroupOp(b *pebble.Batch, r *request) func() {
	g := s.groups[r.gid]
	if g == nil {
		r.err = &Error{Code: NotFound, Msg: "unknown group"}
		return nil
	}
	u := s.users[r.uid]
	if u == nil {
		r.err = &Error{Code: NotFound, Msg: "unknown user"}
		return nil
	}
	if g.members[r.uid] != nil {
		r.info = groupInfo(g, false) // joining twice: answered like the first time
		return nil
	}
	apply := s.join(b, g, u)
	return func() {
		apply()
		r.info = groupInfo(g, false)
	}
}

func (s *Store) leaveGroupOp(b *pebble.Batch, r *request) func() {
	g := s.groups[r.gid]
	if g == nil {
		r.err = &Error{Code: NotFound, Msg: "unknown group"}
		return nil
	}
	if g.members[r.uid] == nil {
		r.err = &Error{Code: NotMember, Msg: "not a member of the group"}
		return nil
	}
	_ = b.Delete(keyMember(nil, g.id, r.uid), nil)
	_ = b.Delete(keyUGroup(nil, r.uid, g.id), nil)
	_ = b.Delete(keyUserConv(nil, pfxRead, r.uid, g.conv.key), nil)
	return func() {
		delete(g.members, r.uid)
		delete(s.users[r.uid].groups, g.id)
		g.recips = removeSorted(g.recips, r.uid)
		r.info = groupInfo(g, false)
	}
}

var demoNames = []string{"alice", "bob", "carol"}

const demoGroup = "lobby"

// demoOp creates what is missing of the demo users and the lobby (the
// group recorded under the D key; it is created once and only gets missing
// demo users added back after that).
func (s *Store) demoOp(b *pebble.Batch, r *request) func() {
	var nu []*user
	uids := make([]uint64, len(demoNames))
	next := s.nextUID
	for i, name := range demoNames {
		if u := s.names[name]; u != nil {
			uids[i] = u.UID
			continue
		}
		hash, ok := r.demo[name]
		if !ok {
			r.err = fmt.Errorf("storage: demo user %s appeared and vanished", name)
			return nil
		}
		u := s.newUser(b, next, name, hash)
		next++
		nu = append(nu, u)
		uids[i] = u.UID
	}
	byUID := func(uid uint64) *user {
		for _, u := range nu {
			if u.UID == uid {
				return u
			}
		}
		return s.users[uid]
	}
	if g := s.groups[s.demoGID]; g != nil {
		var joins []func()
		for _, uid := range uids {
			if g.members[uid] == nil {
				joins = append(joins, s.join(b, g, byUID(uid)))
			}
		}
		return func() {
			s.nextUID = next
			s.addUsers(nu)
			for _, j := range joins {
				j()
			}
		}
	}
	gid := s.nextGID
	g := s.newGroupOp(b, gid, demoGroup, uids[0], uids, s.nowMs())
	_ = b.Set([]byte{pfxDemo}, appendU64(nil, gid), nil)
	return func() {
		s.nextUID = next
		s.addUsers(nu)
		s.nextGID++
		s.demoGID = gid
		s.addGroup(g)
	}
}
