package storage

import (
	"hash/maphash"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Exact cmid lookups at the cost of a Bloom filter probe.
//
// A new cmid must be proven absent from the cmid index (the c keys). Most
// of the index is in sstables, whose Bloom filters prove a key absent
// without reading a data block; the rest is in Pebble's memtables, whose
// skiplist search dominated the committer's CPU (a cache-missing walk of
// up to 4 × 16 MiB of skiplist per lookup). So the committer keeps the
// fingerprints of the cmids it committed that are not yet flushed to
// sstables, and looks in Pebble with an iterator that reads sstables only
// (IterOptions.OnlyReadGuaranteedDurable):
//
//   - a cmid whose fingerprint is in the set may be in a memtable: the
//     exact lookup (memtables and sstables) decides;
//   - any other stored cmid is in an sstable, which the sstable-only
//     iterator sees.
//
// INVARIANT 5: every committed cmid not in the sstables visible to an
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
	m    map[uint64]uint64 // fingerprint → last seqnum of the batch that wrote it
	// fifo holds the entries in commit order (seqnums ascending) for
	// dropping them once flushed.
	fifo       []fpSeq
	head       int
	flushedSeq atomic.Uint64
	n          atomic.Int64
}

type fpSeq struct{ fp, seq uint64 }

func newUnflushedCMIDs() *unflushedCMIDs {
	return &unflushedCMIDs{seed: maphash.MakeSeed(), m: make(map[uint64]uint64)}
}

func (u *unflushedCMIDs) fp(from uint64, cmid string) uint64 {
	return maphash.String(u.seed, cmid) ^ (from * 0x9e3779b97f4a7c15)
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

// prune drops the entries of flushed batches. Call before creating the
// sstable-only iterator of a batch.
func (u *unflushedCMIDs) prune() {
	f := u.flushedSeq.Load()
	for u.head < len(u.fifo) && u.fifo[u.head].seq <= f {
		e := u.fifo[u.head]
		if u.m[e.fp] == e.seq {
			delete(u.m, e.fp)
		}
		u.head++
	}
	if u.head > 4096 && u.head*2 > len(u.fifo) {
		n := copy(u.fifo, u.fifo[u.head:])
		clear(u.fifo[n:])
		u.fifo, u.head = u.fifo[:n], 0
	}
	u.n.Store(int64(len(u.m)))
}

func (u *unflushedCMIDs) has(fp uint64) bool {
	_, ok := u.m[fp]
	return ok
}

// add records a committed cmid of the batch whose last seqnum is seq.
func (u *unflushedCMIDs) add(fp, seq uint64) {
	u.m[fp] = seq
	u.fifo = append(u.fifo, fpSeq{fp, seq})
	u.n.Store(int64(len(u.m)))
}
