package storage

import (
	"hash/maphash"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Exact cmid lookups at the cost of a Bloom filter probe, and a bounded
// cache of recent cmids.
//
// A new cmid must be proven absent from the cmid index (the c keys). Most
// of the index is in sstables, whose Bloom filters prove a key absent
// without reading a data block; the rest is in Pebble's memtables, whose
// skiplist search dominated the committer's CPU (a cache-missing walk of
// up to 4 × 16 MiB of skiplist per lookup). So the committer keeps the
// 64-bit fingerprints of the cmids it committed that are not yet flushed
// to sstables, each with where its message went, and looks in Pebble with
// an iterator that reads sstables only
// (IterOptions.OnlyReadGuaranteedDurable):
//
//   - a cmid whose fingerprint is in the set may be in a memtable: the
//     lookup in the whole DB (memtables and sstables) decides. This set is
//     the bounded cache of recent cmids: a retry comes soon after its
//     original, while its index entry is still in a memtable.
//   - any other stored cmid is in an sstable, which the sstable-only
//     iterator sees.
//
// INVARIANT U: every committed cmid not in the sstables visible to an
// iterator created now has its fingerprint in the set. The committer adds
// a batch's cmids right after its commit returns, with the batch's last
// sequence number, and drops entries only up to flushedSeq, the largest
// sequence number written by a completed flush. Pebble reports a flush
// (EventListener.FlushEnd) after installing the read state that includes
// its tables, and memtables are flushed in sequence order, so every batch
// at or below flushedSeq is in the sstables of every iterator created
// after flushedSeq was read. Open flushes the memtables first (Pebble
// flushes the WAL it replays, and start flushes whatever Open wrote), so
// the set starts empty.
//
// Memory is bounded by the memtables (at most MemTableSize ×
// MemTableStopWritesThreshold of data is unflushed), not by the history.
// Owned by the committer; flushedSeq is written by Pebble's flush
// goroutine.
type unflushedCMIDs struct {
	seed maphash.Seed
	// set is an open-addressing multiset of fingerprints (linear probing,
	// 0 = empty slot, at most half full): compact, so that its probes stay
	// in the CPU cache. A fingerprint added twice is held twice.
	set   []uint64
	count int
	// fifo holds the entries in commit order (seqnums ascending) for
	// dropping them once flushed.
	fifo       []fpSeq
	head       int
	flushedSeq atomic.Uint64
	n          atomic.Int64
	// mask and mask32 keep only some fingerprint bits (of fp and fp32);
	// tests narrow them to force collisions. Normally all ones.
	mask   uint64
	mask32 uint32
}

type fpSeq struct{ fp, seq uint64 }

func newUnflushedCMIDs() *unflushedCMIDs {
	return &unflushedCMIDs{seed: maphash.MakeSeed(), set: make([]uint64, 1<<12), mask: ^uint64(0), mask32: ^uint32(0)}
}

// cmidHash hashes a cmid; fp and fp32 (senders.go) derive fingerprints
// from it.
func (u *unflushedCMIDs) cmidHash(cmid string) uint64 { return maphash.String(u.seed, cmid) }

// fp is the fingerprint of (from, a cmid of hash h); never 0.
func (u *unflushedCMIDs) fp(from, h uint64) uint64 {
	f := (h ^ (from * 0x9e3779b97f4a7c15)) & u.mask
	if f == 0 {
		f = 1
	}
	return f
}

// flushed is the EventListener.FlushEnd hook.
func (u *unflushedCMIDs) flushed(info pebble.FlushInfo) {
	if info.Err != nil {
		return
	}
	var top uint64
	for _, t := range info.Output {
		top = max(top, uint64(t.LargestSeqNum))
	}
	for {
		cur := u.flushedSeq.Load()
		if top <= cur || u.flushedSeq.CompareAndSwap(cur, top) {
			return
		}
	}
}

// slot is where fingerprint f's probe sequence starts.
func (u *unflushedCMIDs) slot(f uint64) int {
	return int((f * 0x9e3779b97f4a7c15) >> 32 & uint64(len(u.set)-1))
}

// prune drops the entries of flushed batches. Call before creating the
// sstable-only iterator of a batch.
func (u *unflushedCMIDs) prune() {
	f := u.flushedSeq.Load()
	for u.head < len(u.fifo) && u.fifo[u.head].seq <= f {
		u.remove(u.fifo[u.head].fp)
		u.head++
	}
	if u.head > 4096 && u.head*2 > len(u.fifo) {
		n := copy(u.fifo, u.fifo[u.head:])
		u.fifo, u.head = u.fifo[:n], 0
	}
	u.n.Store(int64(u.count))
}

// has reports whether fingerprint f may be an unflushed cmid.
func (u *unflushedCMIDs) has(f uint64) bool {
	m := len(u.set) - 1
	for i := u.slot(f); ; i = (i + 1) & m {
		switch u.set[i] {
		case f:
			return true
		case 0:
			return false
		}
	}
}

// add records a committed cmid of the batch whose last seqnum is seq.
func (u *unflushedCMIDs) add(f, seq uint64) {
	if (u.count+1)*2 > len(u.set) {
		old := u.set
		u.set = make([]uint64, 2*len(old))
		u.count = 0
		for _, g := range old {
			if g != 0 {
				u.insert(g)
			}
		}
	}
	u.insert(f)
	u.fifo = append(u.fifo, fpSeq{f, seq})
	u.n.Store(int64(u.count))
}

func (u *unflushedCMIDs) insert(f uint64) {
	m := len(u.set) - 1
	i := u.slot(f)
	for u.set[i] != 0 {
		i = (i + 1) & m
	}
	u.set[i] = f
	u.count++
}

// remove deletes one copy of f, shifting later entries of the probe run
// back so that no lookup stops early (no tombstones).
func (u *unflushedCMIDs) remove(f uint64) {
	m := len(u.set) - 1
	i := u.slot(f)
	for u.set[i] != f {
		if u.set[i] == 0 {
			return // not there (cannot happen: every removal has its add)
		}
		i = (i + 1) & m
	}
	u.count--
	for j := (i + 1) & m; ; j = (j + 1) & m {
		g := u.set[j]
		if g == 0 {
			break
		}
		// g may move to i if its home slot is not in (i, j].
		if h := u.slot(g); (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			u.set[i] = g
			i = j
		}
	}
	u.set[i] = 0
}
