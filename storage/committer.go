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
// so membership and user sets need no head/published split (state.go). A
// group change stores its system message in its own batch (groups.go):
// the change and its message are one atomic commit, and the message takes
// the next seq of the group after every send committed before it.

// reqKind is the kind of a blocking operation.
type reqKind uint8

const (
	reqMarkRead reqKind = iota // batched with sends
	reqCreateUser
	reqImportUsers
	reqCreateGroup
	reqJoinGroup
	reqLeaveGroup
	reqAddMembers
	reqRemoveMembers
	reqRenameGroup
	reqDemo
	reqLastSeen // batched with sends (presence.go)
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
	public  bool // CreateGroup
	users   []User
	demo    map[string][]byte // lower-case name → hash, for missing demo users
	seen    lastSeenBatch     // reqLastSeen

	// Results, valid after done is closed.
	err  error
	id   uint64
	ids  []uint64
	info GroupInfo
	grew uint64 // MarkRead: the read_seq it set; 0 when the mark did not move
	// sends are the system messages the barrier stored (groups.go),
	// handed to OnSent once it is durable.
	sends []*Send
	done  chan struct{}
}

// barrier reports whether r runs alone in its own batch; read marks and
// last_seen checkpoints are batched with sends.
func (r *request) barrier() bool { return r.kind != reqMarkRead && r.kind != reqLastSeen }

// batched adds a request that is not a barrier to the batch.
func (c *committer) batched(r *request) {
	if r.kind == reqLastSeen {
		c.lastSeen(r)
		return
	}
	c.markRead(r)
}

// cmidKey is the idempotency key of a send.
type cmidKey struct {
	from uint64
	cmid string
}

// convEffect is a conversation touched by the batch (a message, or a read
// mark of a direct conversation, which lives in its meta record).
type convEffect struct {
	h     *head
	last  *Send // its last send in the batch; nil if none
	seq   uint64
	ts    int64
	reads [2]uint64 // direct conversations: read marks of a and b
	fresh bool      // a direct conversation whose first messages are in this batch
}

// markEffect is a group read mark moved by the batch.
type markEffect struct {
	m        *markEnt
	uid, gid uint64
	v        uint64
}

// committer is the state of the unit of work (batch or barrier) in
// preparation; owned by the committer goroutine.
type committer struct {
	s     *Store
	gen   uint64 // unit of work; head.gen, markEnt.gen and cache pins compare against it
	pb    *pebble.Batch
	n     int // operations in the batch
	sends []*Send
	reqs  []*request
	convs []convEffect
	marks []markEffect
	cmids map[cmidKey]*Send
	// bigRecips holds, for this batch, the member lists of groups too large
	// for the cache (read from Pebble once per batch, not kept).
	bigRecips map[uint64][]uint64
	// senders holds the cmid fingerprints of this batch's senders (pinned
	// cache values, senders.go).
	senders map[uint64]*senderFPs
	// placeholders are the cache keys this unit added placeholder entries
	// for (cache.go INVARIANT 1); endUnit drops what publishing left.
	placeholders []ckey
	now          int64 // Unix ms of the batch
	// The batch's key/value pairs, staged in buf so that they can be added
	// to the Pebble batch in key order (see fillBatch).
	buf   []byte
	ents  []staged
	cit   *pebble.Iterator // cmid lookups of this batch in the whole DB; nil until the first
	dit   *pebble.Iterator // the same in sstables only (unflushed.go)
	start time.Time
	key   []byte // scratch
}

func (c *committer) init(s *Store) {
	c.s = s
	c.cmids = make(map[cmidKey]*Send)
	c.bigRecips = make(map[uint64][]uint64)
	c.senders = make(map[uint64]*senderFPs)
}

// beginUnit starts a unit of work: a new generation, whose cache entries
// are pinned until endUnit (cache.go INVARIANT 1).
func (c *committer) beginUnit() {
	c.gen++
	c.s.cache.pinGen.Store(c.gen)
}

// endUnit drops the unit's placeholders, unpins its entries and trims
// what they kept over budget.
func (c *committer) endUnit() {
	for _, k := range c.placeholders {
		c.s.cache.dropPlaceholder(k)
	}
	clear(c.placeholders)
	c.placeholders = c.placeholders[:0]
	c.s.cache.pinGen.Store(0)
	c.s.cache.trimAll()
}

