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

// barrier runs a blocking write alone in its own batch: a unit of work of
// its own (cache.go). An op prepares the batch (reading what it needs from
// the cache or the live DB, pinned) and returns the step that publishes
// its effects once the batch is durable. The system messages a group
// change stored (r.sends) go to OnSent after that, as a batch's sends do.
func (s *Store) barrier(r *request) {
	defer close(r.done)
	if s.broken.Load() {
		r.err = errInternal
		return
	}
	c := &s.c
	start := time.Now()
	c.beginUnit()
	b := s.db.NewBatch()
	syncDur, ok := s.barrierUnit(b, r)
	c.endUnit()
	_ = b.Close()
	if !ok {
		r.sends = nil
		return
	}
	s.st.batches.Add(1)
	if s.o.OnCommit != nil {
		s.o.OnCommit(1, time.Since(start), syncDur)
	}
	if len(r.sends) > 0 {
		s.st.stored.Add(uint64(len(r.sends)))
		if s.o.OnSent != nil {
			s.o.OnSent(r.sends)
		}
	}
}

// barrierUnit prepares, commits and publishes r's batch b; false when r
// failed (r.err is set).
func (s *Store) barrierUnit(b *pebble.Batch, r *request) (time.Duration, bool) {
	c := &s.c
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
	case reqAddMembers:
		apply = s.addMembersOp(b, r)
	case reqRemoveMembers:
		apply = s.removeMembersOp(b, r)
	case reqRenameGroup:
		apply = s.renameGroupOp(b, r)
	case reqDemo:
		apply = s.demoOp(b, r)
	default:
		r.err = fmt.Errorf("storage: unknown request kind %d", r.kind)
		return 0, false
	}
	if r.err != nil {
		if _, ok := r.err.(*Error); !ok && r.err != ErrExists {
			s.log.Error("storage: write", "err", r.err, "op", r.kind)
			r.err = errInternal
		}
		return 0, false
	}
	var syncDur time.Duration
	empty := b.Empty() // before Commit, which may hand a large batch's data to Pebble
	size := b.Len()
	if !empty {
		var err error
		syncDur, err = s.commitPebble(b)
		if err != nil {
			s.st.commitErrors.Add(1)
			s.log.Error("storage: commit failed", "err", err, "op", r.kind)
			r.err = errInternal
			return 0, false
		}
	}
	if !empty {
		s.newSnap(c.gen) // before publishing (cache.go INVARIANT 5)
	}
	if apply != nil {
		apply(c.gen)
	}
	if !empty {
		if len(r.sends) > 0 {
			last := s.lastSeqOf(b, size)
			for _, m := range r.sends {
				s.storedCMID(m, last, c.gen)
			}
		}
		s.pubNextUID.Store(s.nextUID)
		s.pubNextGID.Store(s.nextGID)
	}
	return syncDur, true
}

// storedCMID records the cmid of a message the committer stored outside a
// batch of sends (a system message) where the idempotency checks look:
// the unflushed set (unflushed.go INVARIANT U; batchSeq is the last
// sequence number of its Pebble batch, 0 when it was flushed already) and its sender's fingerprint set
// when cached (senders.go INVARIANT S).
func (s *Store) storedCMID(m *Send, batchSeq, gen uint64) {
	h := s.unflushed.cmidHash(m.CMID)
	if batchSeq != 0 { // 0: the batch was flushed into sstables (lastSeqOf)
		s.unflushed.add(s.unflushed.fp(m.From, h), batchSeq)
	}
	k := ckey{kind: kCMIDs, a: m.From}
	if e := s.cache.pinned(k, gen); e != nil {
		fs := e.v.(*senderFPs)
		fs.add(s.unflushed.fp32(h))
		if sz := fs.size(); sz != fs.accounted {
			fs.accounted = sz
			s.cache.resize(k, sz)
		}
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
