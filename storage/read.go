package storage

import (
	"container/heap"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// Readers: History, Convs, MarkRead's reply, GroupMembers, users. They
// never go through the committer. Metadata comes from the cache (published
// fields, under the shard lock) or, on a miss, from the current read
// snapshot (snap.go), and what they load is offered to the cache (cache.go
// INVARIANT 2). Messages are read from the live DB, clamped to the
// published last_seq: every message up to it is durable, and messages
// never change.
//
// A reader's values may come from different publishes (the cache can be
// newer than its snapshot). Every such value is durable, seqs and read
// marks only grow, and a read mark is clamped to the last_seq it is shown
// with, so what a reader returns is always valid: read_seq ≤ last_seq,
// unread = last_seq − read_seq, total_unread = the sum of the items'.

// reader is one read operation's view: its snapshot.
type reader struct {
	s  *Store
	sn *snapRef
}

// reader returns a reader of the current snapshot (close it), or
// errClosing once the store is closed.
func (s *Store) reader() (reader, error) {
	sn := s.acquire()
	if sn == nil {
		return reader{}, errClosing
	}
	return reader{s, sn}, nil
}

func (r reader) close() { r.s.release(r.sn) }

// fail logs an unexpected error and returns Internal.
func (r reader) fail(what string, err error) error {
	r.s.log.Error("storage: "+what, "err", err)
	return errInternal
}

// head returns conversation ck's published head. insert false keeps a
// value loaded on a miss out of the cache (large scans).
func (r reader) head(ck convKey, insert bool) (headView, error) {
	var hv headView
	k := headKey(ck)
	if r.s.cache.view(k, func(e *entry) {
		h := e.v.(*head)
		hv = headView{h.lastSeq, h.lastTS, h.pubReads, h.last}
	}) {
		return hv, nil
	}
	h, err := loadHead(r.sn.snap, ck)
	if err != nil {
		return hv, err
	}
	// Copy before offering: once cached, h belongs to the committer.
	hv = headView{h.lastSeq, h.lastTS, h.pubReads, h.last}
	if insert {
		r.s.cache.offer(k, h, 0, h.size(), r.sn.gen)
	}
	return hv, nil
}

// group returns group gid's record, or nil when it does not exist.
func (r reader) group(gid uint64) (*groupRec, error) {
	if gid == 0 || gid >= r.s.pubNextGID.Load() {
		return nil, nil
	}
	k := groupKey(gid)
	if v, _, ok := r.s.cache.get(k); ok {
		return v.(*groupRec), nil
	}
	g, err := loadGroup(r.sn.snap, gid)
	if err != nil || g == nil {
		// A gid below the published next gid whose record is not in the
		// snapshot was created after it: not there yet.
		return nil, err
	}
	r.s.cache.offer(k, g, 0, g.size(), r.sn.gen)
	return g, nil
}

// members returns group g's cached member list, or nil.
func (r reader) members(gid uint64) *memberList {
	if v, _, ok := r.s.cache.get(membersKey(gid)); ok {
		return v.(*memberList)
	}
	return nil
}

// mark returns uid's membership of group g and read mark in it, and
// offers what it loaded to the cache.
func (r reader) mark(g *groupRec, uid uint64) (member bool, mark uint64, err error) {
	return r.markOf(g, uid, true)
}

// markOf is mark; with offer false it leaves the cache alone (for reads
// that touch many members once).
func (r reader) markOf(g *groupRec, uid uint64, offer bool) (member bool, mark uint64, err error) {
	k := memberKey(g.id, uid)
	if r.s.cache.view(k, func(e *entry) {
		m := e.v.(*markEnt)
		member, mark = m.member, m.pub
	}) {
		return member, mark, nil
	}
	known := -1
	if l := r.members(g.id); l != nil {
		known = 0
		if _, ok := slices.BinarySearch(l.uids, uid); ok {
			known = 1
		}
	}
	m, err := loadMark(r.sn.snap, g.id, uid, known)
	if err != nil {
		return false, 0, err
	}
	member, mark = m.member, m.pub // before offering: once cached, m belongs to the committer
	if offer {
		r.s.cache.offer(k, m, 0, markSize, r.sn.gen)
	}
	return member, mark, nil
}

// isMember reports whether uid is a member of group g.
func (r reader) isMember(g *groupRec, uid uint64) (bool, error) {
	if l := r.members(g.id); l != nil {
		_, ok := slices.BinarySearch(l.uids, uid)
		return ok, nil
	}
	m, _, err := r.mark(g, uid)
	return m, err
}

// eachConv calls fn with every conversation of uid (groups it is a member
// of, direct conversations with messages), from the cached set or the
// snapshot; a set small enough is offered to the cache.
func (r reader) eachConv(uid uint64, fn func(ck convKey) error) error {
	k := convSetKey(uid)
	if v, _, ok := r.s.cache.get(k); ok {
		for _, ck := range v.(*convSet).convs {
			if err := fn(ck); err != nil {
				return err
			}
		}
		return nil
	}
	max := int((r.s.cache.maxList - convSetSize(0)) / 16)
	var set []convKey
	var ferr error
	err := scanConvs(r.sn.snap, uid, func(ck convKey) bool {
		if set != nil || max > 0 {
			if len(set) < max {
				set = append(set, ck)
			} else {
				set, max = nil, 0 // too large to cache
			}
		}
		ferr = fn(ck)
		return ferr == nil
	})
	if ferr != nil {
		return ferr
	}
	if err != nil {
		return err
	}
	if max > 0 {
		if set == nil {
			set = []convKey{}
		}
		slices.SortFunc(set, cmpConv)
		r.s.cache.offer(k, &convSet{set}, 0, convSetSize(len(set)), r.sn.gen)
	}
	return nil
}

// access checks that uid may read conversation k (PROTOCOL §4, §5: a
// well-formed conv naming an unknown user or group is NotFound, before
// NotMember) and returns the conversation's head and uid's read mark in
// it.
func (r reader) access(uid uint64, k convKey, insert bool) (headView, uint64, error) {
	if k.group() {
		g, err := r.group(k.a)
		if err != nil {
			return headView{}, 0, r.fail("group", err)
		}
		if g == nil {
			return headView{}, 0, &Error{Code: NotFound, Msg: "unknown group"}
		}
		member, mark, err := r.mark(g, uid)
		if err != nil {
			return headView{}, 0, r.fail("membership", err)
		}
		if !member {
			return headView{}, 0, &Error{Code: NotMember, Msg: "not a member of the group"}
		}
		h, err := r.head(k, insert)
		if err != nil {
			return headView{}, 0, r.fail("conversation head", err)
		}
		return h, min(mark, h.lastSeq), nil
	}
	next := r.s.pubNextUID.Load()
	if k.a >= next || k.b >= next {
		return headView{}, 0, &Error{Code: NotFound, Msg: "unknown user"}
	}
	if uid != k.a && uid != k.b {
		return headView{}, 0, &Error{Code: NotMember, Msg: "not a participant of the conversation"}
	}
	h, err := r.head(k, insert)
	if err != nil {
		return headView{}, 0, r.fail("conversation head", err)
	}
	i := 0
	if uid == k.b {
		i = 1
	}
	return h, min(h.reads[i], h.lastSeq), nil
}

func badConv(conv string) *Error {
	return &Error{Code: BadRequest, Msg: fmt.Sprintf("malformed conv %q", conv)}
}

func (s *Store) history(uid uint64, q HistoryQuery) ([]Message, bool, error) {
	k, ok := parseConvKey(q.Conv)
	if !ok {
		return nil, false, badConv(q.Conv)
	}
	if q.HasAfter && q.HasBefore {
		return nil, false, &Error{Code: BadRequest, Msg: "after and before are exclusive"}
	}
	if q.Limit < 1 {
		return nil, false, &Error{Code: BadRequest, Msg: "limit must be at least 1"}
	}
	r, err := s.reader()
	if err != nil {
		return nil, false, err
	}
	h, _, err := r.access(uid, k, true)
	r.close()
	if err != nil {
		return nil, false, err
	}
	// Only durable messages: last is the published last_seq.
	last := h.lastSeq
	// Seqs are gapless, so the page is a seq range [lo, hi] of 1..last.
	limit := uint64(q.Limit)
	var lo, hi uint64
	var more bool
	switch {
	case q.HasAfter:
		if q.After >= last {
			return []Message{}, false, nil
		}
		lo = q.After + 1
		hi = last
		if hi-lo+1 > limit {
			hi = lo + limit - 1
		}
		more = hi < last
	default:
		hi = last
		if q.HasBefore {
			if q.Before == 0 {
				return []Message{}, false, nil
			}
			hi = min(q.Before-1, last)
		}
		if hi == 0 {
			return []Message{}, false, nil
		}
		lo = 1
		if hi > limit {
			lo = hi - limit + 1
		}
		more = lo > 1
	}
	name := k.String()
	if h.lastSeq > 0 {
		name = h.last.Conv // shared with the head
	}
	msgs, err := s.readRange(k, name, lo, hi, h)
	if err != nil {
		s.log.Error("storage: history", "conv", name, "lo", lo, "hi", hi, "err", err)
		return nil, false, errInternal
	}
	return msgs, more, nil
}

// readRange reads messages lo..hi of conversation k, which must all exist
// (hi ≤ the published last_seq). The last message is h's when hi is
// last_seq.
func (s *Store) readRange(k convKey, name string, lo, hi uint64, h headView) ([]Message, error) {
	msgs := make([]Message, 0, hi-lo+1)
	top := hi
	if hi == h.lastSeq && hi > 0 {
		top = hi - 1 // the head holds the last message
	}
	if lo <= top {
		var lower, upper [msgKeyLen]byte
		putMsgKey(lower[:], k, lo)
		putMsgKey(upper[:], k, top+1) // top < last_seq ≤ MaxUint64
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower[:], UpperBound: upper[:]})
		if err != nil {
			return nil, err
		}
		defer it.Close()
		want := lo
		for ok := it.First(); ok; ok = it.Next() {
			key := it.Key()
			if len(key) != msgKeyLen || getU64(key[1+convLen:]) != want {
				return nil, fmt.Errorf("%w: message key %x, want seq %d", errCorrupt, key, want)
			}
			v, err := it.ValueAndErr()
			if err != nil {
				return nil, err
			}
			m := Message{Conv: name, Seq: want}
			if err := decodeMsg(v, &m); err != nil {
				return nil, err
			}
			msgs = append(msgs, m)
			want++
		}
		if err := it.Error(); err != nil {
			return nil, err
		}
		if want != top+1 {
			return nil, fmt.Errorf("%w: messages %d..%d missing", errCorrupt, want, top)
		}
	}
	if top < hi {
		msgs = append(msgs, h.last)
	}
	return msgs, nil
}

