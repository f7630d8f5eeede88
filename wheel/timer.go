package wheel

// Timer is a lazy-deadline timer, meant to be embedded by value in a
// per-connection struct (keep it small: ≤ 100 bytes per connection timer,
// including what the wheel holds for it). It is 48 bytes and allocates
// nothing of its own; the wheel holds no per-timer memory besides it. The
// zero value is unusable until Init. A Timer must not be copied after Init.
type Timer struct {
	// deadline is the wanted deadline in wheel-clock Unix ns; 0 is disarmed.
	// Written by Set and Stop (any goroutine) and swapped to 0 by the expiry
	// that claims the timer for firing.
	deadline atomicInt64
	// armed is the smallest deadline served by the slot t is linked in
	// (slot expiry − Tick + 1), 0 when unlinked. Deadlines ≥ armed round up
	// to that slot or a later one, so the slot comes no later than they do.
	// INVARIANT: armed != 0 ⇔ t is in the list of sh.slots[armed+Tick−1].
	// Written only under sh.mu; loaded without it by Set and Stop.
	armed atomicInt64
	// next and prev link t into its slot's circular list. Guarded by sh.mu.
	next, prev *Timer
	sh         *shard
	fire       func()
}

// Init binds t to w. fire runs on a wheel goroutine after the deadline has
// passed; it must only hand off (for example EventLoop().Execute) and never
// block, nor call w.Stop. REQUIRES: called once, before Set, on a Timer not
// in use.
func (t *Timer) Init(w *Wheel, fire func()) {
	if fire == nil {
		panic("wheel: Init with a nil fire func")
	}
	t.sh = &w.shards[w.next.Add(1)&w.mask]
	t.fire = fire
}

// Set sets the deadline (Unix ns on the wheel clock, as from w.Now()).
// 0 (or less) disarms, like Stop. A deadline already passed fires as soon as
// the wheel runs. Setting a Timer after it fired arms it again.
//
// When the timer is armed at a wheel expiry not later than at's (the usual
// touch: the deadline moves later) this is one atomic store, no lock and no
// allocation; the expiry re-arms for the remainder. Otherwise (first arm,
// an earlier deadline, an armed timer whose expiry is being processed) it
// takes the timer's shard lock and moves the timer to the slot of at.
//
// Safe from any goroutine (usually the owning event loop); of concurrent
// Sets on one timer, one wins. REQUIRES: Init.
func (t *Timer) Set(at int64) {
	if t.deadline.Load() != at { // repeated touches within one Tick store nothing
		t.deadline.Store(at)
	}
	// Load armed only after the store (see "Concurrency" in the package doc).
	// Return when armed in at's slot or an earlier one, or unarmed and at == 0.
	if e := t.armed.Load(); e <= at && (e != 0 || at == 0) {
		return
	}
	t.sh.reconcile(t)
}

// Stop disarms the timer and releases what the wheel holds for it (it is
// unlinked at once; a slot left empty leaves the timingwheel). A fire already
// handed off may still run: the owner checks its own state. Safe from any
// goroutine. REQUIRES: Init.
func (t *Timer) Stop() {
	t.deadline.Store(0)
	if t.armed.Load() == 0 {
		return // not linked, or an expiry holds it and will see deadline 0
	}
	t.sh.reconcile(t)
}
