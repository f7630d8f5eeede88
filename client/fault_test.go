package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// Fault tests (issue 5 item 3) against a real `magpie serve` process.

// TestFaultBlackhole: a proxy that silently drops all traffic (no FIN, no
// RST). The client must notice within heartbeat + grace and reconnect.
func TestFaultBlackhole(t *testing.T) {
	srv := testserver.Start(t, "--demo", "--heartbeat", "1s")
	var hole atomic.Bool
	proxy := startProxy(t, srv.WSAddr, hole.Load)
	c, r := demoClient(t, srv, "alice", func(o *Options) {
		o.WSURL = "ws://" + proxy + "/ws"
		o.HandshakeTimeout = time.Second // a dial into the black hole gives up soon
	})
	bob, _ := demoClient(t, srv, "bob", nil)
	// Healthy for three heartbeats: pings keep the connection up.
	time.Sleep(3 * time.Second) // letting heartbeats run is what is tested here
	if n := r.countStates(StateReconnecting); n != 0 {
		t.Fatalf("reconnected while healthy: %+v", r.states)
	}
	online := r.countStates(StateOnline)
	hole.Store(true)
	start := time.Now()
	waitFor(t, 5*time.Second, "dead peer detected", func() bool { return r.countStates(StateReconnecting) > 0 })
	took := time.Since(start)
	ev := r.lastState()
	var ce *CloseError
	if !errors.As(ev.Err, &ce) || !ce.DeadPeer || ev.Code != CloseAbnormal {
		t.Fatalf("reconnecting event %+v", ev)
	}
	// heartbeat 1s + grace 0.5s; allow 200 ms for timers and scheduling.
	t.Logf("dead peer noticed after %v", took)
	if took > 1700*time.Millisecond {
		t.Errorf("noticed after %v, want within heartbeat + grace = 1.5s", took)
	}
	hole.Store(false)
	waitFor(t, 10*time.Second, "online again", func() bool { return r.countStates(StateOnline) > online })
	t.Logf("online again after %v", time.Since(start))
	// Messages flow again, including one sent while the link was dead.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := bob.SendTo(ctx, c.UID(), "after the hole"); err != nil {
		t.Fatal(err)
	}
	conv := DirectConv(c.UID(), bob.UID())
	waitFor(t, 10*time.Second, "message after reconnect", func() bool { return len(r.bodies(conv)) == 1 })
}