// changes pins k, whose value this unit changes without reading it
// (cache.go INVARIANT 1).
func (c *committer) changes(k ckey) {
	if c.s.cache.placeholder(k, c.gen) {
		c.placeholders = append(c.placeholders, k)
	}
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
		c.batched(r)
	}
	next := c.fill()
	c.commit()
	if next != nil {
		s.barrier(next)
	}
}

// fill adds queued operations until the batch is full (MaxBatch operations
// or maxBatchBytes of estimated memtable size staged), the queues are
// empty or a barrier comes, which it returns.
func (c *committer) fill() *request {
	for c.n < c.s.o.MaxBatch && c.stagedSize() < c.s.maxBatchBytes {
		select {
		case m := <-c.s.q:
			c.send(m)
		case r := <-c.s.ctl:
			if r.barrier() {
				return r
			}
			c.batched(r)
		default:
			return nil
		}
	}
	return nil
}

func (c *committer) begin() {
	c.beginUnit()
	c.s.unflushed.prune() // before this batch's sstable-only iterator
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
	found, err := c.lookupCMID(m)
	if err != nil {
		s.log.Error("storage: cmid lookup", "err", err, "from", m.From, "cmid", m.CMID)
		m.Err = errInternal
		return
	}
	if found {
		return
	}
	// 2. Body size.
	if len(m.Body) > s.o.MaxBody {
		m.Err = &Error{Code: TooLarge, Msg: fmt.Sprintf("body of %d bytes exceeds %d", len(m.Body), s.o.MaxBody)}
		return
	}
	// 3. Recipient.
	h, mk, recips, e := c.resolve(m)
	if e != nil {
		m.Err = e
		return
	}
	if m.Kind == "" {
		m.Kind = "text"
	}
	// 4. Next seq; ts never below the previous message's.
	h.seq++
	h.ts = max(h.ts, c.now)
	m.Msg = Message{Conv: h.name, Seq: h.seq, From: m.From, TS: h.ts, Kind: m.Kind, Body: m.Body, CMID: m.CMID}
	m.Recipients = recips
	c.cmids[ck] = m

	k, v := c.put(msgKeyLen, msgValueLen(&m.Msg))
	putMsgKey(k, h.key, m.Msg.Seq)
	putMsgValue(v, &m.Msg)

	k, v = c.put(9+len(m.CMID), convLen+8)
	k[0] = pfxCMID
	putU64(k[1:], m.From)
	copy(k[9:], m.CMID)
	putConv(v, h.key)
	putU64(v[convLen:], m.Msg.Seq)

	c.touchConv(h).last = m
	if mk != nil {
		mk.head = m.Msg.Seq
		c.touchMark(mk, m.From, h.key.a)
	} else {
		h.reads[h.readIdx(m.From)] = m.Msg.Seq
	}
}

// lookupCMID fills m as a duplicate when (From, CMID) is stored.
//
// The sender's cmid fingerprints (senders.go) prove most cmids new
// without a Pebble read. The rest (retries, fingerprint collisions,
// senders with too many cmids to hold): a cmid the committer wrote since
// the last flush (the unflushed set, unflushed.go) is looked up in the
// whole DB; every other one in the sstables only, which their Bloom
// filters answer without reading data blocks for a new cmid.
// Both lookups use one iterator per batch with SeekPrefixGE and
// UseL6Filters rather than DB.Get: nearly every lookup misses, and Get
// skips the filters of the bottom level (L6, where most cmids end up). The
// iterators are created with the batch and see everything committed
// before it; earlier sends of the same batch are in c.cmids.
func (c *committer) lookupCMID(m *Send) (bool, error) {
	s := c.s
	h := s.unflushed.cmidHash(m.CMID)
	fs := c.senders[m.From]
	if fs == nil {
		var err error
		if fs, err = c.senderSet(m.From); err != nil {
			return false, err
		}
		c.senders[m.From] = fs
	}
	if !fs.has(s.unflushed.fp32(h)) {
		return false, nil // proven new (senders.go INVARIANT S)
	}
	it := &c.dit
	if s.unflushed.has(s.unflushed.fp(m.From, h)) {
		it = &c.cit
	}
	s.st.cmidLookups.Add(1)
	if *it == nil {
		var err error
		*it, err = s.db.NewIter(&pebble.IterOptions{
			LowerBound:                []byte{pfxCMID},
			UpperBound:                []byte{pfxCMID + 1},
			UseL6Filters:              true,
			OnlyReadGuaranteedDurable: it == &c.dit,
		})
		if err != nil {
			*it = nil
			return false, err
		}
	}
	c.key = keyCMID(c.key[:0], m.From, m.CMID)
	if !(*it).SeekPrefixGE(c.key) || !bytes.Equal((*it).Key(), c.key) {
		return false, (*it).Error()
	}
	v, err := (*it).ValueAndErr()
	if err != nil {
		return false, err
	}
	conv, seq, err := decodeCMIDValue(v)
	if err != nil {
		return false, err
	}
	found, err := c.dupOf(m, conv, seq)
	if err == nil && !found {
		err = fmt.Errorf("%w: message %s/%d of cmid %q does not carry it", errCorrupt, conv, seq, m.CMID)
	}
	return found, err
}

