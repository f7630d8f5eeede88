package server

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// metric reads one unlabeled series from /metrics.
func (ts *testServer) metric(name string) float64 {
	ts.t.Helper()
	v, err := testserver.Metric("http://"+ts.http, name)
	if err != nil {
		ts.t.Fatal(err)
	}
	return v
}

// TestNoLeakAfter10000Connections opens and closes 10,000 connections
// (half authenticated, some with a push in flight, some mid-handshake) and
// checks that armed timers, goroutines and open connections return to
// their baseline.
func TestNoLeakAfter10000Connections(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 connections")
	}
	ts := startServer(t, nil)
	uid, tok := ts.user("leaky")
	waitFor(t, func() bool { return ts.metric("magpie_timers_armed") == 0 })
	g0 := runtime.NumGoroutine()

	const total, par = 10000, 200
	var wg sync.WaitGroup
	sem := make(chan struct{}, par)
	errs := make(chan error, total)
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			c, err := net.DialTimeout("tcp", ts.ws, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			switch i % 4 {
			case 0: // mid-handshake
				fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: x\r\n")
				return
			case 1: // upgraded, unauthenticated
				fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
			default: // authenticated
				fmt.Fprintf(c, "GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", tok)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 4096)
			got := ""
			want := "101 Switching"
			if i%4 >= 2 {
				want = "welcome"
			}
			for !strings.Contains(got, want) {
				n, err := c.Read(buf)
				if err != nil {
					errs <- fmt.Errorf("conn %d: %v after %q", i, err, got)
					return
				}
				got += string(buf[:n])
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A push to the user while some of its connections close leaves ACK
	// timers armed only on open connections.
	c := login(t, ts, tok)
	other, otok := ts.user("other")
	_ = other
	o := login(t, ts, otok)
	o.send(map[string]any{"type": "send", "cmid": "x", "to": uid, "body": "hi"})
	c.nextType("msg")
	c.c.Close()
	o.c.Close()

	waitFor(t, func() bool {
		return ts.metric("magpie_connections_open") == 0 && ts.metric("magpie_timers_armed") == 0
	})
	waitFor(t, func() bool { return runtime.NumGoroutine() <= g0+5 })
	if open := ts.metric("magpie_online_connections"); open != 0 {
		t.Fatalf("online connections %v after all closed", open)
	}
}

// waitFor polls cond until it holds or 30 s pass.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(20 * time.Millisecond) // polling state that has no event to await
	}
}

// TestStoreMetrics: the store's figures are on /metrics, with the cache
// capacity set by --cache-size.
func TestStoreMetrics(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.CacheSize = 3 << 20 })
	if v := ts.metric("magpie_store_cache_capacity_bytes"); v != 3<<20 {
		t.Errorf("magpie_store_cache_capacity_bytes %v, want %d", v, 3<<20)
	}
	for _, name := range []string{"magpie_store_cache_bytes", "magpie_store_cache_entries", "magpie_store_cache_hits_total",
		"magpie_store_cache_misses_total", "magpie_store_cache_evictions_total", "magpie_store_cache_refusals_total",
		"magpie_store_unflushed_cmids", "magpie_store_cmid_lookups_total", "magpie_router_open_items"} {
		ts.metric(name) // fails the test when the series is missing
	}
}
