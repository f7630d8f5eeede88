package wheel

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// maxLate bounds how late a single real-clock fire may come in these tests.
// It is a sanity bound, not the wheel's precision: on a shared, overloaded
// 2-core machine the whole process is sometimes descheduled for 100ms and
// more. TestRealNeverEarlyAtMostTick checks the precision, against Go's own
// runtime timers measured at the same time.
const maxLate = time.Second

func started(t *testing.T) *Wheel {
	w := New(Options{})
	w.Start()
	t.Cleanup(w.Stop)
	return w
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRealNeverEarlyAtMostTick(t *testing.T) {
	w := started(t)
	const n = 400
	ts := make([]Timer, n)
	dl := make([]int64, n)
	at := make([]int64, n)
	done := make(chan int, n)
	rtLate := make(chan time.Duration, n) // Go runtime timers, same deadlines
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range ts {
		ts[i].Init(w, func() { at[i] = w.precise(); done <- i })
		if i%2 == 0 {
			dl[i] = w.precise() + ms(15) + rng.Int64N(ms(300)) // off the grid
		} else {
			dl[i] = w.Now() + ms(10*(1+rng.IntN(30))) // as the server does
		}
		ts[i].Set(dl[i])
		time.AfterFunc(time.Duration(dl[i]-w.precise()), func() { rtLate <- time.Duration(w.precise() - dl[i]) })
	}
	timeout := time.After(5 * time.Second)
	seen := make([]bool, n)
	lates := make([]time.Duration, 0, n)
	for range n {
		select {
		case i := <-done:
			if seen[i] {
				t.Fatalf("timer %d fired twice", i)
			}
			seen[i] = true
			late := time.Duration(at[i] - dl[i])
			if late < 0 {
				t.Fatalf("timer %d fired %v early", i, -late)
			}
			lates = append(lates, late)
		case <-timeout:
			t.Fatalf("only %d of %d timers fired", len(lates), n)
		}
	}
	rt := make([]time.Duration, 0, n)
	for range n {
		select {
		case l := <-rtLate:
			rt = append(rt, l)
		case <-timeout:
			t.Fatalf("only %d of %d runtime timers fired", len(rt), n)
		}
	}
	slices.Sort(lates)
	slices.Sort(rt)
	t.Logf("wheel lateness:   median %v, p90 %v, p99 %v, max %v", lates[n/2], lates[n*9/10], lates[n*99/100], lates[n-1])
	t.Logf("runtime lateness: median %v, p90 %v, p99 %v, max %v (same deadlines, same time)", rt[n/2], rt[n*9/10], rt[n*99/100], rt[n-1])
	// At most about a Tick later than what the Go runtime achieves here and now.
	tick := 10 * time.Millisecond
	if lates[n/2] > rt[n/2]+tick+5*time.Millisecond || lates[n*9/10] > rt[n*9/10]+tick+15*time.Millisecond {
		t.Fatalf("wheel more than a Tick later than runtime timers")
	}
	if lates[n-1] > rt[n-1]+tick+50*time.Millisecond {
		t.Fatalf("a timer fired %v late", lates[n-1])
	}
	waitFor(t, time.Second, "slots to drain", func() bool { return w.Live() == 0 && w.slots() == 0 })
}

func TestRealNow(t *testing.T) {
	w := started(t)
	var maxLead, maxBehind int64
	for range 300 {
		now, p := w.Now(), w.precise()
		maxLead = max(maxLead, now-p)
		maxBehind = max(maxBehind, p-now)
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond) // spacing, not synchronisation
	}
	t.Logf("Now leads the clock by up to %v; behind by up to %v; clock stalls %d",
		time.Duration(maxLead), time.Duration(maxBehind), w.ClockStalls())
	if maxBehind > 0 && w.ClockStalls() == 0 {
		t.Fatalf("Now was %v behind the clock without a clock stall", time.Duration(maxBehind))
	}
	if maxLead > 3*ms(10) {
		t.Fatalf("Now leads by %v > 3 Ticks", time.Duration(maxLead))
	}
}

