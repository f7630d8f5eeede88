package storage

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The committer goroutine is the only writer of Pebble and of the in-memory
// metadata. It takes sends (Submit) and read marks (MarkRead) in batches of
// up to Options.MaxBatch, writes one Pebble batch, commits it with one WAL
// sync (group commit), publishes the new metadata, and only then calls
// OnSent and wakes blocked callers.
//
// Every other write (users, groups, demo) is a barrier: it runs alone in its
// own batch, after the batch in preparation is committed. Those writes are
// rare, and a barrier means no batch ever sees a pending membership change,
// so membership and user sets need no head/published split (state.go).

// reqKind is the kind of a blocking operation.
type reqKind uint8

const (
	reqMarkRead reqKind = iota // batched with sends
	reqCreateUser
	reqImportUsers
	reqCreateGroup
	reqJoinGroup
	reqLeaveGroup
	reqDemo
)

// request is a blocking operation: its caller waits on done.
type request struct {
	kind    reqKind
	uid     uint64 // MarkRead, CreateGroup (creator), Join, Leave
	gid     uint64
	conv    convKey
	seq     uint64
	name    string
	hash    []byte
	members []uint64
	users   []User
	demo    map[string][]byte // lower-case name → hash, for missing demo users

	// Results, valid after done is closed.
	err  error
	id   uint64
	ids  []uint64
	info GroupInfo
	done chan struct{}
}

func (r *request) barrier() bool { return r.kind != reqMarkRead }

// cmidKey is the idempotency key of a send.
type cmidKey struct {
	from uint64
	cmid string
}

// convEffect is a conversation touched by the batch (a message, or a read
// mark of a direct conversation, which lives in its meta record).
type convEffect struct {
	c     *conv
	last  *Send // its last send in the batch; nil if none
	seq   uint64
	ts    int64
	reads [2]uint64 // direct conversations: read marks of a and b
	fresh bool      // a direct conversation whose first messages are in this batch
}

// markEffect is a group read mark moved by the batch.
type markEffect struct {
	m   *mark
	uid uint64
	k   convKey
	v   uint64
}

// committer is the state of one batch in preparation; owned by the
// committer goroutine.
type committer struct {
	s     *Store
	gen   uint64 // batch number; conv.gen and mark.gen compare against it
	pb    *pebble.Batch
	n     int // operations in the batch
	sends []*Send
	reqs  []*request
	convs []convEffect
	marks []markEffect
	cmids map[cmidKey]*Send
	// fresh holds the direct conversations created by this batch; they join
	// Store.convs when it is published (one lock per batch, not per
	// conversation).
	fresh map[convKey]*conv
	now   int64 // Unix ms of the batch
	// The batch's key/value pairs, staged in buf so that they can be added
	// to the Pebble batch in key order (see fillBatch).
	buf   []byte
	ents  []entry
	cit   *pebble.Iterator // cmid lookups of this batch; nil until the first
	start time.Time
	key   []byte // scratch
}

func (c *committer) init(s *Store) {
	c.s = s
	c.cmids = make(map[cmidKey]*Send)
	c.fresh = make(map[convKey]*conv)
}

// run is the committer goroutine.
func (s *Store) run() {
	defer close(s.stopped)
	for {
		select {
		case m := <-s.q:
			s.step(m, nil)
		case r := <-s.ctl:
			s.step(nil, r)
		case <-s.quit:
			// No Submit can add to q any more (Close holds qmu): commit
			// everything queued, then stop.
			for {
				select {
				case m := <-s.q:
					s.step(m, nil)
				case r := <-s.ctl:
					s.step(nil, r)
				default:
					return
				}
			}
		}
	}
}

// step starts a batch with m or r, fills it from the queues without
// waiting, and commits it.
func (s *Store) step(m *Send, r *request) {
	c := &s.c
	if r != nil && r.barrier() {
		s.barrier(r)
		return
	}
	c.begin()
	if m != nil {
		c.send(m)
	} else {
		c.markRead(r)
	}
	next := c.fill()
	c.commit()
	if next != nil {
		s.barrier(next)
	}
}

