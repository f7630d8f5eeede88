// Package wheel provides lazy-deadline timers for a million connections on
// a hierarchical timing wheel (github.com/RussellLuo/timingwheel).
//
// CONTRACT (the server is written against these names; keep them):
//
//	New(Options) *Wheel; (*Wheel).Start(); (*Wheel).Stop(); (*Wheel).Now() int64
//	(*Timer).Init(w, fire func()); (*Timer).Set(at int64); (*Timer).Stop()
//
// Additions: (*Wheel).Live() int (armed timers, for leak tests and metrics),
// (*Wheel).ClockStalls() uint64 (a metric: times Now fell behind the real
// time), (*Wheel).Advance() int (drives expiry by hand when Options.Clock is
// set), Options.EnsureDefaults and Options.Validate.
//
// Touching a connection on traffic is `t.Set(w.Now() + idle)`: when the new
// deadline is not earlier than the scheduled wheel expiry this is one atomic
// store and 0 allocations. When the wheel expiry comes and the deadline has
// moved later, the wheel re-arms the timer for the remainder by itself;
// fire is called only once the stored deadline has really passed.
//
// # Design
//
// A Timer is an intrusive list node (48 bytes, no allocation of its own). The
// wheel groups armed timers by expiry tick into slots: a slot holds every
// timer of one shard whose deadline rounds up to the same Tick boundary, and
// owns exactly one timingwheel timer. So the timingwheel holds one timer per
// (shard, Tick) that has work, not one per connection:
//
//   - arming a timer into an existing slot is a map lookup and a few pointer
//     writes under the shard lock, no allocation; the timingwheel's per-add
//     costs (AfterFunc allocates its Timer and a list element, about 200
//     bytes with our slot) are paid once per slot;
//   - the goroutine the timingwheel starts for each expiry (`go t.task()`)
//     runs a whole slot and calls fire for every due timer of it in a row:
//     at most one goroutine per shard per Tick, however many timers expire.
//     A fixed set of dispatcher goroutines fed from that callback could only
//     add a channel hand-off to the goroutine the library starts anyway;
//   - memory is the Timer (embedded in the connection) plus the slots,
//     bounded by shards × (longest deadline / Tick): about 51 bytes per timer
//     measured over 1,000,000 idle timers (docs/bench/wheel.md).
//
// A slot left empty by Stop or by an earlier Set is removed and its
// timingwheel timer stopped at once, so stopped timers leave nothing behind.
// The price: a timer alone in its slot pays AfterFunc and a cancel on every
// arm/stop pair (about 0.8µs of CPU here); timers sharing slots, the usual case
// with many connections, pay about 80ns.
//
// When a slot expires, each of its timers is settled: a deadline that has
// passed is claimed (compare-and-swap to 0) and fire is called after the
// shard lock is released; a deadline that moved later is re-linked into the
// slot of its new deadline (the lazy re-arm); a stopped timer is dropped.
//
// # Time
//
// Deadlines are Unix nanoseconds on the wheel's clock: the wall clock read at
// New, advanced by the monotonic clock, so they follow elapsed time and not
// later steps of the system clock. The timingwheel underneath schedules by
// wall time; a slot it runs early (its grid, or a clock step) is re-armed
// for the remainder, and the clock goroutine re-arms every slot when it sees
// the wall clock step, so timers still fire never early and about one Tick
// late.
//
// Now is a coarse clock: an atomic load of a value that the clock goroutine
// stores every Tick, set two Ticks past the next Tick boundary. It is never
// behind the real time as long as that goroutine runs less than 1¾ Ticks
// late (ClockStalls counts the times it was later; an event loop busy for
// 10ms can delay it that much on a saturated machine), and 2 to 3 Ticks
// ahead; a deadline `Now() + d` with d a whole number of Ticks then fires
// between d+2 and d+3 Ticks after the event (20–30ms by default, well inside
// PROTOCOL.md's 100ms), plus the scheduling delay of the expiry goroutine.
//
// # Concurrency
//
// Set and Stop are safe from any goroutine and race only with expiry, which
// runs on a goroutine of the wheel. The protocol between them is Dekker's:
// Set stores the deadline and then loads the slot expiry the timer is armed
// at; whoever changes a timer's slot (always under the shard lock) stores the
// new slot expiry and then loads the deadline again. Sequentially consistent
// atomics make at least one side see the other's write, so a Set that
// returns on the fast path is never lost. Concurrent Set calls on one timer
// from different goroutines are allowed; one of them wins.
package wheel

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RussellLuo/timingwheel"
)

// Clock tells the time. Tests inject a fake one.
type Clock interface{ Now() time.Time }

