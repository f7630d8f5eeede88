package client

import (
	"testing"
	"time"
)

// TestAckPacingFollowsWelcome: AckDelay 0 follows welcome's ack_delay_ms
// (20 ms from a server that sends none); an explicit AckDelay wins;
// AckBatch is capped at half of welcome's max_inflight.
func TestAckPacingFollowsWelcome(t *testing.T) {
	ms := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		name  string
		opt   Options
		w     inFrame
		delay time.Duration
		batch int
	}{
		{"old server", Options{AckBatch: 64}, inFrame{}, 20 * time.Millisecond, 64},
		{"server delay", Options{AckBatch: 64}, inFrame{AckDelayMS: ms(50), MaxInflight: 1024}, 50 * time.Millisecond, 64},
		{"server says ack at once", Options{AckBatch: 64}, inFrame{AckDelayMS: ms(0)}, 0, 64},
		{"explicit delay", Options{AckDelay: 5 * time.Millisecond, AckBatch: 64}, inFrame{AckDelayMS: ms(50)}, 5 * time.Millisecond, 64},
		{"small window", Options{AckBatch: 64}, inFrame{AckDelayMS: ms(20), MaxInflight: 10}, 20 * time.Millisecond, 5},
		{"window of one", Options{AckBatch: 64}, inFrame{MaxInflight: 1}, 20 * time.Millisecond, 1},
	} {
		d, b := tc.opt.ackPacing(&tc.w)
		if d != tc.delay || b != tc.batch {
			t.Errorf("%s: delay %v batch %d, want %v %d", tc.name, d, b, tc.delay, tc.batch)
		}
	}
}
