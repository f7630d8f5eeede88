package client

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// TestFaultRestartManyClients: a server restart with 2,000 SDK clients
// connected (default backoff: first ≤ 1 s, factor 2, cap 30 s). All come
// back, and full jitter spreads their reconnects: no more than a tenth of
// them are back within 100 ms of losing the connection. The distribution is
// logged (see docs/bench/client.md).
//
// It runs without -short and without -race (2,000 clients need ~6,000
// goroutines; the race detector allows 8,128 in all).
func TestFaultRestartManyClients(t *testing.T) {
	if testing.Short() {
		t.Skip("long: 2,000 clients")
	}
	if raceEnabled {
		t.Skip("2,000 clients exceed the race detector's goroutine limit")
	}
	n := 2000
	if v := os.Getenv("MAGPIE_FAULT_CLIENTS"); v != "" {
		fmt.Sscan(v, &n)
	}
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "tokens")
	t0 := time.Now()
	out, err := exec.Command(testserver.Binary(t), "user", "import", "--data", dir, "--prefix", "load",
		"--count", fmt.Sprint(n), "--tokens", tokFile).CombinedOutput()
	if err != nil {
		t.Fatalf("user import: %v\n%s", err, out)
	}
	t.Logf("imported %d users with tokens in %v", n, time.Since(t0).Round(time.Millisecond))
	f, err := os.Open(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	var tokens []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) == 3 {
			tokens = append(tokens, fs[2])
		}
	}
	f.Close()
	if len(tokens) != n {
		t.Fatalf("%d tokens for %d users", len(tokens), n)
	}
	srv := testserver.StartIn(t, dir)

	type track struct {
		mu         sync.Mutex
		armed      bool
		lost       time.Time     // first reconnecting event after arming
		firstDelay time.Duration // its delay
		back       time.Time     // first online event after lost
		attempts   int
	}
	tracks := make([]*track, n)
	clients := make([]*Client, n)
	t0 = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		tr := &track{}
		tracks[i] = tr
		c, err := New(Options{
			Token: tokens[i],
			WSURL: srv.WSURL(),
			OnState: func(e StateEvent) {
				now := time.Now()
				tr.mu.Lock()
				defer tr.mu.Unlock()
				if !tr.armed {
					return
				}
				switch {
				case e.State == StateReconnecting && tr.lost.IsZero():
					tr.lost, tr.firstDelay = now, e.Delay
				case e.State == StateReconnecting:
					tr.attempts++
					if os.Getenv("MAGPIE_FAULT_DEBUG") != "" {
						fmt.Printf("DBG %d %v\n", now.UnixMilli(), e.Err)
					}
				case e.State == StateOnline && !tr.lost.IsZero() && tr.back.IsZero():
					tr.back = now
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := c.Connect(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("connect: %v", err)
	}
	defer func() {
		var cw sync.WaitGroup
		for _, c := range clients {
			cw.Add(1)
			go func() { defer cw.Done(); c.Close() }()
		}
		cw.Wait()
	}()
	t.Logf("%d clients online in %v", n, time.Since(t0).Round(time.Millisecond))
	for _, tr := range tracks {
		tr.mu.Lock()
		tr.armed = true
		tr.mu.Unlock()
	}

	var tUp time.Time
	tStop := time.Now()
	if os.Getenv("MAGPIE_FAULT_DEBUG") != "" {
		fmt.Printf("DBG stop %d\n", tStop.UnixMilli())
		defer func() { fmt.Printf("DBG up %d\n", tUp.UnixMilli()) }()
	}
	if err := srv.Stop(15 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Logs())
	}
	tDown := time.Now()
	srv.Restart()
	tUp = time.Now()
	t.Logf("restart: stop took %v, start took %v", tDown.Sub(tStop).Round(time.Millisecond), tUp.Sub(tDown).Round(time.Millisecond))

	allBack := func() bool {
		for _, tr := range tracks {
			tr.mu.Lock()
			b := tr.back.IsZero()
			tr.mu.Unlock()
			if b {
				return false
			}
		}
		return true
	}
	waitFor(t, 90*time.Second, "all clients back online", allBack)
	t.Logf("all %d back %v after the restart began", n, time.Since(tStop).Round(time.Millisecond))

	var sinceLost, sinceUp, delays []time.Duration
	retries := 0
	for _, tr := range tracks {
		tr.mu.Lock()
		sinceLost = append(sinceLost, tr.back.Sub(tr.lost))
		sinceUp = append(sinceUp, tr.back.Sub(tUp))
		delays = append(delays, tr.firstDelay)
		retries += tr.attempts
		tr.mu.Unlock()
	}
	t.Logf("failed attempts while the server was down: %d", retries)
	report := func(name string, d []time.Duration) int {
		slices.Sort(d)
		q := func(p float64) time.Duration { return d[int(p*float64(len(d)-1))].Round(time.Millisecond) }
		under := 0
		for _, x := range d {
			if x < 100*time.Millisecond {
				under++
			}
		}
		t.Logf("%s: min %v p10 %v p25 %v p50 %v p75 %v p90 %v p99 %v max %v; under 100ms: %d (%.1f%%)",
			name, q(0), q(.10), q(.25), q(.5), q(.75), q(.9), q(.99), q(1), under, 100*float64(under)/float64(len(d)))
		// A histogram in 250 ms buckets.
		var sb strings.Builder
		for lo := time.Duration(0); lo <= d[len(d)-1]; lo += 250 * time.Millisecond {
			c := 0
			for _, x := range d {
				if x >= lo && x < lo+250*time.Millisecond {
					c++
				}
			}
			fmt.Fprintf(&sb, "\n  %5dms %5d %s", lo.Milliseconds(), c, strings.Repeat("#", c*60/len(d)))
		}
		t.Logf("%s histogram (250 ms buckets):%s", name, sb.String())
		return under
	}
	report("first backoff delay drawn", delays)
	report("back online since the server came up", sinceUp)
	if under := report("back online since the connection was lost", sinceLost); under > n/10 {
		t.Errorf("%d of %d clients back within 100 ms of the loss: jitter does not spread them", under, n)
	}
}
