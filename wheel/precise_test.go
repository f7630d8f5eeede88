package wheel

import (
	"testing"
	"time"
)

// TestPrecise: Precise is the timers' clock, exact (Now rounds up to the
// Tick); on the real clock it follows elapsed time and never runs backwards.
func TestPrecise(t *testing.T) {
	c := newFake(1_000_000_003)
	w := manual(c)
	if got := w.Precise(); got != 1_000_000_003 {
		t.Errorf("manual: Precise %d, want 1000000003", got)
	}
	if got := w.Now(); got != 1_010_000_000 {
		t.Errorf("manual: Now %d, want 1010000000 (rounded up)", got)
	}

	r := New(Options{})
	a := r.Precise()
	if d := a - time.Now().UnixNano(); d < -int64(time.Second) || d > int64(time.Second) {
		t.Errorf("real: Precise %d is %v off the system clock", a, time.Duration(d))
	}
	for i := 0; i < 1000; i++ {
		b := r.Precise()
		if b < a {
			t.Fatalf("Precise went backwards: %d after %d", b, a)
		}
		a = b
	}
}
