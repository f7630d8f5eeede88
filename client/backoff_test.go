package client

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffBound(t *testing.T) {
	b := Backoff{}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for n, w := range want {
		if got := b.Bound(n); got != w*time.Second {
			t.Errorf("Bound(%d) = %v, want %v", n, got, w*time.Second)
		}
	}
	if got := b.Bound(1000); got != 30*time.Second {
		t.Errorf("Bound(1000) = %v", got)
	}
	b = Backoff{First: 100 * time.Millisecond, Factor: 3, Max: time.Second}
	for n, w := range []time.Duration{100, 300, 900, 1000} {
		if got := b.Bound(n); got != w*time.Millisecond {
			t.Errorf("Bound(%d) = %v, want %vms", n, got, w)
		}
	}
}

// TestBackoffFullJitter checks that delays cover [0, bound) uniformly: a
// chi-square test over 10 buckets with a fixed seed.
func TestBackoffFullJitter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	b := Backoff{Rand: r.Float64}
	for _, n := range []int{0, 3, 10} {
		bound := b.Bound(n)
		const samples, buckets = 20000, 10
		var hist [buckets]int
		for i := 0; i < samples; i++ {
			d := b.Delay(n)
			if d < 0 || d >= bound {
				t.Fatalf("Delay(%d) = %v outside [0, %v)", n, d, bound)
			}
			hist[int(int64(d)*buckets/int64(bound))]++
		}
		exp := float64(samples) / buckets
		chi := 0.0
		for _, h := range hist {
			chi += (float64(h) - exp) * (float64(h) - exp) / exp
		}
		// 9 degrees of freedom: p = 0.001 at 27.88.
		if chi > 27.88 {
			t.Errorf("attempt %d: delays not uniform, chi2 = %.1f, hist %v", n, chi, hist)
		}
		// The property the fault test relies on: about a tenth of first
		// delays fall in the first tenth of the window, not a burst at 0.
		if n == 0 && hist[0] > samples/buckets*12/10 {
			t.Errorf("too many immediate retries: %d of %d", hist[0], samples)
		}
	}
}
