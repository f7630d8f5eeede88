package client

import (
	"math/rand/v2"
	"time"
)

// Backoff configures the reconnect delays (PROTOCOL §9): exponential growth
// with full jitter. Attempt n (0-based, counted since the last successful
// welcome) waits a uniformly random duration in [0, min(Max, First·Factor^n)).
// Full jitter spreads the clients of a restarted server over the whole
// window instead of waking them in synchronised waves.
type Backoff struct {
	// First is the upper bound of the first delay. The default value is 1s.
	First time.Duration
	// Factor multiplies the bound after each failed attempt. Values below 1
	// are invalid. The default value is 2.
	Factor float64
	// Max caps the bound; it is also the wait after close 4029. The default
	// value is 30s.
	Max time.Duration
	// Rand returns a uniform float64 in [0, 1). The default value is
	// math/rand/v2.Float64. Tests set it to make delays deterministic.
	Rand func() float64
}

func (b *Backoff) ensureDefaults() {
	if b.First <= 0 {
		b.First = time.Second
	}
	if b.Factor == 0 {
		b.Factor = 2
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Rand == nil {
		b.Rand = rand.Float64
	}
}

// Bound is the upper bound of the delay before attempt n (0-based):
// min(Max, First·Factor^n).
func (b Backoff) Bound(n int) time.Duration {
	b.ensureDefaults()
	d := float64(b.First)
	for i := 0; i < n && d < float64(b.Max); i++ {
		d *= b.Factor
	}
	if d > float64(b.Max) {
		d = float64(b.Max)
	}
	return time.Duration(d)
}

// Delay is the jittered delay before attempt n: uniform in [0, Bound(n)).
func (b Backoff) Delay(n int) time.Duration {
	b.ensureDefaults()
	return time.Duration(b.Rand() * float64(b.Bound(n)))
}
