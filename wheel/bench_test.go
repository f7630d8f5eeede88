package wheel

// Benchmarks: each wheel workload beside the same workload on Go runtime
// timers (time.AfterFunc plus Reset on every activity), in the same run,
// with 1,000,000 connection timers armed. See docs/bench/wheel.md.

import (
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	population = 1_000_000
	// idle is the benchmarks' idle timeout, long enough that the population
	// stays armed for the whole run; deadlines spread over 60s inside it.
	idle = 10 * time.Minute
)

var benchFired atomic.Int64

func benchFire() { benchFired.Add(1) }

// spread returns connection i's offset inside one idle period, so that the
// population's deadlines cover the whole period as real connections' would.
// (A multiplicative hash, so that neither shard gets only some of the slots.)
func spread(i int) time.Duration {
	return time.Duration(uint32(i)*2654435761>>8%6000) * 10 * time.Millisecond
}

// cpuNow returns the process's user+system CPU time.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure resets b's timer, runs f, and reports besides ns/op (wall time,
// inflated when other processes share the CPUs) the process CPU time per
// op, which they do not inflate (it includes the wheel's and the runtime's
// background work: clock goroutine, expiries, GC).
func measure(b *testing.B, f func()) {
	b.ReportAllocs()
	c0 := cpuNow()
	b.ResetTimer()
	f()
	b.StopTimer()
	b.ReportMetric(float64(cpuNow()-c0)/float64(b.N), "cpu-ns/op")
}

var (
	wheelPopOnce sync.Once
	wheelPopW    *Wheel
	wheelPop     []Timer

	rtPopOnce sync.Once
	rtPop     []*time.Timer
)

// wheelPopulation is a started Wheel with 1M armed timers, built once.
func wheelPopulation() (*Wheel, []Timer) {
	wheelPopOnce.Do(func() {
		wheelPopW = New(Options{})
		wheelPopW.Start()
		wheelPop = make([]Timer, population)
		now := wheelPopW.Now()
		for i := range wheelPop {
			wheelPop[i].Init(wheelPopW, benchFire)
			wheelPop[i].Set(now + int64(idle+spread(i)))
		}
	})
	return wheelPopW, wheelPop
}

// runtimePopulation is 1M armed runtime timers, built once.
func runtimePopulation() []*time.Timer {
	rtPopOnce.Do(func() {
		rtPop = make([]*time.Timer, population)
		for i := range rtPop {
			rtPop[i] = time.AfterFunc(idle+spread(i), benchFire)
		}
	})
	return rtPop
}

// BenchmarkTouch is the cost of recording activity on a connection.
func BenchmarkTouch(b *testing.B) {
	// The server's touch: t.Set(w.Now() + idle), walking 1M connections.
	b.Run("wheel", func(b *testing.B) {
		w, ts := wheelPopulation()
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				ts[i%population].Set(w.Now() + int64(idle+spread(i)))
			}
		})
	})
	// Every touch moves the deadline later (no same-Tick shortcut): the
	// atomic store is always paid.
	b.Run("wheel-always-later", func(b *testing.B) {
		w, ts := wheelPopulation()
		base := w.Now() + int64(idle)
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				ts[i%population].Set(base + int64(i))
			}
		})
	})
	// One connection touched over and over (its Timer stays in cache).
	b.Run("wheel-one-conn", func(b *testing.B) {
		w, ts := wheelPopulation()
		t := &ts[0]
		base := w.Now() + int64(idle)
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				t.Set(base + int64(i))
			}
		})
	})
	// The floor: one atomic store to a hot int64 on this machine.
	b.Run("floor-atomic-store", func(b *testing.B) {
		var v atomic.Int64
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				v.Store(int64(i))
			}
		})
	})
	b.Run("runtime", func(b *testing.B) {
		ts := runtimePopulation()
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				ts[i%population].Reset(idle + spread(i))
			}
		})
	})
	b.Run("runtime-one-conn", func(b *testing.B) {
		t := runtimePopulation()[0]
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				t.Reset(idle + time.Duration(i))
			}
		})
	})
}

// BenchmarkScheduleStop arms a timer and stops it again (a connection that
// comes and goes, an ACK timer armed by a push and disarmed by the ack), with
// the 1M population armed.
func BenchmarkScheduleStop(b *testing.B) {
	// Into slots that the population shares (the usual case at scale).
	b.Run("wheel-shared-slot", func(b *testing.B) {
		w, pop := wheelPopulation()
		ts := make([]Timer, 1024)
		at := make([]int64, len(ts)) // a deadline of the population in ts[i]'s shard
		for i := range ts {
			ts[i].Init(w, benchFire)
			for j := i; ; j++ {
				if pop[j].sh == ts[i].sh {
					// The expiry of pop[j]'s slot (earlier touches may have
					// moved its deadline later, lazily).
					at[i] = pop[j].armed.Load() + w.tick - 1
					break
				}
			}
		}
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				k := i % len(ts)
				ts[k].Set(at[k])
				ts[k].Stop()
			}
		})
	})
	// Alone in its slot: every op creates the slot, schedules it on the
	// timingwheel (AfterFunc) and cancels it (the worst case).
	b.Run("wheel-own-slot", func(b *testing.B) {
		w, _ := wheelPopulation()
		var t Timer
		t.Init(w, benchFire)
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				t.Set(w.Now() + int64(5*time.Second))
				t.Stop()
			}
		})
	})
	b.Run("runtime-AfterFunc", func(b *testing.B) {
		runtimePopulation()
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				time.AfterFunc(idle+spread(i), benchFire).Stop()
			}
		})
	})
	b.Run("runtime-Reset", func(b *testing.B) {
		runtimePopulation()
		t := time.AfterFunc(time.Hour, benchFire)
		t.Stop()
		measure(b, func() {
			for i := 0; i < b.N; i++ {
				t.Reset(idle + spread(i))
				t.Stop()
			}
		})
	})
}

// heapAfterGC returns the live heap after two collections.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkBytesPerTimer reports the heap held per armed connection timer,
// measured over 1M timers with runtime.MemStats. For the wheel that is the
// Timer itself (embedded in the connection) plus everything the wheel and
// the timingwheel hold for it; for the runtime the *time.Timer the
// connection would hold plus the timer. fire is one shared func for both
// (a per-connection method value would add 16 B to either).
// Run with -benchtime=1x.
func BenchmarkBytesPerTimer(b *testing.B) {
	b.Run("wheel", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			w := New(Options{})
			w.Start()
			h0 := heapAfterGC()
			ts := make([]Timer, population)
			now := w.Now()
			for j := range ts {
				ts[j].Init(w, benchFire)
				ts[j].Set(now + int64(idle+spread(j)))
			}
			h1 := heapAfterGC()
			b.ReportMetric(float64(h1-h0)/population, "B/timer")
			b.ReportMetric(float64(w.slots()), "slots")
			for j := range ts {
				ts[j].Stop()
			}
			w.Stop()
			runtime.KeepAlive(ts)
		}
	})
	b.Run("runtime", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			h0 := heapAfterGC()
			ts := make([]*time.Timer, population)
			for j := range ts {
				ts[j] = time.AfterFunc(idle+spread(j), benchFire)
			}
			h1 := heapAfterGC()
			b.ReportMetric(float64(h1-h0)/population, "B/timer")
			for _, t := range ts {
				t.Stop()
			}
			runtime.KeepAlive(ts)
		}
	})
}