// dupOf fills m as a duplicate of message seq of conv if that message is
// m's (same from and cmid).
func (c *committer) dupOf(m *Send, conv convKey, seq uint64) (bool, error) {
	s := c.s
	c.key = keyMsg(c.key[:0], conv, seq)
	orig := Message{Conv: conv.String(), Seq: seq}
	found, err := getValue(s.db, c.key, func(v []byte) error { return decodeMsg(v, &orig) })
	if err == nil && !found {
		err = fmt.Errorf("%w: message %s/%d missing", errCorrupt, conv, seq)
	}
	if err != nil || orig.From != m.From || orig.CMID != m.CMID {
		return false, err
	}
	m.Msg = orig
	if conv.group() {
		rec, err := c.groupRec(conv.a)
		if err == nil {
			m.Recipients, err = c.recipients(rec)
		}
		if err != nil {
			m.Msg, m.Recipients = Message{}, nil
			return false, err
		}
	} else {
		m.Recipients = []uint64{conv.a, conv.b}
	}
	m.Dup = true
	return true, nil
}

// resolve checks the recipient of m and returns the conversation's head,
// the sender's membership of a group (nil for a direct conversation) and
// the recipients.
func (c *committer) resolve(m *Send) (*head, *markEnt, []uint64, *Error) {
	s := c.s
	internal := func(err error) (*head, *markEnt, []uint64, *Error) {
		s.log.Error("storage: send", "err", err, "from", m.From, "to", m.To, "group", m.Group)
		return nil, nil, nil, errInternal
	}
	switch {
	case m.Group != 0 && m.To == 0:
		if m.Group >= s.nextGID {
			return nil, nil, nil, &Error{Code: NotFound, Msg: "unknown group"}
		}
		rec, err := c.groupRec(m.Group)
		if err != nil {
			return internal(err)
		}
		mk, err := c.markOf(rec, m.From)
		if err != nil {
			return internal(err)
		}
		if !mk.member {
			return nil, nil, nil, &Error{Code: NotMember, Msg: "not a member of the group"}
		}
		h, err := c.head(convKey{m.Group, 0})
		if err != nil {
			return internal(err)
		}
		recips, err := c.recipients(rec)
		if err != nil {
			return internal(err)
		}
		return h, mk, recips, nil
	case m.To != 0 && m.Group == 0:
		if !s.userExists(m.To) || !s.userExists(m.From) {
			return nil, nil, nil, &Error{Code: NotFound, Msg: "unknown user"}
		}
		if m.To == m.From {
			return nil, nil, nil, &Error{Code: BadRequest, Msg: "cannot send to oneself"}
		}
		h, err := c.head(directKey(m.From, m.To))
		if err != nil {
			return internal(err)
		}
		return h, nil, h.recips, nil
	}
	return nil, nil, nil, &Error{Code: BadRequest, Msg: "exactly one of to and group is required"}
}

// userExists reports whether uid is a committed user: uids are assigned
// 1, 2, 3, … by the committer and users are never deleted. REQUIRES: the
// committer.
func (s *Store) userExists(uid uint64) bool { return uid != 0 && uid < s.nextUID }

// head returns conversation ck's head, pinned for this unit of work,
// loading it from the live DB on a miss.
func (c *committer) head(ck convKey) (*head, error) {
	k := headKey(ck)
	e := c.s.cache.pinned(k, c.gen)
	if e == nil {
		h, err := loadHead(c.s.db, ck)
		if err != nil {
			return nil, err
		}
		e = c.s.cache.addPinned(k, h, 0, h.size(), c.gen)
	}
	h := e.v.(*head)
	h.ent = e
	return h, nil
}