func unread(last, read uint64) uint64 {
	if read >= last {
		return 0
	}
	return last - read
}

// item builds uid's conversation list item of ck; ok is false when ck is
// not to be listed (a direct conversation without messages, a group uid
// has left since the conversation set was read).
func (r reader) item(uid uint64, ck convKey, insert bool) (it ConvItem, ts int64, ok bool, err error) {
	if ck.group() {
		g, err := r.group(ck.a)
		if err != nil || g == nil {
			return it, 0, false, err
		}
		member, mark, err := r.mark(g, uid)
		if err != nil || !member {
			return it, 0, false, err
		}
		h, err := r.head(ck, insert)
		if err != nil {
			return it, 0, false, err
		}
		read := min(mark, h.lastSeq)
		it = ConvItem{Conv: GroupConv(g.id), Group: g.id, Name: g.name, Owner: g.owner, Public: g.public,
			LastSeq: h.lastSeq, ReadSeq: read, Unread: unread(h.lastSeq, read)}
		ts = g.created
		if h.lastSeq > 0 {
			last := h.last
			it.Conv, it.Last, ts = last.Conv, &last, h.lastTS
		}
		it.TS = ts
		return it, ts, true, nil
	}
	h, err := r.head(ck, insert)
	if err != nil || h.lastSeq == 0 {
		return it, 0, false, err
	}
	me, peer := 0, 1
	if uid == ck.b {
		me, peer = 1, 0
	}
	peerUID := ck.a
	if peer == 1 {
		peerUID = ck.b
	}
	read := min(h.reads[me], h.lastSeq)
	last := h.last
	it = ConvItem{Conv: last.Conv, Peer: peerUID, LastSeq: h.lastSeq, ReadSeq: read, Unread: unread(h.lastSeq, read),
		PeerReadSeq: min(h.reads[peer], h.lastSeq), Last: &last, TS: h.lastTS}
	return it, h.lastTS, true, nil
}