// Touches push the fire later; it comes once the last deadline has passed.
func TestRealLazyRearm(t *testing.T) {
	w := started(t)
	var tm Timer
	fired := make(chan int64, 1)
	tm.Init(w, func() { fired <- w.precise() })
	idle := ms(150)
	var last, prevAt, maxGap int64
	tick := time.NewTicker(15 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < 30; i++ { // 450ms of traffic, one frame per 15ms
		at := w.precise()
		if prevAt != 0 {
			maxGap = max(maxGap, at-prevAt)
		}
		prevAt = at
		last = w.Now() + idle
		tm.Set(last)
		select {
		case <-fired:
			if maxGap >= idle {
				t.Skipf("machine too loaded: %v between two frames", time.Duration(maxGap))
			}
			t.Fatalf("fired while touched (frame %d, largest gap %v)", i, time.Duration(maxGap))
		case <-tick.C:
		}
	}
	select {
	case at := <-fired:
		if at < last {
			t.Fatalf("fired %v early", time.Duration(last-at))
		}
		if late := time.Duration(at - last); late > maxLate {
			t.Fatalf("fired %v late", late)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("never fired")
	}
}

// An earlier Set reschedules (the ACK retransmit timer).
func TestRealEarlierSet(t *testing.T) {
	w := started(t)
	var tm Timer
	fired := make(chan int64, 1)
	tm.Init(w, func() { fired <- w.precise() })
	tm.Set(w.Now() + ms(10_000))
	d := w.precise() + ms(40)
	tm.Set(d)
	select {
	case at := <-fired:
		if at < d || time.Duration(at-d) > maxLate {
			t.Fatalf("fired at deadline%+v", time.Duration(at-d))
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the earlier deadline never fired")
	}
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("Live %d slots %d", w.Live(), w.slots())
	}
}

// Stop and Set(0) prevent the fire and leave nothing behind. A fire is a
// bug if it comes before the deadline, or at all when Stop returned before
// the deadline (on a loaded machine the loop below may be slower than the
// deadlines; those timers may fire legitimately).
func TestRealStopPreventsFire(t *testing.T) {
	w := started(t)
	const n = 1000
	ts := make([]Timer, n)
	dl := make([]int64, n)
	stopped := make([]atomic.Int64, n) // clock reading after Stop returned
	var bad, fired atomic.Int64
	var latest int64
	for i := range ts {
		ts[i].Init(w, func() {
			fired.Add(1)
			if at := w.precise(); at < dl[i] {
				bad.Add(1)
			} else if s := stopped[i].Load(); s != 0 && s < dl[i] {
				bad.Add(1)
			}
		})
		dl[i] = w.precise() + ms(50+i%40)
		latest = max(latest, dl[i])
		ts[i].Set(dl[i])
	}
	for i := range ts {
		if i%2 == 0 {
			ts[i].Stop()
		} else {
			ts[i].Set(0)
		}
		stopped[i].Store(w.precise())
	}
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("after stopping: Live %d slots %d", w.Live(), w.slots())
	}
	// Absence of an event: give it every chance to happen.
	<-time.After(time.Duration(latest-w.precise()) + maxLate)
	if bad.Load() != 0 {
		t.Fatalf("%d stopped timers fired", bad.Load())
	}
	t.Logf("%d timers fired before their Stop (slow loop)", fired.Load())
}

// No goroutine or timer is left after 10,000 timers armed and stopped, or
// armed and fired.
func TestRealNoLeak(t *testing.T) {
	g0 := runtime.NumGoroutine()
	w := New(Options{})
	w.Start()
	g1 := runtime.NumGoroutine()
	if g1-g0 > 3 {
		t.Fatalf("Start added %d goroutines, want 3 (timingwheel 2, clock 1)", g1-g0)
	}
	const n = 10_000
	ts := make([]Timer, n)
	var fired atomic.Int64
	for i := range ts {
		ts[i].Init(w, func() { fired.Add(1) })
		ts[i].Set(w.Now() + ms(10_000+i%4000))
	}
	if w.Live() != n {
		t.Fatalf("Live %d", w.Live())
	}
	for i := range ts {
		if i%2 == 0 {
			ts[i].Stop()
		} else {
			ts[i].Set(0)
		}
	}
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("after stopping: Live %d, slots %d", w.Live(), w.slots())
	}
	waitFor(t, 2*time.Second, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= g1 })

	for i := range ts { // now let them fire
		ts[i].Set(w.precise() + ms(10+i%200))
	}
	waitFor(t, 5*time.Second, "all fires", func() bool { return fired.Load() == n })
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("after firing: Live %d, slots %d", w.Live(), w.slots())
	}
	waitFor(t, 2*time.Second, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= g1 })
	w.Stop()
	waitFor(t, 2*time.Second, "the wheel's goroutines to end", func() bool { return runtime.NumGoroutine() <= g0 })
	if fired.Load() != n {
		t.Fatalf("fired %d, want %d", fired.Load(), n)
	}
}