// groupRec returns the record of group gid (which must be below nextGID).
func (c *committer) groupRec(gid uint64) (*groupRec, error) {
	k := groupKey(gid)
	if e := c.s.cache.pinned(k, c.gen); e != nil {
		return e.v.(*groupRec), nil
	}
	g, err := loadGroup(c.s.db, gid)
	if err != nil {
		return nil, err
	}
	if g == nil {
		return nil, fmt.Errorf("%w: group %d (below the next gid) has no record", errCorrupt, gid)
	}
	return c.s.cache.addPinned(k, g, 0, g.size(), c.gen).v.(*groupRec), nil
}

// memberList returns group g's member list from the cache, loading it
// when load is set; nil when it is not cached (or too large for the
// cache).
func (c *committer) memberList(g *groupRec, load bool) (*memberList, error) {
	size := listSize(int(g.count))
	if size > c.s.cache.maxList {
		return nil, nil
	}
	k := membersKey(g.id)
	if e := c.s.cache.pinned(k, c.gen); e != nil {
		if e.v == nil {
			return nil, nil // a placeholder: changed by this barrier
		}
		return e.v.(*memberList), nil
	}
	if !load {
		return nil, nil
	}
	uids, err := loadMembers(c.s.db, g.id, g.count)
	if err != nil {
		return nil, err
	}
	if uint64(len(uids)) != g.count {
		return nil, fmt.Errorf("%w: group %d counts %d members, %d found", errCorrupt, g.id, g.count, len(uids))
	}
	return c.s.cache.addPinned(k, &memberList{uids}, 0, size, c.gen).v.(*memberList), nil
}

// recipients returns group g's members, as a shared immutable list.
func (c *committer) recipients(g *groupRec) ([]uint64, error) {
	l, err := c.memberList(g, true)
	if err != nil || l != nil {
		if l == nil {
			return nil, err
		}
		return l.uids, err
	}
	// Too large for the cache: read once per batch.
	if r, ok := c.bigRecips[g.id]; ok {
		return r, nil
	}
	uids, err := loadMembers(c.s.db, g.id, g.count)
	if err != nil {
		return nil, err
	}
	c.bigRecips[g.id] = uids
	return uids, nil
}

// markOf returns uid's membership of group g and read mark, pinned.
func (c *committer) markOf(g *groupRec, uid uint64) (*markEnt, error) {
	k := memberKey(g.id, uid)
	if e := c.s.cache.pinned(k, c.gen); e != nil {
		m := e.v.(*markEnt)
		m.ent = e
		return m, nil
	}
	known := -1
	l, err := c.memberList(g, false)
	if err != nil {
		return nil, err
	}
	if l != nil {
		known = 0
		if _, ok := slices.BinarySearch(l.uids, uid); ok {
			known = 1
		}
	}
	m, err := loadMark(c.s.db, g.id, uid, known)
	if err != nil {
		return nil, err
	}
	e := c.s.cache.addPinned(k, m, 0, markSize, c.gen)
	m = e.v.(*markEnt)
	m.ent = e
	return m, nil
}

func (c *committer) touchConv(h *head) *convEffect {
	if h.gen != c.gen {
		h.gen = c.gen
		h.idx = len(c.convs)
		fresh := !h.key.group() && h.lastSeq == 0
		c.convs = append(c.convs, convEffect{h: h, fresh: fresh})
		if fresh {
			// Its first message: both users' conversation sets change.
			c.changes(convSetKey(h.key.a))
			c.changes(convSetKey(h.key.b))
		}
	}
	return &c.convs[h.idx]
}

func (c *committer) touchMark(mk *markEnt, uid, gid uint64) {
	if mk.gen != c.gen {
		mk.gen = c.gen
		c.marks = append(c.marks, markEffect{m: mk, uid: uid, gid: gid})
	}
}

// staged is a staged key/value pair: key buf[off:off+klen], value after it.
type staged struct {
	off, klen, vlen uint32
}

// put stages a pair and returns its key and value to fill in. They are
// valid until the next put.
// stagedSize estimates what the staged pairs take in a memtable: their
// bytes plus a skiplist node each (Pebble charges up to ~200 bytes per
// key, arenaskl.MaxNodeSize), so that a batch stays well below half a
// memtable, where Pebble would commit it as a flushable batch.
func (c *committer) stagedSize() int { return len(c.buf) + 256*len(c.ents) }

