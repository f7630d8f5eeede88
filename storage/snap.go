package storage

import (
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Read snapshots (cache.go INVARIANT 3). Pebble makes a committed batch
// visible to readers of the live DB before its WAL sync has finished, so
// readers never load metadata from the live DB: they load from the
// snapshot the committer takes after every publish, which holds exactly
// the durable, published state of that generation.
//
// The current snapshot has one reference of its own, dropped when the
// next one replaces it; each reader holds one while it reads. The last
// release closes it. A reference count that reached 0 never rises again
// (acquire only increments a positive count), so a closed snapshot is
// never handed out.

type snapRef struct {
	snap *pebble.Snapshot
	gen  uint64 // the unit of work it follows (cache.go INVARIANT 2)
	refs atomic.Int64
}

// acquire returns the current snapshot, referenced: release it. It
// returns nil once Close released the last snapshot (a reference count of
// 0 is otherwise only seen between newSnap's swap and its release, and
// the next Load sees the new snapshot).
func (s *Store) acquire() *snapRef {
	for {
		r := s.snap.Load()
		n := r.refs.Load()
		if n > 0 && r.refs.CompareAndSwap(n, n+1) {
			return r
		}
		if n <= 0 && s.snapClosed.Load() {
			return nil
		}
	}
}

func (s *Store) release(r *snapRef) {
	if r.refs.Add(-1) == 0 {
		_ = r.snap.Close()
	}
}

// newSnap makes a snapshot of the live DB the current one. REQUIRES: the
// committer (or Open), with nothing committed that is not yet published.
func (s *Store) newSnap(gen uint64) {
	r := &snapRef{snap: s.db.NewSnapshot(), gen: gen}
	r.refs.Store(1)
	if old := s.snap.Swap(r); old != nil {
		s.release(old)
	}
}