// After Wheel.Stop returns nothing fires.
func TestRealWheelStop(t *testing.T) {
	w := New(Options{})
	w.Start()
	ts := make([]Timer, 1000)
	var fired atomic.Int64
	for i := range ts {
		ts[i].Init(w, func() { fired.Add(1) })
		ts[i].Set(w.precise() + ms(i%50))
	}
	<-time.After(20 * time.Millisecond) // let some of them fire
	w.Stop()
	n := fired.Load()
	<-time.After(50*time.Millisecond + maxLate)
	if fired.Load() != n {
		t.Fatalf("%d timers fired after Stop", fired.Load()-n)
	}
	ts[0].Set(w.Now() + 1) // still usable, never fires
	ts[0].Stop()
	t.Logf("%d of %d fired before Stop", n, len(ts))
}

// rearmAll (run when the wall clock steps) keeps every timer: each still
// fires once and never early.
func TestRealRearmAll(t *testing.T) {
	w := started(t)
	const n = 500
	ts := make([]Timer, n)
	dl := make([]int64, n)
	var early, fired atomic.Int64
	for i := range ts {
		ts[i].Init(w, func() {
			if w.precise() < dl[i] {
				early.Add(1)
			}
			fired.Add(1)
		})
		dl[i] = w.precise() + ms(20+i%100)
		ts[i].Set(dl[i])
	}
	for range 5 {
		w.rearmAll()
	}
	waitFor(t, 3*time.Second, "all fires", func() bool { return fired.Load() == n })
	if early.Load() != 0 {
		t.Fatalf("%d fired early", early.Load())
	}
	waitFor(t, time.Second, "slots to drain", func() bool { return w.slots() == 0 })
}

// Event loops touch, re-arm earlier and stop while the wheel expires timers
// (run with -race). Then, quiet, every timer is re-armed at a known deadline
// and must fire exactly once and never early.
func TestRealConcurrent(t *testing.T) {
	w := started(t)
	const loops, per = 4, 500
	ts := make([]Timer, loops*per)
	dl := make([]atomic.Int64, len(ts)) // final deadlines; 0 during the stress
	cnt := make([]atomic.Int64, len(ts))
	var fired, early atomic.Int64
	for i := range ts {
		ts[i].Init(w, func() {
			if d := dl[i].Load(); d != 0 {
				if w.precise() < d {
					early.Add(1)
				}
				cnt[i].Add(1)
				fired.Add(1)
			}
		})
	}
	var wg sync.WaitGroup
	end := time.Now().Add(300 * time.Millisecond)
	for l := 0; l < loops; l++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(l), 9))
			mine := ts[l*per : (l+1)*per]
			for time.Now().Before(end) {
				for i := range mine {
					switch rng.IntN(8) {
					case 0:
						mine[i].Stop()
					case 1:
						mine[i].Set(w.precise() + rng.Int64N(ms(20)))
					default:
						mine[i].Set(w.Now() + ms(5) + rng.Int64N(ms(40)))
					}
				}
				runtime.Gosched()
			}
		}()
	}
	wg.Wait()
	for i := range ts {
		ts[i].Stop()
	}
	if w.Live() != 0 || w.slots() != 0 {
		t.Fatalf("after stopping all: Live %d, slots %d", w.Live(), w.slots())
	}
	w.runMu.Lock() // wait for fires claimed before the Stops
	w.runMu.Unlock()
	for i := range ts {
		d := w.precise() + ms(20+i%50)
		dl[i].Store(d)
		ts[i].Set(d)
	}
	waitFor(t, 3*time.Second, "all fires", func() bool { return fired.Load() == int64(len(ts)) })
	for i := range cnt {
		if cnt[i].Load() != 1 {
			t.Fatalf("timer %d fired %d times", i, cnt[i].Load())
		}
	}
	if early.Load() != 0 {
		t.Fatalf("%d timers fired early", early.Load())
	}
}