// exchange makes a and b send n messages each to the other, sequentially per
// sender, while during() runs; it checks that each side received the
// other's messages exactly once and in order.
func exchange(t *testing.T, a, b *Client, ra, rb *recorder, n int, during func(sentA, sentB *atomic.Int64)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	conv := DirectConv(a.UID(), b.UID())
	var sentA, sentB atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	run := func(c *Client, to int64, prefix string, sent *atomic.Int64) {
		defer wg.Done()
		for i := 1; i <= n; i++ {
			if _, err := c.SendTo(ctx, to, fmt.Sprintf("%s%d", prefix, i)); err != nil {
				errs <- fmt.Errorf("%s send %d: %w", prefix, i, err)
				return
			}
			sent.Add(1)
		}
	}
	wg.Add(2)
	go run(a, b.UID(), "a", &sentA)
	go run(b, a.UID(), "b", &sentB)
	if during != nil {
		during(&sentA, &sentB)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	from := func(r *recorder, uid int64) []string {
		r.mu.Lock()
		defer r.mu.Unlock()
		var out []string
		for _, m := range r.msgs {
			if m.Conv == conv && m.From == uid {
				out = append(out, m.Body)
			}
		}
		return out
	}
	waitFor(t, 60*time.Second, "all messages delivered", func() bool {
		return len(from(rb, a.UID())) >= n && len(from(ra, b.UID())) >= n
	})
	if got := from(rb, a.UID()); !slices.Equal(got, wantBodies("a", 1, n)) {
		t.Errorf("b got %d messages from a, not exactly a1..a%d in order (first %v)", len(got), n, got[:min(5, len(got))])
	}
	if got := from(ra, b.UID()); !slices.Equal(got, wantBodies("b", 1, n)) {
		t.Errorf("a got %d messages from b, not exactly b1..b%d in order (first %v)", len(got), n, got[:min(5, len(got))])
	}
	// Each side sees the whole conversation in seq order, once.
	for _, r := range []*recorder{ra, rb} {
		s := r.seqs(conv)
		for i := 1; i < len(s); i++ {
			if s[i] != s[i-1]+1 {
				t.Fatalf("seqs not consecutive at %d: %v", i, s[max(0, i-3):min(len(s), i+3)])
			}
		}
	}
}

// TestFaultKillRestart: SIGKILL and restart of the server while two clients
// exchange 1,000 messages.
func TestFaultKillRestart(t *testing.T) {
	srv := testserver.Start(t, "--demo")
	a, ra := demoClient(t, srv, "alice", nil)
	b, rb := demoClient(t, srv, "bob", nil)
	exchange(t, a, b, ra, rb, 500, func(sentA, sentB *atomic.Int64) {
		for round, at := range []int64{150, 350} {
			waitFor(t, 60*time.Second, "progress", func() bool { return sentA.Load()+sentB.Load() >= 2*at })
			online := ra.countStates(StateOnline)
			srv.Kill()
			t.Logf("round %d: killed after %d+%d sends", round, sentA.Load(), sentB.Load())
			srv.Restart()
			waitFor(t, 30*time.Second, "alice back", func() bool { return ra.countStates(StateOnline) > online })
		}
	})
}

// TestFaultAckTimeout4005: a client that withholds acks is closed with 4005
// and still gets every message once, in order, through catch-up.
func TestFaultAckTimeout4005(t *testing.T) {
	srv := testserver.Start(t, "--demo", "--ack-timeout", "200ms", "--ack-retries", "1")
	a, _ := demoClient(t, srv, "alice", nil)
	b, rb := demoClient(t, srv, "bob", func(o *Options) { o.TestingSuppressAcks = true })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conv := DirectConv(a.UID(), b.UID())
	const n = 60
	for i := 1; i <= n; i++ {
		if _, err := a.SendTo(ctx, b.UID(), fmt.Sprintf("m%d", i)); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			// Let the first half time out before sending the rest.
			waitFor(t, 10*time.Second, "close 4005", func() bool { return sawCode(rb, CloseAckTimeout) })
		}
	}
	waitFor(t, 30*time.Second, "all messages", func() bool { return len(rb.seqs(conv)) >= n })
	if got := rb.bodies(conv); !slices.Equal(got, wantBodies("m", 1, n)) {
		t.Fatalf("bob got %d messages, not m1..m%d once in order", len(got), n)
	}
}

// TestFaultSlowConsumer4008: with --max-inflight 4 a client that acks late
// is closed with 4008 and catches up without loss or duplicates.
func TestFaultSlowConsumer4008(t *testing.T) {
	srv := testserver.Start(t, "--demo", "--max-inflight", "4", "--send-rate", "0")
	a, _ := demoClient(t, srv, "alice", nil)
	b, rb := demoClient(t, srv, "bob", func(o *Options) {
		o.AckDelay = 300 * time.Millisecond // acks come late: pushes pile up
		o.AckBatch = 1000
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conv := DirectConv(a.UID(), b.UID())
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	// Concurrent sends so that pushes arrive in bursts.
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				if _, err := a.SendTo(ctx, b.UID(), fmt.Sprintf("m%d", i)); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "all messages", func() bool { return len(rb.seqs(conv)) >= n })
	s := rb.seqs(conv)
	for i := range s {
		if s[i] != int64(i+1) {
			t.Fatalf("seqs not 1..%d once in order at %d", n, i)
		}
	}
	if len(s) != n {
		t.Fatalf("got %d messages", len(s))
	}
	if !sawCode(rb, CloseSlowConsumer) {
		t.Fatalf("never closed with 4008: %+v", rb.states)
	}
}

func sawCode(r *recorder, code int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.states {
		if e.Code == code {
			return true
		}
	}
	return false
}