func (c *committer) put(klen, vlen int) (k, v []byte) {
	off := len(c.buf)
	c.buf = slices.Grow(c.buf, klen+vlen)[:off+klen+vlen]
	c.ents = append(c.ents, staged{uint32(off), uint32(klen), uint32(vlen)})
	return c.buf[off : off+klen], c.buf[off+klen : off+klen+vlen]
}

// fillBatch adds the staged pairs to the Pebble batch in key order. Pebble
// inserts a batch into its memtable skiplist in batch order, remembering
// where the previous key went: sorted keys land near each other, so each
// insert searches a short distance instead of the whole skiplist. Keys are
// never repeated within a batch, so the order changes nothing else.
func (c *committer) fillBatch() {
	buf := c.buf
	slices.SortFunc(c.ents, func(x, y staged) int {
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
	fail := func(err error) {
		s.log.Error("storage: mark read", "err", err, "uid", r.uid, "conv", r.conv)
		r.err = errInternal
	}
	k := r.conv
	if k.group() {
		if k.a >= s.nextGID {
			r.err = &Error{Code: NotFound, Msg: "unknown group"}
			return
		}
		g, err := c.groupRec(k.a)
		if err != nil {
			fail(err)
			return
		}
		mk, err := c.markOf(g, r.uid)
		if err != nil {
			fail(err)
			return
		}
		if !mk.member {
			r.err = &Error{Code: NotMember, Msg: "not a member of the group"}
			return
		}
		h, err := c.head(k)
		if err != nil {
			fail(err)
			return
		}
		if v := min(r.seq, h.seq); v > mk.head {
			mk.head = v
			r.grew = v
			c.touchMark(mk, r.uid, k.a)
		}
		return
	}
	if !s.userExists(k.a) || !s.userExists(k.b) {
		r.err = &Error{Code: NotFound, Msg: "unknown user"}
		return
	}
	if r.uid != k.a && r.uid != k.b {
		r.err = &Error{Code: NotMember, Msg: "not a participant of the conversation"}
		return
	}
	h, err := c.head(k)
	if err != nil {
		fail(err)
		return
	}
	i := h.readIdx(r.uid)
	if v := min(r.seq, h.seq); v > h.reads[i] {
		h.reads[i] = v
		r.grew = v
		c.touchConv(h)
	}
}

// commit writes the batch's metadata, commits it, publishes the effects,
// and answers every operation of the batch.
func (c *committer) commit() {
	s := c.s
	for i := range c.convs {
		e := &c.convs[i]
		h := e.h
		e.seq, e.ts, e.reads = h.seq, h.ts, h.reads
		c.key = keyConv(c.key[:0], pfxMeta, h.key)
		vlen := 16
		if !h.key.group() {
			vlen = 32
		}
		k, v := c.put(len(c.key), vlen)
		copy(k, c.key)
		encodeMeta(v, e.seq, e.ts, e.reads)
		if e.fresh {
			for _, uid := range h.recips {
				c.key = keyUserConv(c.key[:0], pfxUConv, uid, h.key)
				k, _ := c.put(len(c.key), 0)
				copy(k, c.key)
			}
		}
	}
	for i := range c.marks {
		e := &c.marks[i]
		e.v = e.m.head
		c.key = keyUserConv(c.key[:0], pfxRead, e.uid, convKey{e.gid, 0})
		k, v := c.put(len(c.key), 8)
		copy(k, c.key)
		putU64(v, e.v)
	}
	c.fillBatch()

	var syncDur time.Duration
	var err error
	empty := c.pb.Empty()
	size := c.pb.Len() // before Commit: a flushable batch loses its data
	if !empty {
		syncDur, err = s.commitPebble(c.pb)
	}
	var lastSeq uint64
	if err == nil && !empty {
		lastSeq = s.lastSeqOf(c.pb, size)
	}
	if err != nil {
		s.st.commitErrors.Add(1)
		s.log.Error("storage: commit failed; answering the batch with internal", "err", err, "ops", c.n)
		// cache.go INVARIANT 4: back to the published state.
		for _, e := range c.convs {
			h := e.h
			h.seq, h.ts, h.reads = h.lastSeq, h.lastTS, h.pubReads
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
	} else if !empty {
		s.newSnap(c.gen) // before publishing (cache.go INVARIANT 5) and before anyone hears of the batch
		s.publish(c.gen, c.convs, c.marks)
		for _, m := range c.sends {
			if m.Err == nil && !m.Dup {
				h := s.unflushed.cmidHash(m.CMID)
				if lastSeq != 0 {
					s.unflushed.add(s.unflushed.fp(m.From, h), lastSeq) // unflushed.go INVARIANT U
				}
				if fs := c.senders[m.From]; fs != nil {
					fs.add(s.unflushed.fp32(h)) // senders.go INVARIANT S
				}
			}
		}
		for uid, fs := range c.senders {
			if sz := fs.size(); sz != fs.accounted {
				fs.accounted = sz
				s.cache.resize(ckey{kind: kCMIDs, a: uid}, sz) // the set grew
			}
		}
	}
	c.endUnit()
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
	clear(c.bigRecips)
	clear(c.senders)
	c.n = 0
	for _, it := range []**pebble.Iterator{&c.cit, &c.dit} {
		if *it != nil {
			_ = (*it).Close()
			*it = nil
		}
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

// publish makes a durable batch's effects visible to readers (cache.go
// INVARIANT 2): every key it wrote is stamped with gen and its cached
// entry, if any, updated.
func (s *Store) publish(gen uint64, convs []convEffect, marks []markEffect) {
	ch := s.cache
	for _, e := range convs {
		h := e.h
		sh := ch.publishEntry(h.ent, gen) // pinned since the batch touched it
		h.lastSeq, h.lastTS, h.pubReads = e.seq, e.ts, e.reads
		if e.last != nil {
			h.last = e.last.Msg
			if sz := h.size(); sz+entryOverhead != h.ent.size {
				ch.resizeLocked(sh, h.ent, sz)
			}
		}
		sh.mu.Unlock()
		if e.fresh {
			for _, uid := range h.recips {
				s.publishConvSet(gen, uid, h.key, true)
			}
		}
	}
	for _, e := range marks {
		sh := ch.publishEntry(e.m.ent, gen) // pinned since the batch touched it
		e.m.pub = e.v
		sh.mu.Unlock()
	}
}

// publishConvSet adds k to (or removes it from) uid's cached conversation
// set. A large set is dropped instead of copied: it is read again when
// needed.
func (s *Store) publishConvSet(gen, uid uint64, k convKey, add bool) {
	ch := s.cache
	sh, ent := ch.publishLock(convSetKey(uid), gen)
	defer sh.mu.Unlock()
	if ent == nil {
		return
	}
	if ent.v == nil {
		return // a placeholder: endUnit drops it
	}
	cs := ent.v.(*convSet)
	if len(cs.convs) >= copyLimit {
		ch.removeLocked(sh, ent)
		return
	}
	if add {
		cs = cs.withConv(k)
	} else {
		cs = cs.withoutConv(k)
	}
	ent.v = cs
	ch.resizeLocked(sh, ent, convSetSize(len(cs.convs)))
}

// copyLimit is the largest cached list (members, conversation set) that a
// change copies; a larger one is dropped from the cache instead (and read
// again from Pebble when needed), so that building a large group one join
// at a time does not copy its member list every time.
const copyLimit = 4096

// lastSeqOf returns the sequence number of the last key of committed
// batch b (size: its length before Commit), which the unflushed-cmid set
// tracks (unflushed.go INVARIANT U). A batch Pebble committed as a
// flushable batch (half a memtable or more: stagedSize keeps batches below
// that, but one large operation can still make one) has no seqnum, so it
// is flushed into sstables here, where the cmid lookups find it, and 0 is
// returned: nothing to track. If that flush fails the store is marked
// broken, since its cmids would be in neither place.
// REQUIRES: the committer.
func (s *Store) lastSeqOf(b *pebble.Batch, size int) uint64 {
	if b.SeqNum() != 0 {
		return uint64(b.SeqNum()) + uint64(b.Count()) - 1
	}
	s.log.Warn("storage: batch committed as a flushable batch; flushing", "bytes", size)
	if err := s.db.Flush(); err != nil {
		s.log.Error("storage: flush after a flushable batch failed; refusing writes until a restart", "err", err)
		s.broken.Store(true)
	}
	return 0
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
