package wheel

import (
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told to.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time           { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) add(d time.Duration)      { c.ns.Add(int64(d)) }
func (c *fakeClock) set(ns int64)             { c.ns.Store(ns) }
func (c *fakeClock) get() int64               { return c.ns.Load() }
func newFake(ns int64) *fakeClock             { c := &fakeClock{}; c.set(ns); return c }
func ms(n int) int64                          { return int64(n) * int64(time.Millisecond) }
func manual(c *fakeClock) *Wheel              { return New(Options{Tick: 10 * time.Millisecond, Clock: c}) }
func counter(n *atomic.Int64) func()          { return func() { n.Add(1) } }
func recorder(c *fakeClock, at *int64) func() { return func() { *at = c.get() } }

// t0 is an arbitrary Unix time off the 10ms grid.
const t0 = int64(1_767_225_600_000_000_000) + 3_456_789

func TestOptions(t *testing.T) {
	o := (&Options{}).EnsureDefaults()
	if o.Tick != 10*time.Millisecond || o.Size != 512 || o.Clock != nil {
		t.Fatalf("defaults: %+v", o)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Options{Tick: 1500 * time.Microsecond, Size: 1}
	err := bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "Tick") || !strings.Contains(err.Error(), "Size") {
		t.Fatalf("Validate should report both problems, got %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("New with a bad Tick did not panic")
		}
	}()
	New(Options{Tick: time.Microsecond})
}

func TestTimerSize(t *testing.T) {
	if n := sizeofTimer; n > 48 {
		t.Fatalf("Timer is %d bytes, want ≤ 48", n)
	}
}

func TestManualNow(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	if got, want := w.Now(), roundUp(t0, ms(10)); got != want {
		t.Fatalf("Now = %d, want %d", got, want)
	}
	c.set(roundUp(t0, ms(10)))
	if got := w.Now(); got != c.get() {
		t.Fatalf("Now on the grid = %d, want %d", got, c.get())
	}
}

// Every timer fires exactly once, never before its deadline and less than a
// Tick after it.
func TestManualNeverEarlyAtMostTick(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	const n = 2000
	ts := make([]Timer, n)
	dl := make([]int64, n)
	at := make([]int64, n)
	cnt := make([]int, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range ts {
		ts[i].Init(w, func() { at[i] = c.get(); cnt[i]++ })
		dl[i] = t0 + rng.Int64N(ms(2000)) + 1
		ts[i].Set(dl[i])
	}
	if w.Live() != n {
		t.Fatalf("Live = %d, want %d", w.Live(), n)
	}
	for c.get() < t0+ms(2100) {
		c.add(250 * time.Microsecond)
		w.Advance()
	}
	for i := range ts {
		if cnt[i] != 1 {
			t.Fatalf("timer %d fired %d times", i, cnt[i])
		}
		if late := at[i] - dl[i]; late < 0 || late >= ms(10)+int64(250*time.Microsecond) {
			t.Fatalf("timer %d fired %v after its deadline", i, time.Duration(late))
		}
	}
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("after firing: Live %d, slots %d", w.Live(), w.slots())
	}
}

// Touches move the deadline later without moving the timer; the expiry
// re-arms for the remainder; fire comes only after the last deadline.
func TestManualLazyRearm(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	var tm Timer
	var fired atomic.Int64
	tm.Init(w, counter(&fired))
	idle := ms(100)
	tm.Set(w.Now() + idle)
	first := tm.armed.Load()
	var last int64
	for i := 0; i < 100; i++ { // touch every 7ms for 700ms
		c.add(7 * time.Millisecond)
		w.Advance()
		last = w.Now() + idle
		tm.Set(last)
		if fired.Load() != 0 {
			t.Fatalf("fired while touched, at step %d", i)
		}
	}
	if tm.armed.Load() == first || tm.armed.Load() > last-ms(10)+1 {
		t.Fatalf("armed %d: expected a lazy re-arm to a slot ≤ %d", tm.armed.Load(), last)
	}
	for c.get() < last-ms(1) {
		c.add(time.Millisecond)
		if w.Advance() != 0 {
			t.Fatalf("fired %v before the deadline", time.Duration(last-c.get()))
		}
	}
	for c.get() < last+ms(10) && fired.Load() == 0 {
		c.add(time.Millisecond)
		w.Advance()
	}
	if fired.Load() != 1 || c.get() < last {
		t.Fatalf("fired %d times at %v after the deadline", fired.Load(), time.Duration(c.get()-last))
	}
}

// The fast path is taken exactly when the new deadline is not earlier than
// the armed slot.
func TestManualFastPath(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	var tm Timer
	tm.Init(w, func() {})
	d := roundUp(t0, ms(10)) + ms(500)
	lo := func(exp int64) int64 { return exp - ms(10) + 1 }
	tm.Set(d)
	if tm.armed.Load() != lo(d) {
		t.Fatalf("armed %d, want %d", tm.armed.Load(), lo(d))
	}
	tm.Set(d + ms(300)) // later: stays in its slot
	if tm.armed.Load() != lo(d) || tm.deadline.Load() != d+ms(300) {
		t.Fatal("a later deadline moved the timer")
	}
	tm.Set(d - ms(5)) // earlier, but the same slot: stays
	if tm.armed.Load() != lo(d) || tm.deadline.Load() != d-ms(5) {
		t.Fatalf("an earlier deadline in the same Tick: armed %d", tm.armed.Load())
	}
	tm.Set(d - ms(15)) // earlier slot: moves
	if tm.armed.Load() != lo(d-ms(10)) {
		t.Fatalf("an earlier deadline: armed %d, want %d", tm.armed.Load(), lo(d-ms(10)))
	}
	if w.slots() != 1 {
		t.Fatalf("the emptied slot was left behind: %d slots", w.slots())
	}
	allocs := testing.AllocsPerRun(1000, func() { tm.Set(tm.deadline.Load() + 1) })
	if allocs != 0 {
		t.Fatalf("touch allocates %v", allocs)
	}
}

// A Set earlier than the scheduled expiry reschedules (ACK retransmit use).
func TestManualEarlierSetReschedules(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	var tm Timer
	var at int64
	tm.Init(w, recorder(c, &at))
	tm.Set(t0 + ms(10_000))
	d := t0 + ms(50)
	tm.Set(d)
	for c.get() < t0+ms(100) && at == 0 {
		c.add(time.Millisecond)
		w.Advance()
	}
	if at < d || at >= d+ms(10) {
		t.Fatalf("fired at %v, deadline %v", time.Duration(at-t0), time.Duration(d-t0))
	}
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("Live %d slots %d", w.Live(), w.slots())
	}
}

