package wheel

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/RussellLuo/timingwheel"
)

// atomicInt64 names the atomic type of Timer's fields (keeps Timer's doc
// readable).
type atomicInt64 = atomic.Int64

// fireChunk is how many timers an expiry settles per hold of the shard lock,
// so that Set slow paths on event loops wait microseconds, not the time it
// takes to settle a slot of a million timers.
const fireChunk = 128

// maxAt caps deadlines (year 2116) so that rounding up cannot overflow.
const maxAt = 1 << 62

// shard is an independent set of slots with its own lock. Timers are spread
// over shards round-robin at Init, so event loops arming timers rarely
// contend on a lock.
type shard struct {
	mu    sync.Mutex
	w     *Wheel
	slots map[int64]*slot // by expiry; guarded by mu
	live  int             // linked timers; guarded by mu
	_     [32]byte        // 64 bytes: shards on separate cache lines
}

// slot holds the timers of one shard armed at one expiry (a Tick boundary)
// and the one timingwheel timer that runs them. All fields are guarded by
// sh.mu, except exp, sh and run which never change.
type slot struct {
	head Timer // sentinel of the circular list of timers
	exp  int64 // Unix ns, a multiple of the Tick
	n    int   // timers linked
	sh   *shard
	run  func() // sh.expire(s) for the timingwheel; allocated once per slot
	twt  *timingwheel.Timer
	// running: an expiry is settling this slot; it removes the slot when it
	// finds it empty. dead: removed from sh.slots, never to run again.
	running, dead bool
}

// reconcile is Set's and Stop's slow path.
//
//go:noinline
func (sh *shard) reconcile(t *Timer) {
	sh.mu.Lock()
	sh.settle(t, 0)
	sh.mu.Unlock()
}

// settle links t into the slot its deadline calls for, or unlinks it, and
// reports whether t was due at now and has been claimed for firing (its
// deadline swapped to 0). now == 0 never claims: Set and Stop do not fire.
// Every return follows a load of the deadline made after this goroutine's
// last store to t.armed, which is what makes Set's fast path safe.
// REQUIRES: sh.mu.
func (sh *shard) settle(t *Timer, now int64) bool {
	for {
		d := t.deadline.Load()
		e := t.armed.Load()
		switch {
		case e != 0 && (d <= 0 || d < e):
			sh.unlink(t, nil) // stopped, or moved earlier than its slot
		case e != 0 || d <= 0:
			return false // in d's slot or an earlier one (lazy), or disarmed and unlinked
		case d <= now:
			if t.deadline.CompareAndSwap(d, 0) {
				return true
			}
			// A Set raced with us: look again.
		default:
			sh.link(t, d)
		}
	}
}

// link appends t to the slot of deadline d, creating and scheduling the
// slot if needed. REQUIRES: sh.mu; t unlinked; d > 0.
func (sh *shard) link(t *Timer, d int64) {
	if d > maxAt {
		d = maxAt
	}
	w := sh.w
	exp := roundUp(d, w.tick)
	s := sh.slots[exp]
	if s == nil {
		s = &slot{exp: exp, sh: sh}
		s.head.next, s.head.prev = &s.head, &s.head
		s.run = func() { sh.expire(s) }
		sh.slots[exp] = s
		w.schedule(s, exp-w.precise())
	}
	last := s.head.prev
	t.prev, t.next = last, &s.head
	last.next = t
	s.head.prev = t
	s.n++
	sh.live++
	t.armed.Store(exp - w.tick + 1)
}

// unlink removes t from its slot s (looked up when nil). A slot left empty
// and not being settled is removed and its timingwheel timer stopped.
// REQUIRES: sh.mu; t linked.
func (sh *shard) unlink(t *Timer, s *slot) {
	if s == nil {
		s = sh.slots[t.armed.Load()+sh.w.tick-1]
	}
	t.prev.next = t.next
	t.next.prev = t.prev
	t.next, t.prev = nil, nil
	s.n--
	sh.live--
	t.armed.Store(0)
	if s.n == 0 && !s.running {
		sh.remove(s)
		if s.twt != nil {
			s.twt.Stop()
		}
	}
}

// remove takes s out of sh.slots for good. REQUIRES: sh.mu.
func (sh *shard) remove(s *slot) {
	s.dead = true
	delete(sh.slots, s.exp)
}

// expire settles the timers of s, a slot whose expiry came, and calls fire
// for those whose deadline passed, outside the shard lock, in chunks of
// fireChunk. It returns the number of fire calls. Runs on the goroutine the
// timingwheel starts for the slot (or Advance's caller in manual mode).
func (sh *shard) expire(s *slot) int {
	w := sh.w
	w.runMu.RLock()
	defer w.runMu.RUnlock()
	var buf [fireChunk]*Timer
	fired := 0
	for {
		sh.mu.Lock()
		if s.dead || w.stopped.Load() {
			sh.mu.Unlock()
			return fired
		}
		now := w.precise()
		if now < s.exp {
			// The timingwheel ran us early (its wall-clock grid, or a clock
			// step). Wait at least a Tick, so that an expiry it considers
			// already due cannot spin.
			w.schedule(s, max(s.exp-now, w.tick))
			sh.mu.Unlock()
			return fired
		}
		s.running = true
		nf := 0
		for i := 0; i < fireChunk && s.n > 0; i++ {
			t := s.head.next
			sh.unlink(t, s)
			if sh.settle(t, now) {
				buf[nf] = t
				nf++
			}
		}
		done := s.n == 0
		if done {
			sh.remove(s)
		}
		sh.mu.Unlock()
		for i, t := range buf[:nf] {
			buf[i] = nil
			t.fire()
		}
		fired += nf
		if done {
			return fired
		}
	}
}

// schedule arranges for s to expire in d ns (d ≤ 0: at once): a timingwheel
// timer, or in manual mode a place in the list Advance looks at. Nothing is
// scheduled after Stop. REQUIRES: s.sh.mu.
func (w *Wheel) schedule(s *slot, d int64) {
	if w.stopped.Load() {
		return
	}
	if w.tw == nil {
		w.mmu.Lock()
		w.due = append(w.due, s)
		w.mmu.Unlock()
		return
	}
	s.twt = w.tw.AfterFunc(time.Duration(max(d, 0)), s.run)
}