// fill adds queued operations until the batch is full, the queues are empty
// or a barrier comes, which it returns.
func (c *committer) fill() *request {
	for c.n < c.s.o.MaxBatch {
		select {
		case m := <-c.s.q:
			c.send(m)
		case r := <-c.s.ctl:
			if r.barrier() {
				return r
			}
			c.markRead(r)
		default:
			return nil
		}
	}
	return nil
}

func (c *committer) begin() {
	c.gen++
	c.start = time.Now()
	c.now = c.s.nowMs()
	if c.pb == nil {
		c.pb = c.s.db.NewBatch(pebble.WithMaxRetainedSizeBytes(4 << 20))
	}
}

var (
	errInternal = &Error{Code: Internal, Msg: "storage failure"}
	errClosing  = &Error{Code: RateLimited, Msg: "store is closing"}
)

// send applies the send rules of PROTOCOL §4 to m and, when it is accepted,
// adds the message to the batch.
func (c *committer) send(m *Send) {
	c.n++
	c.sends = append(c.sends, m)
	m.Err, m.Dup, m.Msg, m.Recipients = nil, false, Message{}, nil
	s := c.s
	if s.broken.Load() {
		m.Err = errInternal
		return
	}
	// 1. A stored (From, CMID), also earlier in this batch, returns the
	// original.
	ck := cmidKey{m.From, m.CMID}
	if orig := c.cmids[ck]; orig != nil {
		m.Dup, m.Msg, m.Recipients = true, orig.Msg, orig.Recipients
		return
	}
	// The filter proves most cmids new without a Pebble lookup; a hit
	// (stored, or a fingerprint collision) takes the exact lookup.
	fp := s.seen.fp(m.From, m.CMID)
	if s.seen.has(fp) {
		found, err := c.lookupCMID(m)
		if err != nil {
			s.log.Error("storage: cmid lookup", "err", err, "from", m.From, "cmid", m.CMID)
			m.Err = errInternal
			return
		}
		if found {
			return
		}
	}
	// 2. Body size.
	if len(m.Body) > s.o.MaxBody {
		m.Err = &Error{Code: TooLarge, Msg: fmt.Sprintf("body of %d bytes exceeds %d", len(m.Body), s.o.MaxBody)}
		return
	}
	// 3. Recipient.
	cv, mk, recips, e := c.resolve(m)
	if e != nil {
		m.Err = e
		return
	}
	if m.Kind == "" {
		m.Kind = "text"
	}
	// 4. Next seq; ts never below the previous message's.
	cv.headSeq++
	cv.headTS = max(cv.headTS, c.now)
	m.Msg = Message{Conv: cv.name, Seq: cv.headSeq, From: m.From, TS: cv.headTS, Kind: m.Kind, Body: m.Body, CMID: m.CMID}
	m.Recipients = recips
	c.cmids[ck] = m
	// Added before the commit: if the commit fails, the filter only holds
	// a false positive.
	s.seen.add(fp)

	k, v := c.put(msgKeyLen, msgValueLen(&m.Msg))
	putMsgKey(k, cv.key, m.Msg.Seq)
	putMsgValue(v, &m.Msg)

	k, v = c.put(9+len(m.CMID), convLen+8)
	k[0] = pfxCMID
	putU64(k[1:], m.From)
	copy(k[9:], m.CMID)
	putConv(v, cv.key)
	putU64(v[convLen:], m.Msg.Seq)

	c.touchConv(cv).last = m
	mk.head = m.Msg.Seq
	if cv.grp != nil {
		c.touchMark(mk, m.From, cv.key)
	}
}