func TestManualStop(t *testing.T) {
	for _, name := range []string{"Stop", "Set0", "SetNegative"} {
		t.Run(name, func(t *testing.T) {
			c := newFake(t0)
			w := manual(c)
			var tm, other Timer
			var fired atomic.Int64
			tm.Init(w, counter(&fired))
			other.Init(w, func() {})
			other.Set(t0 + ms(50)) // shares the slot; must stay
			tm.Set(t0 + ms(50))
			switch name {
			case "Stop":
				tm.Stop()
			case "Set0":
				tm.Set(0)
			default:
				tm.Set(-5)
			}
			if w.Live() != 1 || w.slots() != 1 {
				t.Fatalf("Live %d slots %d, want 1 1", w.Live(), w.slots())
			}
			other.Stop()
			if w.Live() != 0 || w.slots() != 0 {
				t.Fatalf("Live %d slots %d, want 0 0", w.Live(), w.slots())
			}
			tm.Stop() // stopping twice is harmless
			c.add(time.Second)
			if n := w.Advance(); n != 0 || fired.Load() != 0 {
				t.Fatalf("a stopped timer fired")
			}
			tm.Set(c.get() + ms(20)) // usable again
			c.add(30 * time.Millisecond)
			if w.Advance() != 1 || fired.Load() != 1 {
				t.Fatal("re-armed timer did not fire")
			}
		})
	}
}