// Options configure a Wheel.
type Options struct {
	// Tick is the wheel's resolution. Timers fire never early and at most
	// about one Tick late. It must be a whole number of milliseconds, at
	// least 1ms (the timingwheel underneath counts in milliseconds). The
	// default value is 10ms.
	Tick time.Duration
	// Size is the number of buckets per wheel level, at least 2. The default
	// value is 512.
	Size int64
	// Clock is the time source. The default value is the real clock, with
	// which Start runs the timing wheel.
	//
	// A non-nil Clock puts the wheel in manual mode, for tests: no timing
	// wheel and no goroutines run; timers expire only when Advance is called,
	// against Clock's time, on the caller's goroutine, and Now reads Clock on
	// every call (rounded up to the Tick).
	Clock Clock
}

const (
	defaultTick = 10 * time.Millisecond
	defaultSize = 512
	maxShards   = 8
)

// EnsureDefaults fills the zero fields of o with their defaults and returns o.
func (o *Options) EnsureDefaults() *Options {
	if o.Tick == 0 {
		o.Tick = defaultTick
	}
	if o.Size == 0 {
		o.Size = defaultSize
	}
	return o
}

// Validate reports every problem of o at once. Call it after EnsureDefaults.
func (o *Options) Validate() error {
	var errs []error
	if o.Tick < time.Millisecond || o.Tick%time.Millisecond != 0 {
		errs = append(errs, fmt.Errorf("wheel: Tick %v is not a whole number of milliseconds ≥ 1ms", o.Tick))
	}
	if o.Size < 2 {
		errs = append(errs, fmt.Errorf("wheel: Size %d is less than 2", o.Size))
	}
	return errors.Join(errs...)
}

// Wheel owns the timing wheel and its goroutines: three while started (the
// timingwheel's poll and dispatch goroutines and the coarse clock), plus one
// short-lived goroutine per slot expiry (at most one per shard per Tick),
// which calls fire. Nothing runs per connection.
type Wheel struct {
	// now is the coarse clock read by Now; 0 when the clock goroutine is
	// not running. It has a cache line to itself: every event loop reads it
	// on every touch.
	_   [64]byte
	now atomic.Int64
	_   [56]byte

	tick   int64                    // ns, a multiple of 1ms
	clock  Clock                    // nil: real clock
	base   time.Time                // real clock: the reading at New, with monotonic part
	baseNs int64                    // base as Unix ns
	tw     *timingwheel.TimingWheel // nil in manual mode

	shards []shard
	mask   uint32
	next   atomic.Uint32 // round-robin shard choice at Init

	// stopped is set once by Stop. Read under a shard lock before anything
	// is added to the timingwheel: Stop sets it, then takes and releases
	// every shard lock, then stops the timingwheel.
	stopped atomic.Bool
	// runMu is read-held by every slot expiry while it runs (fire calls
	// included); Stop write-locks it to wait for them.
	runMu     sync.RWMutex
	startOnce sync.Once
	stopOnce  sync.Once
	started   bool          // set in startOnce, read in stopOnce
	quit      chan struct{} // closes to stop the clock goroutine
	done      chan struct{} // closed by the clock goroutine when it returns
	skew      int64         // wall − wheel clock at the last check; clock goroutine only
	stalls    atomic.Uint64 // see ClockStalls

	// Manual mode: slots waiting for Advance. Guarded by mmu; taken after
	// a shard lock, never before one.
	mmu sync.Mutex
	due []*slot
}