// convsAllMax is how many items Convs returns without a limit: every item
// for every user with up to this many conversations (PROTOCOL §4); more
// come in pages (docs/PROTOCOL.md, "convs paging").
const convsAllMax = 10000

// insertLimit is the number of conversations up to which a listing loads
// whole heads (with the last message) and offers them to the cache;
// beyond it, it reads only what sorting and counting need (light), and
// caches nothing: a user with very many conversations would otherwise
// push everything else out of the cache.
const insertLimit = 1000

// before reports whether item (ts, conv) sorts before (ts2, conv2):
// newest first, ties by conv ascending (PROTOCOL §4).
func before(ts int64, conv string, ts2 int64, conv2 string) bool {
	if ts != ts2 {
		return ts > ts2
	}
	return conv < conv2
}

// listed is a conversation chosen for a page: its sort key, its unread
// as counted in the total, and the item when it was loaded whole.
type listed struct {
	ck     convKey
	conv   string
	ts     int64
	unread uint64
	item   *ConvItem
}

// listHeap is a max-heap of the listed conversations that sort last, for
// a top-k page.
type listHeap []listed

func (h listHeap) Len() int           { return len(h) }
func (h listHeap) Less(i, j int) bool { return before(h[j].ts, h[j].conv, h[i].ts, h[i].conv) }
func (h listHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *listHeap) Push(x any)        { *h = append(*h, x.(listed)) }
func (h *listHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// light returns what listing needs of ck without its last message: the
// sort ts and uid's unread; ok is false when ck is not to be listed.
func (r reader) light(uid uint64, ck convKey) (ts int64, unreadN uint64, ok bool, err error) {
	var seq uint64
	var reads [2]uint64
	hv := func() error {
		if r.s.cache.view(headKey(ck), func(e *entry) {
			h := e.v.(*head)
			seq, ts, reads = h.lastSeq, h.lastTS, h.pubReads
		}) {
			return nil
		}
		var kb [1 + convLen]byte
		_, err := getValue(r.sn.snap, keyConv(kb[:0], pfxMeta, ck), func(v []byte) error {
			var err error
			seq, ts, reads, err = decodeMeta(v, !ck.group())
			return err
		})
		return err
	}
	if ck.group() {
		g, err := r.group(ck.a)
		if err != nil || g == nil {
			return 0, 0, false, err
		}
		member, mark, err := r.markOf(g, uid, false)
		if err != nil || !member {
			return 0, 0, false, err
		}
		if err := hv(); err != nil {
			return 0, 0, false, err
		}
		if seq == 0 {
			ts = g.created
		}
		return ts, unread(seq, min(mark, seq)), true, nil
	}
	if err := hv(); err != nil || seq == 0 {
		return 0, 0, false, err
	}
	i := 0
	if uid == ck.b {
		i = 1
	}
	return ts, unread(seq, min(reads[i], seq)), true, nil
}

// convList lists a page of uid's conversations. It looks at every
// conversation (the total counts them all), keeping only the page's in a
// bounded heap; the first insertLimit are loaded whole (and cached), the
// rest light, and a light one that makes the page is loaded whole at the
// end.
func (s *Store) convList(uid uint64, q ConvsQuery) (ConvsPage, error) {
	if q.Limit < 0 {
		return ConvsPage{}, &Error{Code: BadRequest, Msg: "limit must not be negative"}
	}
	if q.HasBefore {
		if _, ok := parseConvKey(q.BeforeConv); !ok {
			return ConvsPage{}, badConv(q.BeforeConv)
		}
	}
	if uid == 0 || uid >= s.pubNextUID.Load() {
		return ConvsPage{}, &Error{Code: NotFound, Msg: "unknown user"}
	}
	limit := q.Limit
	if limit == 0 || limit > convsAllMax {
		limit = convsAllMax
	}
	r, err := s.reader()
	if err != nil {
		return ConvsPage{}, err
	}
	defer r.close()
	var page listHeap
	var total uint64
	n := 0
	more := false
	err = r.eachConv(uid, func(ck convKey) error {
		n++
		var l listed
		var ok bool
		var err error
		if n <= insertLimit {
			var it ConvItem
			if it, l.ts, ok, err = r.item(uid, ck, true); ok {
				l.item, l.unread, l.conv = &it, it.Unread, it.Conv
			}
		} else if l.ts, l.unread, ok, err = r.light(uid, ck); ok {
			l.conv = ck.String()
		}
		if err != nil || !ok {
			return err
		}
		l.ck = ck
		total += l.unread
		if q.HasBefore && !before(q.BeforeTS, q.BeforeConv, l.ts, l.conv) {
			return nil // not after the cursor
		}
		switch {
		case len(page) < limit:
			heap.Push(&page, l)
		case before(l.ts, l.conv, page[0].ts, page[0].conv):
			page[0] = l
			heap.Fix(&page, 0)
			more = true
		default:
			more = true
		}
		return nil
	})
	if err != nil {
		return ConvsPage{}, r.fail("convs", err)
	}
	items := make([]ConvItem, 0, len(page))
	for _, l := range page {
		if l.item == nil {
			it, _, ok, err := r.item(uid, l.ck, false)
			if err != nil {
				return ConvsPage{}, r.fail("convs", err)
			}
			if !ok {
				continue // left the group meanwhile
			}
			// The total counted the light value; the item may be newer.
			total = total - l.unread + it.Unread
			l.item = &it
		}
		items = append(items, *l.item)
	}
	slices.SortFunc(items, func(x, y ConvItem) int {
		switch {
		case before(x.TS, x.Conv, y.TS, y.Conv):
			return -1
		case before(y.TS, y.Conv, x.TS, x.Conv):
			return 1
		}
		return 0
	})
	return ConvsPage{Items: items, TotalUnread: total, More: more}, nil
}

func (s *Store) markRead(uid uint64, conv string, seq uint64) (readSeq, unreadN, total, grewTo uint64, err error) {
	k, ok := parseConvKey(conv)
	if !ok {
		return 0, 0, 0, 0, badConv(conv)
	}
	req := &request{kind: reqMarkRead, uid: uid, conv: k, seq: seq}
	if err := s.do(req); err != nil {
		return 0, 0, 0, 0, err
	}
	grewTo = req.grew
	// The reply reflects the published state after the batch, which may
	// include later messages or marks: a consistent snapshot no older than
	// this request.
	r, err := s.reader()
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer r.close()
	h, read, err := r.access(uid, k, true)
	if err != nil {
		return 0, 0, 0, 0, err // membership changed since
	}
	total, err = r.totalUnread(uid)
	if err != nil {
		return 0, 0, 0, 0, r.fail("total unread", err)
	}
	return read, unread(h.lastSeq, read), total, grewTo, nil
}

// totalUnread sums unread over every conversation uid is in.
func (r reader) totalUnread(uid uint64) (uint64, error) {
	var total uint64
	n := 0
	err := r.eachConv(uid, func(ck convKey) error {
		n++
		if n <= insertLimit {
			it, _, ok, err := r.item(uid, ck, true)
			if ok {
				total += it.Unread
			}
			return err
		}
		_, u, _, err := r.light(uid, ck)
		total += u
		return err
	})
	return total, err
}

// memberOf returns group gid's record when uid is a member: NotFound for
// an unknown group, NotMember for a non-member (PROTOCOL §4).
func (r reader) memberOf(gid, uid uint64) (*groupRec, error) {
	g, err := r.group(gid)
	if err != nil {
		return nil, r.fail("group", err)
	}
	if g == nil {
		return nil, &Error{Code: NotFound, Msg: "unknown group"}
	}
	member, err := r.isMember(g, uid)
	if err != nil {
		return nil, r.fail("membership", err)
	}
	if !member {
		return nil, &Error{Code: NotMember, Msg: "not a member of the group"}
	}
	return g, nil
}

func (s *Store) groupMembers(uid, gid, after uint64, limit int) (GroupInfo, error) {
	if limit < 1 {
		return GroupInfo{}, &Error{Code: BadRequest, Msg: "limit must be at least 1"}
	}
	r, err := s.reader()
	if err != nil {
		return GroupInfo{}, err
	}
	defer r.close()
	g, err := r.memberOf(gid, uid)
	if err != nil {
		return GroupInfo{}, err
	}
	gi := GroupInfo{ID: gid, Name: g.name, Count: int(g.count), Owner: g.owner, Public: g.public, Members: []uint64{}}
	if l := r.members(gid); l != nil {
		// An immutable snapshot: the page and the count agree.
		i, _ := slices.BinarySearch(l.uids, after+1)
		if after == ^uint64(0) {
			i = len(l.uids)
		}
		page := l.uids[i:]
		gi.More = len(page) > limit
		if gi.More {
			page = page[:limit]
		}
		gi.Count = len(l.uids)
		gi.Members = append(gi.Members, page...)
		return gi, nil
	}
	// The page comes from the snapshot: so does the count (the cached
	// record may be newer).
	if g, err = loadGroup(r.sn.snap, gid); err != nil || g == nil {
		if err == nil {
			return GroupInfo{}, &Error{Code: NotFound, Msg: "unknown group"}
		}
		return GroupInfo{}, r.fail("group", err)
	}
	gi.Count, gi.Owner, gi.Public, gi.Name = int(g.count), g.owner, g.public, g.name
	err = scanMembers(r.sn.snap, gid, after, func(uid uint64) bool {
		if len(gi.Members) == limit {
			gi.More = true
			return false
		}
		gi.Members = append(gi.Members, uid)
		return true
	})
	if err != nil {
		return GroupInfo{}, r.fail("group members", err)
	}
	return gi, nil
}

// Users are never changed once created, and uid < the published next uid
// means the user is durable: they are read from the live DB (no snapshot
// needed) and cached without generation checks.

// immutable is the snapshot generation of a value that no publish
// changes: its offer is never refused.
const immutable = ^uint64(0)

func (s *Store) userList(prefix string, after uint64, limit int) []User {
	out := []User{}
	if limit < 1 {
		return out
	}
	next := s.pubNextUID.Load()
	lp := strings.ToLower(prefix)
	if lp == "" {
		// By uid.
		var lo [9]byte
		keyUser(lo[:0], after+1)
		if after == ^uint64(0) {
			return out
		}
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo[:], UpperBound: keyUser(nil, next)})
		if err != nil {
			s.log.Error("storage: users", "err", err)
			return out
		}
		defer it.Close()
		for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
			k := it.Key()
			v, err := it.ValueAndErr()
			if len(k) != 9 || err != nil {
				s.log.Error("storage: users", "key", k, "err", err)
				return out
			}
			u := User{UID: getU64(k[1:])}
			if err := decodeUser(v, &u); err != nil {
				s.log.Error("storage: users", "uid", u.UID, "err", err)
				return out
			}
			out = append(out, u)
		}
		return out
	}
	// By name prefix: the names index holds exactly the matching users;
	// keep the limit smallest uids above after (a bounded max-heap).
	lo := keyName(nil, lp)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		s.log.Error("storage: users", "err", err)
		return out
	}
	var uids uidHeap
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil || len(v) != 8 {
			s.log.Error("storage: users", "key", it.Key(), "err", err)
			break
		}
		uid := getU64(v)
		if uid <= after || uid >= next {
			continue
		}
		if len(uids) < limit {
			heap.Push(&uids, uid)
		} else if uid < uids[0] {
			uids[0] = uid
			heap.Fix(&uids, 0)
		}
	}
	it.Close()
	slices.Sort(uids)
	for _, uid := range uids {
		if u, ok := s.userByID(uid); ok {
			out = append(out, u)
		}
	}
	return out
}