func TestManualPastDeadlineAndRearmAfterFire(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	var tm Timer
	var fired atomic.Int64
	tm.Init(w, counter(&fired))
	tm.Set(t0 - ms(1000)) // already passed: fires on the next Advance
	if w.Advance() != 1 {
		t.Fatal("a past deadline did not fire at once")
	}
	tm.Set(t0 - ms(1000)) // the same value again, after the fire: arms again
	if w.Advance() != 1 {
		t.Fatal("Set after fire did not re-arm")
	}
	if w.Advance() != 0 || fired.Load() != 2 {
		t.Fatalf("fired %d times, want 2", fired.Load())
	}
}

// fire may call Set and Stop (it holds no wheel lock), and a slot larger than
// fireChunk is settled in several rounds.
func TestManualBigSlotReentrantFire(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	const n = 5*fireChunk + 7
	ts := make([]Timer, n)
	var fired atomic.Int64
	for i := range ts {
		ts[i].Init(w, func() {
			fired.Add(1)
			ts[(i+1)%n].Stop()
			ts[i].Set(c.get() + ms(1000))
		})
		ts[i].Set(t0 + ms(20))
	}
	c.add(30 * time.Millisecond)
	w.Advance()
	// Each fire stops the next timer, unless the next one fired already.
	if got := fired.Load(); got < n/2 || got > n {
		t.Fatalf("fired %d of %d", got, n)
	}
	armed := 0
	for i := range ts {
		if ts[i].deadline.Load() > 0 {
			armed++
		}
	}
	if w.Live() != armed || armed == 0 {
		t.Fatalf("Live %d, want %d re-armed", w.Live(), armed)
	}
}

func TestManualWheelStop(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	var tm Timer
	var fired atomic.Int64
	tm.Init(w, counter(&fired))
	tm.Set(t0 + ms(20))
	w.Stop()
	w.Stop()
	c.add(time.Second)
	if w.Advance() != 0 || fired.Load() != 0 {
		t.Fatal("fired after Wheel.Stop")
	}
	tm.Stop()
	if w.Live() != 0 {
		t.Fatalf("Live %d", w.Live())
	}
}

// Owners hammer their timers (later, earlier, stop) while a driver advances
// the clock and runs expiries. Afterwards every timer is re-armed at a known
// deadline: all must fire exactly once, none early, and nothing is left.
func TestManualConcurrent(t *testing.T) {
	c := newFake(t0)
	w := manual(c)
	const owners, per, rounds = 4, 200, 300
	ts := make([]Timer, owners*per)
	cnt := make([]atomic.Int64, len(ts))
	early := make([]atomic.Int64, len(ts)) // set when a final deadline fires early
	final := make([]atomic.Int64, len(ts))
	for i := range ts {
		ts[i].Init(w, func() {
			cnt[i].Add(1)
			if f := final[i].Load(); f != 0 && c.get() < f {
				early[i].Store(1)
			}
		})
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	driverDone := make(chan struct{})
	go func() {
		defer close(driverDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.add(time.Millisecond)
			w.Advance()
		}
	}()
	for o := 0; o < owners; o++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(o), 7))
			mine := ts[o*per : (o+1)*per]
			for r := 0; r < rounds; r++ {
				for i := range mine {
					switch rng.IntN(6) {
					case 0:
						mine[i].Stop()
					case 1:
						mine[i].Set(c.get() + rng.Int64N(ms(30)))
					default:
						mine[i].Set(w.Now() + ms(20) + rng.Int64N(ms(50)))
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-driverDone
	w.Advance()
	base := roundUp(c.get(), ms(10)) + ms(1000)
	for i := range ts {
		cnt[i].Store(0)
		final[i].Store(base + int64(i)*1000)
		ts[i].Set(base + int64(i)*1000)
	}
	if w.Live() != len(ts) {
		t.Fatalf("Live %d, want %d", w.Live(), len(ts))
	}
	c.set(base - 1)
	if n := w.Advance(); n != 0 {
		t.Fatalf("%d timers fired early", n)
	}
	c.set(base + int64(len(ts))*1000 + ms(10))
	w.Advance()
	for i := range ts {
		if cnt[i].Load() != 1 || early[i].Load() != 0 {
			t.Fatalf("timer %d fired %d times (early %d)", i, cnt[i].Load(), early[i].Load())
		}
	}
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("Live %d slots %d", w.Live(), w.slots())
	}
}