// New returns a stopped Wheel. It panics if o (after EnsureDefaults) does
// not Validate. Timers may be Init-ed and Set before Start; they expire only
// once the wheel is started (or, in manual mode, by Advance).
func New(o Options) *Wheel {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		panic(err)
	}
	// One shard per P, at most maxShards: each shard has its own slot per
	// Tick (a timingwheel timer, an expiry goroutine, ~250 bytes), so more
	// shards cost memory and wake-ups while lock contention is already low
	// (the lock is taken on slow paths only).
	n := min(runtime.GOMAXPROCS(0), maxShards)
	n = 1 << bits.Len(uint(n-1)) // round up to a power of two
	w := &Wheel{
		tick:   int64(o.Tick),
		clock:  o.Clock,
		shards: make([]shard, n),
		mask:   uint32(n - 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	if w.clock == nil {
		w.base = time.Now()
		w.baseNs = w.base.UnixNano()
		w.tw = timingwheel.NewTimingWheel(o.Tick, o.Size)
	}
	for i := range w.shards {
		w.shards[i].w = w
		w.shards[i].slots = make(map[int64]*slot)
	}
	return w
}

// Start starts the wheel's goroutines: the timingwheel's two and the coarse
// clock's one. Safe from any goroutine; calls after the first, and calls in
// manual mode, do nothing.
func (w *Wheel) Start() {
	w.startOnce.Do(func() {
		if w.tw == nil || w.stopped.Load() {
			return
		}
		w.started = true
		w.tw.Start()
		r := w.precise()
		w.skew = time.Now().UnixNano() - r
		w.now.Store(roundUp(r, w.tick) + 2*w.tick)
		go w.runClock()
	})
}

// Stop stops the wheel; pending timers never fire afterwards. It waits for
// expiries in progress, so fire must not call it. Safe from any goroutine;
// calls after the first do nothing. Timers may still be Set and Stopped
// afterwards (Live keeps counting them) but never fire.
func (w *Wheel) Stop() {
	w.stopOnce.Do(func() {
		w.stopped.Store(true)
		for i := range w.shards {
			// Barrier: a critical section that read stopped == false
			// has finished, any later one sees true.
			w.shards[i].mu.Lock()
			w.shards[i].mu.Unlock() //nolint:staticcheck // empty critical section on purpose
		}
		w.runMu.Lock()
		w.runMu.Unlock()          //nolint:staticcheck // waits for running expiries
		w.startOnce.Do(func() {}) // a later Start does nothing
		if w.started {
			close(w.quit)
			<-w.done
			w.now.Store(0)
		}
		if w.tw != nil {
			w.tw.Stop()
		}
	})
}

// Now returns the current time in Unix nanoseconds as the timers see it,
// cheaply (a coarse clock advanced every Tick, rounded up so that a deadline
// computed from it is never early: it runs 2 to 3 Ticks ahead of the real
// time). Before Start, after Stop and in manual mode it reads the clock and
// rounds up to the Tick. Safe from any goroutine.
func (w *Wheel) Now() int64 {
	if v := w.now.Load(); v != 0 {
		return v
	}
	return w.slowNow()
}

//go:noinline
func (w *Wheel) slowNow() int64 { return roundUp(w.precise(), w.tick) }

// Precise returns the current time in Unix nanoseconds on the clock the
// timers run on, exactly (not rounded up like Now). An owner re-checking a
// deadline when its timer fires, or measuring an interval, must use this
// rather than time.Now().UnixNano(): the wheel's clock follows elapsed time,
// while the system clock may be stepped (NTP, VM resume), which would make
// such a re-check early (forward step) or re-arm an already due timer in a
// busy loop (backward step). Safe from any goroutine.
func (w *Wheel) Precise() int64 { return w.precise() }

// Live returns the number of armed timers: Set to a deadline and neither
// fired nor stopped since. For leak tests and metrics; it takes every shard
// lock, so do not call it per event. Safe from any goroutine.
func (w *Wheel) Live() int {
	n := 0
	for i := range w.shards {
		sh := &w.shards[i]
		sh.mu.Lock()
		n += sh.live
		sh.mu.Unlock()
	}
	return n
}

// ClockStalls returns how many times the goroutine advancing Now woke so late
// (more than 1¾ Ticks: an overloaded machine, a long stop-the-world pause)
// that Now fell behind the real time in between; a deadline computed from Now
// then may have been early by up to the stall. Export it as a metric; it
// should stay 0. Safe from any goroutine.
func (w *Wheel) ClockStalls() uint64 { return w.stalls.Load() }

// Advance runs, on the calling goroutine, every expiry that is due at the
// injected Clock's current time, including the fire calls, and returns how
// many timers fired. It does nothing after Stop.
// REQUIRES: manual mode (a non-nil Options.Clock); not called from fire.
func (w *Wheel) Advance() int {
	if w.tw != nil {
		panic("wheel: Advance needs a wheel with an injected Clock")
	}
	fired := 0
	for {
		now := w.precise()
		w.mmu.Lock()
		var run []*slot
		keep := w.due[:0]
		for _, s := range w.due {
			if s.exp <= now {
				run = append(run, s)
			} else {
				keep = append(keep, s)
			}
		}
		clear(w.due[len(keep):])
		w.due = keep
		w.mmu.Unlock()
		if len(run) == 0 {
			return fired
		}
		sort.Slice(run, func(i, j int) bool { return run[i].exp < run[j].exp })
		for _, s := range run {
			fired += s.sh.expire(s)
		}
	}
}

// slots returns the number of slots, that is of timers the wheel holds in
// the timingwheel (or, in manual mode, waiting for Advance). Tests use it.
func (w *Wheel) slots() int {
	n := 0
	for i := range w.shards {
		sh := &w.shards[i]
		sh.mu.Lock()
		n += len(sh.slots)
		sh.mu.Unlock()
	}
	return n
}

// roundUp rounds x ≥ 0 up to a multiple of m > 0.
func roundUp(x, m int64) int64 {
	return (x + m - 1) / m * m
}