// lookupCMID fills m as a duplicate when (From, CMID) is stored.
//
// Lookups go through one iterator per batch with SeekPrefixGE and
// UseL6Filters rather than DB.Get: nearly every lookup misses, and Get skips
// the Bloom filters of the bottom level (L6, where most cmids end up), so
// each miss would read a data block. The iterator is created with the
// batch and sees everything committed before it; earlier sends of the same
// batch are in c.cmids.
func (c *committer) lookupCMID(m *Send) (bool, error) {
	s := c.s
	if c.cit == nil {
		it, err := s.db.NewIter(&pebble.IterOptions{
			LowerBound:   []byte{pfxCMID},
			UpperBound:   []byte{pfxCMID + 1},
			UseL6Filters: true,
		})
		if err != nil {
			return false, err
		}
		c.cit = it
	}
	c.key = keyCMID(c.key[:0], m.From, m.CMID)
	if !c.cit.SeekPrefixGE(c.key) || !bytes.Equal(c.cit.Key(), c.key) {
		return false, c.cit.Error()
	}
	v, err := c.cit.ValueAndErr()
	if err != nil {
		return false, err
	}
	ck, seq, err := decodeCMIDValue(v)
	if err != nil {
		return false, err
	}
	c.key = keyMsg(c.key[:0], ck, seq)
	v, closer, err := s.db.Get(c.key)
	if err != nil {
		return false, fmt.Errorf("message %s/%d of cmid %q: %w", ck, seq, m.CMID, err)
	}
	m.Msg.Conv, m.Msg.Seq = ck.String(), seq
	err = decodeMsg(v, &m.Msg)
	closer.Close()
	if err != nil {
		return false, err
	}
	m.Dup = true
	if ck.group() {
		if g := s.groups[ck.a]; g != nil {
			m.Recipients = g.recips
		}
	} else if cv := s.convs[ck]; cv != nil {
		m.Recipients = cv.recips
	}
	return true, nil
}

// resolve checks the recipient of m and returns the conversation, the
// sender's read mark in it and the recipients.
func (c *committer) resolve(m *Send) (*conv, *mark, []uint64, *Error) {
	s := c.s
	switch {
	case m.Group != 0 && m.To == 0:
		g := s.groups[m.Group]
		if g == nil {
			return nil, nil, nil, &Error{Code: NotFound, Msg: "unknown group"}
		}
		mk := g.members[m.From]
		if mk == nil {
			return nil, nil, nil, &Error{Code: NotMember, Msg: "not a member of the group"}
		}
		return g.conv, mk, g.recips, nil
	case m.To != 0 && m.Group == 0:
		if s.users[m.To] == nil || s.users[m.From] == nil {
			return nil, nil, nil, &Error{Code: NotFound, Msg: "unknown user"}
		}
		if m.To == m.From {
			return nil, nil, nil, &Error{Code: BadRequest, Msg: "cannot send to oneself"}
		}
		k := directKey(m.From, m.To)
		cv := s.convs[k]
		if cv == nil {
			if cv = c.fresh[k]; cv == nil {
				cv = newDirect(k)
				c.fresh[k] = cv
			}
		}
		return cv, cv.markOf(m.From), cv.recips, nil
	}
	return nil, nil, nil, &Error{Code: BadRequest, Msg: "exactly one of to and group is required"}
}

func (c *committer) touchConv(cv *conv) *convEffect {
	if cv.gen != c.gen {
		cv.gen = c.gen
		cv.idx = len(c.convs)
		c.convs = append(c.convs, convEffect{c: cv, fresh: cv.grp == nil && cv.lastSeq == 0})
	}
	return &c.convs[cv.idx]
}

func (c *committer) touchMark(mk *mark, uid uint64, k convKey) {
	if mk.gen != c.gen {
		mk.gen = c.gen
		c.marks = append(c.marks, markEffect{m: mk, uid: uid, k: k})
	}
}

// entry is a staged key/value pair: key buf[off:off+klen], value after it.
type entry struct {
	off, klen, vlen uint32
}

