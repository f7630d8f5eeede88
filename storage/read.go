package storage

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// access checks that uid may read conversation k (PROTOCOL §4, §5: a
// well-formed conv naming an unknown user or group is NotFound, before
// NotMember) and returns the conversation and uid's read mark in it; both
// are nil for a direct conversation without messages. REQUIRES: s.mu held,
// or the committer (membership only changes in barriers).
func (s *Store) access(uid uint64, k convKey) (*conv, *mark, error) {
	if k.group() {
		g := s.groups[k.a]
		if g == nil {
			return nil, nil, &Error{Code: NotFound, Msg: "unknown group"}
		}
		m := g.members[uid]
		if m == nil {
			return nil, nil, &Error{Code: NotMember, Msg: "not a member of the group"}
		}
		return g.conv, m, nil
	}
	if s.users[k.a] == nil || s.users[k.b] == nil {
		return nil, nil, &Error{Code: NotFound, Msg: "unknown user"}
	}
	if uid != k.a && uid != k.b {
		return nil, nil, &Error{Code: NotMember, Msg: "not a participant of the conversation"}
	}
	c := s.convs[k]
	if c == nil {
		return nil, nil, nil
	}
	return c, c.markOf(uid), nil
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
	s.mu.RLock()
	c, _, err := s.access(uid, k)
	var last uint64
	var name string
	if c != nil {
		// Only durable messages: Pebble may show a batch that is still
		// being synced; last_seq is published after the sync.
		last, name = c.lastSeq, c.name
	}
	s.mu.RUnlock()
	if err != nil {
		return nil, false, err
	}
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
	msgs, err := s.readRange(k, name, lo, hi)
	if err != nil {
		s.log.Error("storage: history", "conv", name, "lo", lo, "hi", hi, "err", err)
		return nil, false, errInternal
	}
	return msgs, more, nil
}

// readRange reads messages lo..hi of conversation k, which must all exist.
func (s *Store) readRange(k convKey, name string, lo, hi uint64) ([]Message, error) {
	var lower, upper [msgKeyLen]byte
	putMsgKey(lower[:], k, lo)
	putMsgKey(upper[:], k, hi+1) // hi < last_seq+1 ≤ MaxUint64
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower[:], UpperBound: upper[:]})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	msgs := make([]Message, 0, hi-lo+1)
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
	if want != hi+1 {
		return nil, fmt.Errorf("%w: messages %d..%d missing", errCorrupt, want, hi)
	}
	return msgs, nil
}

// unreadLocked is last_seq − read_seq. REQUIRES: s.mu held.
func unreadLocked(c *conv, m *mark) uint64 {
	if m.pub >= c.lastSeq {
		return 0
	}
	return c.lastSeq - m.pub
}

// totalUnreadLocked sums unread over every conversation u is in.
// REQUIRES: s.mu held.
func totalUnreadLocked(u *user) uint64 {
	var t uint64
	for _, g := range u.groups {
		t += unreadLocked(g.conv, g.members[u.UID])
	}
	for _, c := range u.directs {
		t += unreadLocked(c, c.markOf(u.UID))
	}
	return t
}

func (s *Store) convList(uid uint64) ([]ConvItem, uint64, error) {
	type sortable struct {
		ts int64
		it ConvItem
	}
	s.mu.RLock()
	u := s.users[uid]
	if u == nil {
		s.mu.RUnlock()
		return nil, 0, &Error{Code: NotFound, Msg: "unknown user"}
	}
	list := make([]sortable, 0, len(u.groups)+len(u.directs))
	var total uint64
	for _, g := range u.groups {
		c, m := g.conv, g.members[uid]
		it := ConvItem{Conv: c.name, Group: g.id, Name: g.name, LastSeq: c.lastSeq, ReadSeq: m.pub, Unread: unreadLocked(c, m)}
		ts := g.created
		if c.lastSeq > 0 {
			last := c.last
			it.Last, ts = &last, c.lastTS
		}
		total += it.Unread
		list = append(list, sortable{ts, it})
	}
	for peer, c := range u.directs {
		m := c.markOf(uid)
		last := c.last
		it := ConvItem{Conv: c.name, Peer: peer, LastSeq: c.lastSeq, ReadSeq: m.pub, Unread: unreadLocked(c, m), Last: &last}
		total += it.Unread
		list = append(list, sortable{c.lastTS, it})
	}
	s.mu.RUnlock()
	slices.SortFunc(list, func(x, y sortable) int {
		switch {
		case x.ts > y.ts:
			return -1
		case x.ts < y.ts:
			return 1
		}
		return strings.Compare(x.it.Conv, y.it.Conv)
	})
	items := make([]ConvItem, len(list))
	for i := range list {
		items[i] = list[i].it
	}
	return items, total, nil
}

func (s *Store) markRead(uid uint64, conv string, seq uint64) (readSeq, unread, total uint64, err error) {
	k, ok := parseConvKey(conv)
	if !ok {
		return 0, 0, 0, badConv(conv)
	}
	if err := s.do(&request{kind: reqMarkRead, uid: uid, conv: k, seq: seq}); err != nil {
		return 0, 0, 0, err
	}
	// The reply reflects the published state after the batch, which may
	// include later messages or marks: a consistent snapshot no older than
	// this request.
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, m, err := s.access(uid, k)
	if err != nil {
		return 0, 0, 0, err // membership changed since
	}
	if u := s.users[uid]; u != nil {
		total = totalUnreadLocked(u)
	}
	if c == nil {
		return 0, 0, total, nil
	}
	return m.pub, unreadLocked(c, m), total, nil
}

func (s *Store) groupMembers(uid, gid, after uint64, limit int) (GroupInfo, error) {
	if limit < 1 {
		return GroupInfo{}, &Error{Code: BadRequest, Msg: "limit must be at least 1"}
	}
	s.mu.RLock()
	g := s.groups[gid]
	if g == nil {
		s.mu.RUnlock()
		return GroupInfo{}, &Error{Code: NotFound, Msg: "unknown group"}
	}
	if g.members[uid] == nil {
		s.mu.RUnlock()
		return GroupInfo{}, &Error{Code: NotMember, Msg: "not a member of the group"}
	}
	r, name := g.recips, g.name // immutable snapshot
	s.mu.RUnlock()
	i, _ := slices.BinarySearch(r, after+1)
	if after == ^uint64(0) {
		i = len(r)
	}
	page := r[i:]
	more := len(page) > limit
	if more {
		page = page[:limit]
	}
	return GroupInfo{ID: gid, Name: name, Count: len(r), Members: append([]uint64{}, page...), More: more}, nil
}

func (s *Store) userList(prefix string, after uint64, limit int) []User {
	if limit < 1 {
		return []User{}
	}
	lp := strings.ToLower(prefix)
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := sort.Search(len(s.byUID), func(i int) bool { return s.byUID[i].UID > after })
	out := []User{}
	for ; i < len(s.byUID) && len(out) < limit; i++ {
		u := s.byUID[i]
		if strings.HasPrefix(u.lname, lp) {
			out = append(out, u.User)
		}
	}
	return out
}

func (s *Store) userByName(name string) (User, bool) {
	l := strings.ToLower(name)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if u := s.names[l]; u != nil {
		return u.User, true
	}
	return User{}, false
}

func (s *Store) userByID(uid uint64) (User, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if u := s.users[uid]; u != nil {
		return u.User, true
	}
	return User{}, false
}
