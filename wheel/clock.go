package wheel

import "time"

// precise returns the wheel clock's current time in Unix ns: the injected
// Clock, or the wall clock read at New advanced by the monotonic clock.
// Safe from any goroutine.
func (w *Wheel) precise() int64 {
	if w.clock != nil {
		return w.clock.Now().UnixNano()
	}
	return w.baseNs + int64(time.Since(w.base))
}

// runClock advances the coarse clock read by Now, once per Tick, and
// watches the wall clock for steps. It wakes a quarter Tick after each Tick
// boundary g and stores g + 3·Tick, a value that stays ahead of the real
// time until the next wake even if that one is up to 1¾ Ticks late.
func (w *Wheel) runClock() {
	defer close(w.done)
	phase := w.tick / 4
	tm := time.NewTimer(time.Hour)
	defer tm.Stop()
	for {
		tn := time.Now()
		r := w.baseNs + int64(tn.Sub(w.base))
		if r > w.now.Load() {
			// We woke so late that Now was behind the real time for a while.
			w.stalls.Add(1)
		}
		w.now.Store(roundUp(r, w.tick) + 2*w.tick)
		if skew := tn.UnixNano() - r; skew-w.skew > w.tick/2 || w.skew-skew > w.tick/2 {
			w.skew = skew
			w.rearmAll()
		}
		next := roundUp(r-phase+1, w.tick) + phase
		tm.Reset(time.Duration(next - r))
		select {
		case <-tm.C:
		case <-w.quit:
			return
		}
	}
}

// rearmAll re-schedules every slot in the timingwheel after the wall clock
// stepped: the timingwheel counts in wall time, so a backward step would
// otherwise delay every pending slot by the step. A slot whose timingwheel
// timer already fired is left to its expiry, which re-arms it if early.
// REQUIRES: clock goroutine (real mode).
func (w *Wheel) rearmAll() {
	for i := range w.shards {
		sh := &w.shards[i]
		sh.mu.Lock()
		now := w.precise()
		for _, s := range sh.slots {
			if !s.running && s.twt != nil && s.twt.Stop() {
				w.schedule(s, s.exp-now)
			}
		}
		sh.mu.Unlock()
	}
}