// put stages a pair and returns its key and value to fill in. They are
// valid until the next put.
func (c *committer) put(klen, vlen int) (k, v []byte) {
	off := len(c.buf)
	c.buf = slices.Grow(c.buf, klen+vlen)[:off+klen+vlen]
	c.ents = append(c.ents, entry{uint32(off), uint32(klen), uint32(vlen)})
	return c.buf[off : off+klen], c.buf[off+klen : off+klen+vlen]
}

// fillBatch adds the staged pairs to the Pebble batch in key order. Pebble
// inserts a batch into its memtable skiplist in batch order, remembering
// where the previous key went: sorted keys land near each other, so each
// insert searches a short distance instead of the whole skiplist. Keys are
// never repeated within a batch, so the order changes nothing else.
func (c *committer) fillBatch() {
	buf := c.buf
	slices.SortFunc(c.ents, func(x, y entry) int {
		return bytes.Compare(buf[x.off:x.off+x.klen], buf[y.off:y.off+y.klen])
	})
	for _, e := range c.ents {
		op := c.pb.SetDeferred(int(e.klen), int(e.vlen))
		copy(op.Key, buf[e.off:e.off+e.klen])
		copy(op.Value, buf[e.off+e.klen:e.off+e.klen+e.vlen])
		_ = op.Finish() // non-indexed batch: never fails
	}
}

// markRead moves a read mark: read_seq = max(read_seq, min(seq, last_seq)).
// The caller computes the reply from the published state once the batch is
// durable.
func (c *committer) markRead(r *request) {
	c.n++
	c.reqs = append(c.reqs, r)
	s := c.s
	if s.broken.Load() {
		r.err = errInternal
		return
	}
	cv, mk, err := s.access(r.uid, r.conv) // membership is never pending
	if err != nil {
		r.err = err
		return
	}
	if cv == nil {
		return // a direct conversation without messages: read_seq stays 0
	}
	if v := min(r.seq, cv.headSeq); v > mk.head {
		mk.head = v
		if cv.grp != nil {
			c.touchMark(mk, r.uid, r.conv)
		} else {
			c.touchConv(cv)
		}
	}
}

// commit writes the batch's metadata, commits it, publishes the effects,
// and answers every operation of the batch.
func (c *committer) commit() {
	s := c.s
	for i := range c.convs {
		e := &c.convs[i]
		e.seq, e.ts = e.c.headSeq, e.c.headTS
		e.reads = [2]uint64{e.c.read[0].head, e.c.read[1].head}
		c.key = keyConv(c.key[:0], pfxMeta, e.c.key)
		vlen := 16
		if e.c.grp == nil {
			vlen = 32
		}
		k, v := c.put(len(c.key), vlen)
		copy(k, c.key)
		putU64(v, e.seq)
		putU64(v[8:], uint64(e.ts))
		if e.c.grp == nil {
			putU64(v[16:], e.reads[0])
			putU64(v[24:], e.reads[1])
		}
		if e.fresh {
			for _, uid := range e.c.recips {
				c.key = keyUserConv(c.key[:0], pfxUConv, uid, e.c.key)
				k, _ := c.put(len(c.key), 0)
				copy(k, c.key)
			}
		}
	}
	for i := range c.marks {
		e := &c.marks[i]
		e.v = e.m.head
		c.key = keyUserConv(c.key[:0], pfxRead, e.uid, e.k)
		k, v := c.put(len(c.key), 8)
		copy(k, c.key)
		putU64(v, e.v)
	}
	c.fillBatch()

	var syncDur time.Duration
	var err error
	if !c.pb.Empty() {
		syncDur, err = s.commitPebble(c.pb)
	}
	if err != nil {
		s.st.commitErrors.Add(1)
		s.log.Error("storage: commit failed; answering the batch with internal", "err", err, "ops", c.n)
		for _, e := range c.convs {
			e.c.headSeq, e.c.headTS = e.c.lastSeq, e.c.lastTS
			e.c.read[0].head, e.c.read[1].head = e.c.read[0].pub, e.c.read[1].pub
		}
		for _, e := range c.marks {
			e.m.head = e.m.pub
		}
		for _, m := range c.sends {
			if m.Err == nil {
				m.Err, m.Dup, m.Msg, m.Recipients = errInternal, false, Message{}, nil
			}
		}
		for _, r := range c.reqs {
			if r.err == nil {
				r.err = errInternal
			}
		}
	} else {
		s.publish(c.fresh, c.convs, c.marks)
	}
	s.st.batches.Add(1)
	if s.o.OnCommit != nil {
		s.o.OnCommit(c.n, time.Since(c.start), syncDur)
	}
	var stored, dups, failed uint64
	for _, m := range c.sends {
		switch {
		case m.Err != nil:
			failed++
		case m.Dup:
			dups++
		default:
			stored++
		}
	}
	s.st.stored.Add(stored)
	s.st.dups.Add(dups)
	s.st.failed.Add(failed)
	if len(c.sends) > 0 && s.o.OnSent != nil {
		s.o.OnSent(c.sends)
	}
	for _, r := range c.reqs {
		close(r.done)
	}
	c.reset()
}

