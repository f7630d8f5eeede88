package server

import (
	"math"
	"testing"
	"time"
)

func TestRetxDue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	T := int64(5 * time.Second)
	for k, want := range []int64{T, 3 * T, 7 * T, 15 * T} {
		if got := retxDue(t0, T, uint8(k)); got != t0+want {
			t.Errorf("k=%d: got t0%+d, want t0%+d", k, got-t0, want)
		}
	}
	// --ack-retries 20 with long timeouts: never wrap below t0, never
	// decrease as k grows (a wrapped deadline would close 4005 at once).
	for _, T := range []time.Duration{time.Hour, 2 * time.Hour, 1000 * time.Hour, math.MaxInt64} {
		prev := t0
		for k := uint8(0); k <= 20; k++ {
			got := retxDue(t0, int64(T), k)
			if got < prev {
				t.Fatalf("T=%v k=%d: due %d before the previous %d (overflow)", T, k, got, prev)
			}
			prev = got
		}
		if prev != math.MaxInt64 && T >= time.Hour {
			t.Errorf("T=%v k=20: %d, want saturation at MaxInt64", T, prev)
		}
	}
}