// uidHeap is a max-heap of uids.
type uidHeap []uint64

func (h uidHeap) Len() int           { return len(h) }
func (h uidHeap) Less(i, j int) bool { return h[i] > h[j] }
func (h uidHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *uidHeap) Push(x any)        { *h = append(*h, x.(uint64)) }
func (h *uidHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (s *Store) userByName(name string) (User, bool) {
	l := strings.ToLower(name)
	k := nameKey(maphash.String(s.cache.seed, l))
	v, uid, ok := s.cache.get(k)
	if !ok || v.(string) != l {
		var err error
		if uid, err = loadName(s.db, l); err != nil {
			s.log.Error("storage: user by name", "err", err)
			return User{}, false
		}
		if uid == 0 || uid >= s.pubNextUID.Load() {
			return User{}, false // none, or not durable yet
		}
		if !ok {
			s.cache.offer(k, l, uid, int64(16+len(l)), immutable)
		}
	}
	return s.userByID(uid)
}

func (s *Store) userByID(uid uint64) (User, bool) {
	if uid == 0 || uid >= s.pubNextUID.Load() {
		return User{}, false
	}
	k := userKey(uid)
	if v, _, ok := s.cache.get(k); ok {
		return *v.(*User), true
	}
	u, err := loadUser(s.db, uid)
	if err != nil || u == nil {
		s.log.Error("storage: user by id", "uid", uid, "err", err, "found", u != nil)
		return User{}, false
	}
	s.cache.offer(k, u, 0, userSize(u), immutable)
	return *u, true
}
