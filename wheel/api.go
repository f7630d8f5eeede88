// Package wheel provides lazy-deadline timers for a million connections on
// a hierarchical timing wheel (github.com/RussellLuo/timingwheel).
//
// CONTRACT (the server is written against these names; keep them):
//
//	New(Options) *Wheel; (*Wheel).Start(); (*Wheel).Stop(); (*Wheel).Now() int64
//	(*Timer).Init(w, fire func()); (*Timer).Set(at int64); (*Timer).Stop()
//
// Touching a connection on traffic is `t.Set(w.Now() + idle)`: when the new
// deadline is not earlier than the scheduled wheel expiry this is one atomic
// store and 0 allocations. When the wheel expiry comes and the deadline has
// moved later, the wheel re-arms the timer for the remainder by itself;
// fire is called only once the stored deadline has really passed.
package wheel

import "time"

// Clock tells the time. Tests inject a fake one.
type Clock interface{ Now() time.Time }

// Options configure a Wheel.
type Options struct {
	// Tick is the wheel's resolution. Timers fire never early and at most
	// about one Tick late. The default value is 10ms.
	Tick time.Duration
	// Size is the number of buckets per wheel level. The default value is 512.
	Size int64
	// Clock is the time source. The default value is the real clock.
	Clock Clock
}

// Wheel owns the timing wheel and its goroutines.
type Wheel struct{}

// New returns a stopped Wheel.
func New(o Options) *Wheel { panic("unimplemented") }

// Start starts the wheel's goroutines. Safe from any goroutine, once.
func (w *Wheel) Start() { panic("unimplemented") }

// Stop stops the wheel; pending timers never fire afterwards.
func (w *Wheel) Stop() { panic("unimplemented") }

// Now returns the current time in Unix nanoseconds as the timers see it,
// cheaply (a coarse clock advanced every Tick, rounded up so that a deadline
// computed from it is never early). Safe from any goroutine.
func (w *Wheel) Now() int64 { panic("unimplemented") }

// Timer is a lazy-deadline timer, meant to be embedded by value in a
// per-connection struct (keep it small: ≤ 100 bytes per connection timer,
// including what the wheel holds for it).
type Timer struct{}

// Init binds t to w. fire runs on a wheel goroutine after the deadline has
// passed; it must only hand off (for example EventLoop().Execute) and never
// block. REQUIRES: called once, before Set.
func (t *Timer) Init(w *Wheel, fire func()) { panic("unimplemented") }

// Set sets the deadline (Unix ns). 0 disarms (like Stop). Safe from any
// goroutine; one atomic store and no allocation when the deadline moves later.
func (t *Timer) Set(at int64) { panic("unimplemented") }

// Stop disarms the timer and releases what the wheel holds for it. A fire
// already handed off may still run: the owner checks its own state.
func (t *Timer) Stop() { panic("unimplemented") }
