package storage

import (
	"fmt"
	"hash/maphash"

	"github.com/cockroachdb/pebble/v2"
)

// Senders' cmid fingerprints: the bounded cache of recent cmids that
// makes most idempotency checks free.
//
// Proving a cmid new in Pebble costs a Bloom filter probe per sstable
// level (and a data block read on every false positive): 1.5–2 µs per
// message on the committer. But a sender that is sending now has usually
// sent before, recently. So the committer keeps, for each sender it has
// seen lately, the 32-bit fingerprints of all that sender's stored cmids,
// in the metadata cache (kind kCMIDs, evicted like everything else when
// the sender goes quiet). A cmid whose fingerprint is not in its sender's
// set is new, with no Pebble read; a fingerprint hit (a retry, or a
// collision, probability n/2^32) takes the exact lookup.
//
// INVARIANT S: a sender's set, while cached, holds the fingerprint of
// every stored cmid of that sender. It is built by the committer from the
// sender's keys in the cmid index (c from …) of the live DB, which holds
// everything committed, and the committer adds every cmid it stores, right
// after the commit (a failed commit stores none). Only the committer uses
// the sets; readers never see them. A sender with more than
// maxSenderCMIDs stored cmids is not held (a "heavy" entry, so that its
// index is not scanned again): its cmids take the Pebble lookup.
//
// Memory: 4 bytes per slot, at most 3/4 full, for the senders that fit
// in the cache; loading a sender scans its cmid keys once (keys only).

// maxSenderCMIDs bounds the cmids of one sender held (and scanned at
// load): 16,384 (at most 128 KiB of slots).
var maxSenderCMIDs = 1 << 14

type senderFPs struct {
	slots     []uint32 // open addressing, linear probing; 0 = empty
	n         int
	heavy     bool
	accounted int64 // the size the cache counts
}

func (f *senderFPs) size() int64 { return int64(48 + 4*len(f.slots)) }

func (f *senderFPs) has(fp uint32) bool {
	if f.heavy {
		return true
	}
	m := len(f.slots) - 1
	for i := int(fp) & m; ; i = (i + 1) & m {
		switch f.slots[i] {
		case fp:
			return true
		case 0:
			return false
		}
	}
}

// add inserts fp; past maxSenderCMIDs the set turns heavy (and frees its
// slots).
func (f *senderFPs) add(fp uint32) {
	if f.heavy {
		return
	}
	if f.n+1 > maxSenderCMIDs {
		f.heavy, f.slots, f.n = true, nil, 0
		return
	}
	if (f.n+1)*4 > len(f.slots)*3 {
		old := f.slots
		f.slots = make([]uint32, max(16, 2*len(old)))
		f.n = 0
		for _, g := range old {
			if g != 0 {
				f.insert(g)
			}
		}
	}
	f.insert(fp)
}

func (f *senderFPs) insert(fp uint32) {
	m := len(f.slots) - 1
	i := int(fp) & m
	for ; f.slots[i] != 0; i = (i + 1) & m {
		if f.slots[i] == fp {
			return
		}
	}
	f.slots[i] = fp
	f.n++
}

// fp32 is the sender-set fingerprint of a cmid of hash h (cmidHash);
// never 0.
func (u *unflushedCMIDs) fp32(h uint64) uint32 {
	f := uint32(h>>32) & u.mask32
	if f == 0 {
		f = 1
	}
	return f
}

// senderSet returns from's cmid fingerprints, pinned, loading them from
// the cmid index on a miss.
func (c *committer) senderSet(from uint64) (*senderFPs, error) {
	k := ckey{kind: kCMIDs, a: from}
	if e := c.s.cache.pinned(k, c.gen); e != nil {
		return e.v.(*senderFPs), nil
	}
	f := &senderFPs{slots: make([]uint32, 16)}
	var lo [9]byte
	lo[0] = pfxCMID
	putU64(lo[1:], from)
	it, err := c.s.db.NewIter(&pebble.IterOptions{LowerBound: lo[:], UpperBound: prefixEnd(lo[:])})
	if err != nil {
		return nil, err
	}
	for ok := it.First(); ok && !f.heavy; ok = it.Next() {
		key := it.Key()
		if len(key) < 10 {
			it.Close()
			return nil, fmt.Errorf("cmid key %x: %w", key, errCorrupt)
		}
		f.add(c.s.unflushed.fp32(maphash.Bytes(c.s.unflushed.seed, key[9:])))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	f.accounted = f.size()
	return c.s.cache.addPinned(k, f, 0, f.accounted, c.gen).v.(*senderFPs), nil
}