func (c *committer) reset() {
	clear(c.sends)
	c.sends = c.sends[:0]
	clear(c.reqs)
	c.reqs = c.reqs[:0]
	clear(c.convs)
	c.convs = c.convs[:0]
	clear(c.marks)
	c.marks = c.marks[:0]
	clear(c.cmids)
	clear(c.fresh)
	c.n = 0
	if c.cit != nil {
		_ = c.cit.Close()
		c.cit = nil
	}
	c.ents = c.ents[:0]
	if cap(c.buf) > 4<<20 {
		c.buf = nil // don't keep the memory of an unusually large batch
	}
	c.buf = c.buf[:0]
	if c.pb != nil {
		if c.s.broken.Load() {
			c.pb = nil // the failed batch may still be referenced by Pebble
		} else {
			c.pb.Reset()
		}
	}
}

// publish makes a durable batch's effects visible to readers.
func (s *Store) publish(fresh map[convKey]*conv, convs []convEffect, marks []markEffect) {
	s.mu.Lock()
	for k, c := range fresh {
		s.convs[k] = c
	}
	for _, e := range convs {
		c := e.c
		if e.fresh {
			s.users[c.key.a].addDirect(c)
			s.users[c.key.b].addDirect(c)
		}
		c.lastSeq, c.lastTS = e.seq, e.ts
		if e.last != nil {
			c.last = e.last.Msg
		}
		if c.grp == nil {
			c.read[0].pub, c.read[1].pub = e.reads[0], e.reads[1]
		}
	}
	for _, e := range marks {
		e.m.pub = e.v
	}
	s.mu.Unlock()
}

// commitPebble commits b durably (see Options.Fsync and noSyncWALFS) and
// returns the time Pebble waited for the WAL write and sync. A Pebble fatal
// error (pebbleLogger.Fatalf) marks the store broken: Pebble's commit
// pipeline is unusable after it.
func (s *Store) commitPebble(b *pebble.Batch) (syncDur time.Duration, err error) {
	defer func() {
		if p := recover(); p != nil {
			f, ok := p.(pebbleFatal)
			if !ok {
				panic(p)
			}
			s.broken.Store(true)
			err = fmt.Errorf("pebble: %s", f.msg)
		}
	}()
	if err := b.Commit(pebble.Sync); err != nil {
		return 0, err
	}
	return b.CommitStats().CommitWaitDuration, nil
}

func putU64(b []byte, v uint64) {
	_ = b[7]
	b[0], b[1], b[2], b[3] = byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32)
	b[4], b[5], b[6], b[7] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}
