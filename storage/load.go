package storage

import (
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"
)

// Loading metadata from Pebble on a cache miss. The committer loads from
// the live DB, readers from their snapshot (cache.go INVARIANT 3); both
// are a pebble.Reader.
//
// Open no longer reads every conversation, so the consistency checks it
// used to make run here, when a value is loaded: a conversation head must
// match its last message (the message exists at last_seq and nothing
// follows it) and its read marks must not exceed last_seq. A failed check
// is logged and answered Internal; nothing is served from that
// conversation until it is repaired.

// getValue calls fn with the value of key in r; found is false (and fn is
// not called) when key does not exist.
func getValue(r pebble.Reader, key []byte, fn func(v []byte) error) (found bool, err error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	err = fn(v)
	closer.Close()
	return true, err
}

func exists(r pebble.Reader, key []byte) (bool, error) {
	return getValue(r, key, func([]byte) error { return nil })
}

// loadHead reads conversation ck's head and checks it against its last
// message. A conversation without a meta record (a direct one without
// messages, or a group without messages) has an empty head.
func loadHead(r pebble.Reader, ck convKey) (*head, error) {
	var kb [msgKeyLen]byte
	var seq uint64
	var ts int64
	var reads [2]uint64
	found, err := getValue(r, keyConv(kb[:0], pfxMeta, ck), func(v []byte) error {
		var err error
		seq, ts, reads, err = decodeMeta(v, !ck.group())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("conversation %s: meta: %w", ck, err)
	}
	if !found {
		return newHead(ck, 0, 0, reads, Message{}), nil
	}
	if seq == 0 {
		return nil, fmt.Errorf("conversation %s: %w: meta with last seq 0", ck, errCorrupt)
	}
	for _, rs := range reads {
		if rs > seq {
			return nil, fmt.Errorf("conversation %s: %w: read seq %d above last seq %d", ck, errCorrupt, rs, seq)
		}
	}
	// The last message must be at seq and nothing may follow it.
	var upper [msgKeyLen]byte
	putMsgKey(kb[:], ck, seq)
	if seq < math.MaxUint64 {
		putMsgKey(upper[:], ck, seq+1)
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: kb[:], UpperBound: prefixEnd(kb[:1+convLen])})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if !it.First() || string(it.Key()) != string(kb[:]) {
		if err := it.Error(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("conversation %s: %w: meta says last seq %d, no message found", ck, errCorrupt, seq)
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return nil, err
	}
	last := Message{Conv: ck.String(), Seq: seq}
	if err := decodeMsg(v, &last); err != nil {
		return nil, fmt.Errorf("conversation %s: last message: %w", ck, err)
	}
	if it.Next() {
		return nil, fmt.Errorf("conversation %s: %w: meta says last seq %d, a message with seq %d follows", ck, errCorrupt, seq, getU64(it.Key()[1+convLen:]))
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	return newHead(ck, seq, ts, reads, last), nil
}

// loadGroup reads group gid's record; nil when it does not exist.
func loadGroup(r pebble.Reader, gid uint64) (*groupRec, error) {
	var kb [9]byte
	var g *groupRec
	_, err := getValue(r, keyGroup(kb[:0], gid), func(v []byte) error {
		var err error
		g, err = decodeGroup(gid, v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("group %d: %w", gid, err)
	}
	return g, nil
}

// loadMark reads uid's membership of gid and read mark in it. member is
// the membership when the caller knows it (from a cached member list):
// 1 member, 0 not, -1 unknown.
func loadMark(r pebble.Reader, gid, uid uint64, member int) (*markEnt, error) {
	var kb [9 + convLen]byte
	m := &markEnt{}
	switch member {
	case -1:
		found, err := exists(r, keyMember(kb[:0], gid, uid))
		if err != nil {
			return nil, err
		}
		m.member = found
	default:
		m.member = member == 1
	}
	if !m.member {
		return m, nil
	}
	_, err := getValue(r, keyUserConv(kb[:0], pfxRead, uid, convKey{gid, 0}), func(v []byte) error {
		if len(v) != 8 {
			return errCorrupt
		}
		m.pub = getU64(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read mark of uid %d in g:%d: %w", uid, gid, err)
	}
	m.head = m.pub
	return m, nil
}

// scanMembers calls fn with group gid's member uids above after, ascending,
// until fn returns false.
func scanMembers(r pebble.Reader, gid, after uint64, fn func(uid uint64) bool) error {
	var lo [17]byte
	if after == math.MaxUint64 {
		return nil
	}
	keyMember(lo[:0], gid, after+1)
	upper := prefixEnd(lo[:9]) // past M gid
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo[:], UpperBound: upper})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != 17 {
			it.Close()
			return fmt.Errorf("membership key %x: %w", k, errCorrupt)
		}
		if !fn(getU64(k[9:])) {
			break
		}
	}
	if err := it.Error(); err != nil {
		it.Close()
		return err
	}
	return it.Close()
}

// loadMembers reads group gid's member list.
func loadMembers(r pebble.Reader, gid uint64, sizeHint uint64) ([]uint64, error) {
	uids := make([]uint64, 0, min(sizeHint, 1<<20))
	err := scanMembers(r, gid, 0, func(uid uint64) bool {
		uids = append(uids, uid)
		return true
	})
	return uids, err
}

// scanConvs calls fn with every conversation of uid: first the groups
// (G uid gid keys), then the direct conversations with messages (x keys),
// each ascending; fn returning false stops.
func scanConvs(r pebble.Reader, uid uint64, fn func(ck convKey) bool) error {
	for _, pfx := range []byte{pfxUGroup, pfxUConv} {
		var lo [9]byte
		lo[0] = pfx
		putU64(lo[1:], uid)
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo[:], UpperBound: prefixEnd(lo[:])})
		if err != nil {
			return err
		}
		stop := false
		for ok := it.First(); ok && !stop; ok = it.Next() {
			k := it.Key()
			var ck convKey
			switch {
			case pfx == pfxUGroup && len(k) == 17:
				ck = convKey{getU64(k[9:]), 0}
			case pfx == pfxUConv && len(k) == 9+convLen:
				ck = getConv(k[9:])
				if ck.group() || (ck.a != uid && ck.b != uid) {
					it.Close()
					return fmt.Errorf("user conversation %x: %w", k, errCorrupt)
				}
			default:
				it.Close()
				return fmt.Errorf("user conversation key %x: %w", k, errCorrupt)
			}
			stop = !fn(ck)
		}
		if err := it.Error(); err != nil {
			it.Close()
			return err
		}
		if err := it.Close(); err != nil {
			return err
		}
		if stop {
			return nil
		}
	}
	return nil
}

// loadUser reads user uid; nil when it does not exist.
func loadUser(r pebble.Reader, uid uint64) (*User, error) {
	var kb [9]byte
	var u *User
	_, err := getValue(r, keyUser(kb[:0], uid), func(v []byte) error {
		u = &User{UID: uid}
		return decodeUser(v, u)
	})
	if err != nil {
		return nil, fmt.Errorf("user %d: %w", uid, err)
	}
	return u, nil
}

// loadName reads the uid of lower-case name lname; 0 when there is none.
func loadName(r pebble.Reader, lname string) (uint64, error) {
	var uid uint64
	_, err := getValue(r, keyName(nil, lname), func(v []byte) error {
		if len(v) != 8 {
			return errCorrupt
		}
		uid = getU64(v)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("name %q: %w", lname, err)
	}
	return uid, nil
}

// lastID returns the highest id of the keys pfx id (8-byte ids), 0 when
// there are none.
func lastID(r pebble.Reader, pfx byte) (uint64, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{pfx}, UpperBound: []byte{pfx + 1}})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	if !it.Last() {
		return 0, it.Error()
	}
	k := it.Key()
	if len(k) != 9 {
		return 0, fmt.Errorf("key %x: %w", k, errCorrupt)
	}
	return getU64(k[1:]), nil
}
