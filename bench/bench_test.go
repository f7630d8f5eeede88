package bench

import (
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/bench/baseline"
	"github.com/magpie-im/magpie/internal/testserver"
	"github.com/magpie-im/magpie/server"
)

// importUsers fills a fresh data dir with n users and returns the tokens
// file, as a user of the harness would with `magpie user import`.
func importUsers(t *testing.T, dir string, n int) string {
	t.Helper()
	tokens := filepath.Join(t.TempDir(), "tokens.txt")
	out, err := exec.Command(testserver.Binary(t), "user", "import", "--data", dir, "--prefix", "u",
		"--count", strconv.Itoa(n), "--tokens", tokens).CombinedOutput()
	if err != nil {
		t.Fatalf("user import: %v\n%s", err, out)
	}
	return tokens
}

// runScenario runs a scenario in this process (workers are the magpie
// binary) and returns its report.
func runScenario(t *testing.T, scenario string, args ...string) *Report {
	t.Helper()
	o, err := parseOptions(scenario, args)
	if err != nil {
		t.Fatal(err)
	}
	o.exe = testserver.Binary(t)
	rep, err := run(o)
	if rep != nil {
		var sb strings.Builder
		rep.print(&sb)
		t.Log(sb.String())
	}
	if err != nil {
		t.Fatalf("%s: %v", scenario, err)
	}
	return rep
}

func num(t *testing.T, r *Report, k string) float64 {
	t.Helper()
	v, ok := r.Results[k]
	if !ok {
		t.Fatalf("report has no %q: %v", k, r.Results)
	}
	switch x := v.(type) {
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	case float64:
		return x
	}
	t.Fatalf("%q is %T", k, v)
	return 0
}

func TestScenariosAgainstMagpie(t *testing.T) {
	dir := t.TempDir()
	tokens := importUsers(t, dir, 41)
	s := testserver.StartIn(t, dir, "--send-rate", "0")
	common := []string{"--url", s.WSURL(), "--http", s.HTTPURL(), "--tokens", tokens,
		"--server-pid", strconv.Itoa(s.PID()), "--procs", "2", "--src", "2"}

	t.Run("connect", func(t *testing.T) {
		r := runScenario(t, "connect", append(common, "--conns", "30", "--hold", "300ms", "--heartbeat", "100ms")...)
		if got := num(t, r, "connected"); got != 30 {
			t.Errorf("connected = %v, want 30", got)
		}
		if num(t, r, "connect_failures") != 0 || num(t, r, "disconnects_during_hold") != 0 {
			t.Errorf("failures or disconnects: %v", r.Results)
		}
		if num(t, r, "server_rss_full_bytes") <= 0 {
			t.Errorf("no server RSS")
		}
		if r.Latency["connect"].Count != 30 {
			t.Errorf("connect latency count = %d", r.Latency["connect"].Count)
		}
		if num(t, r, "pings") == 0 || num(t, r, "pongs") == 0 {
			t.Errorf("no heartbeats: %v", r.Results)
		}
		// 30 connections move the server's memory by less than its
		// sampling noise: every per-connection figure is flagged.
		var sb strings.Builder
		r.print(&sb)
		for _, k := range []string{"server_rss_per_conn_bytes", "server_heap_per_conn_bytes"} {
			if !strings.Contains(sb.String(), "warning: "+k+" = ") {
				t.Errorf("no warning for %s: %q", k, r.Warnings)
			}
		}
	})
	t.Run("p2p", func(t *testing.T) {
		r := runScenario(t, "p2p", append(common, "--pairs", "10", "--rate", "400", "--duration", "1s")...)
		sent := num(t, r, "messages_sent_ok")
		if sent < 100 {
			t.Errorf("messages_sent_ok = %v, want about 400", sent)
		}
		if got := num(t, r, "pushes_received"); got != sent {
			t.Errorf("pushes_received = %v, sent = %v", got, sent)
		}
		if num(t, r, "errors") != 0 || num(t, r, "duplicates") != 0 {
			t.Errorf("errors or duplicates: %v", r.Results)
		}
		if r.Latency["e2e"].Count != int64(sent) || r.Latency["sent"].Count != int64(sent) {
			t.Errorf("latency counts %d %d, want %v", r.Latency["e2e"].Count, r.Latency["sent"].Count, sent)
		}
	})
	t.Run("fanout", func(t *testing.T) {
		r := runScenario(t, "fanout", append(common, "--members", "40", "--messages", "10", "--rate", "50")...)
		if got := num(t, r, "deliveries"); got != 400 {
			t.Errorf("deliveries = %v, want 40 × 10", got)
		}
		if num(t, r, "missing") != 0 || num(t, r, "duplicates") != 0 {
			t.Errorf("missing or duplicates: %v", r.Results)
		}
		if got := num(t, r, "server_acks"); got != 400 {
			t.Errorf("server counted %v acks, want 400", got)
		}
		if r.Latency["delivery"].Count != 400 {
			t.Errorf("delivery latency count = %d", r.Latency["delivery"].Count)
		}
	})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// stormSpawned runs a 30-client storm with --spawn (plus extra flags) on
// fresh ports and a fresh data dir, and checks that every client caught
// up with nothing lost.
func stormSpawned(t *testing.T, extra ...string) *Report {
	t.Helper()
	ws, h := freePort(t), freePort(t)
	args := append([]string{"--spawn", "--data", t.TempDir(),
		"--url", fmt.Sprintf("ws://127.0.0.1:%d/ws", ws), "--http", fmt.Sprintf("http://127.0.0.1:%d", h),
		"--procs", "2", "--conns", "30", "--messages", "5", "--rate", "50", "--wait", "20s"}, extra...)
	r := runScenario(t, "storm", args...)
	if got := num(t, r, "caught_up"); got != 30 {
		t.Errorf("caught_up = %v, want 30", got)
	}
	if num(t, r, "lost") != 0 {
		t.Errorf("lost %v", num(t, r, "lost"))
	}
	return r
}

func TestStormSpawned(t *testing.T) {
	r := stormSpawned(t)
	if num(t, r, "messages_after_restart") != 5 || num(t, r, "messages_before_restart") != 5 {
		t.Errorf("messages: %v", r.Results)
	}
	if d := num(t, r, "all_caught_up_seconds_after_kill"); d <= 0 || d > 20 {
		t.Errorf("all_caught_up_seconds_after_kill = %v", d)
	}
}

// With --hold-listener the harness owns the WebSocket socket across the
// SIGKILL and restart (magpie serve --listen-fd 3): no reconnect attempt
// is refused, every client comes back and catches up.
func TestStormHeldListener(t *testing.T) {
	r := stormSpawned(t, "--hold-listener")
	if f := num(t, r, "reconnect_failures"); f != 0 {
		t.Errorf("reconnect_failures = %v, want 0 (connects queue on the held socket)", f)
	}
}

// TestBaseline runs connect and fanout against both modes of the baseline
// server, in process.
func TestBaseline(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	signer := server.NewSigner(key, time.Hour)
	var sb strings.Builder
	for uid := uint64(1); uid <= 21; uid++ {
		tok, _ := signer.Mint(uid)
		fmt.Fprintf(&sb, "%d u%d %s\n", uid, uid, tok)
	}
	tokens := filepath.Join(t.TempDir(), "tokens.txt")
	if err := os.WriteFile(tokens, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ceiling := range []bool{false, true} {
		t.Run(fmt.Sprintf("ceiling=%v", ceiling), func(t *testing.T) {
			hs := httptest.NewServer(baseline.New(signer, ceiling, 30*time.Second).Handler())
			defer hs.Close()
			common := []string{"--url", "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", "--http", hs.URL,
				"--tokens", tokens, "--server-pid", strconv.Itoa(os.Getpid()), "--procs", "1", "--src", "0", "--target", "baseline"}
			r := runScenario(t, "connect", append(common, "--conns", "20", "--hold", "100ms")...)
			if num(t, r, "connected") != 20 {
				t.Errorf("connected: %v", r.Results)
			}
			r = runScenario(t, "fanout", append(common, "--members", "20", "--messages", "10", "--rate", "0")...)
			if got := num(t, r, "deliveries"); got != 200 {
				t.Errorf("deliveries = %v, want 200", got)
			}
			if num(t, r, "missing") != 0 || num(t, r, "duplicates") != 0 {
				t.Errorf("missing or duplicates: %v", r.Results)
			}
		})
	}
}

func TestFrameHelpers(t *testing.T) {
	m := []byte(`{"type":"msg","conv":"g:12","seq":7,"from":3,"ts":1,"kind":"text","body":"t123xx","cmid":"b1.x.1-99"}`)
	if string(frameType(m)) != "msg" {
		t.Fatal("type")
	}
	if v, ok := jsonUint(m, "seq"); !ok || v != 7 {
		t.Fatalf("seq %v %v", v, ok)
	}
	if s, ok := jsonStr(m, "conv"); !ok || string(s) != "g:12" {
		t.Fatalf("conv %q", s)
	}
	p := newPool(nil, 0, 0, 0)
	c := &client{p: p}
	if !c.isGroupConv([]byte("g:12"), 12) || c.isGroupConv([]byte("g:123"), 12) || c.isGroupConv([]byte("d:1:2"), 12) {
		t.Fatal("isGroupConv")
	}
	for _, s := range []uint64{1, 2, 4, 3, 64, 5} {
		c.hold(s)
	}
	if c.contig.Load() != 5 || c.missing(64) != 58 || !c.hold(3) {
		t.Fatalf("contig %d missing %d", c.contig.Load(), c.missing(64))
	}
	var hdr [14]byte
	f := appendFrame(hdr[:0], 1, make([]byte, 300))
	if f[0] != 0x81 || f[1] != 0x80|126 || len(f) != 4+4+300 {
		t.Fatalf("frame header % x", f[:8])
	}
}

// TestSoak: 40 clients in two groups and random direct pairs, connections
// dropped (abruptly and cleanly) and restored by §9 while messages flow;
// after the drain every member holds every seq that got a sent.
func TestSoak(t *testing.T) {
	dir := t.TempDir()
	tokens := importUsers(t, dir, 41)
	s := testserver.StartIn(t, dir, "--pprof")
	r := runScenario(t, "soak", "--url", s.WSURL(), "--http", s.HTTPURL(), "--tokens", tokens,
		"--server-pid", strconv.Itoa(s.PID()), "--procs", "2", "--src", "2",
		"--conns", "40", "--duration", "6s", "--rate", "150", "--group-frac", "0.2", "--groups", "2", "--group-size", "10",
		"--churn", "5", "--drain", "15s", "--settle", "300ms", "--sample", "300ms")
	if num(t, r, "lost") != 0 {
		t.Errorf("lost %v: %v", num(t, r, "lost"), r.Results["loss_examples"])
	}
	if num(t, r, "messages_sent_ok") < 300 || num(t, r, "group_messages_sent_ok") == 0 {
		t.Errorf("too few messages: %v", r.Results)
	}
	if num(t, r, "drops_abrupt") == 0 || num(t, r, "reconnects") == 0 || num(t, r, "history_requests") == 0 {
		t.Errorf("no churn or catch-up: %v", r.Results)
	}
	if num(t, r, "online_at_end") != 40 || num(t, r, "group_members") != 20 {
		t.Errorf("clients: %v", r.Results)
	}
	if num(t, r, "deliveries_required") < 2*num(t, r, "messages_sent_ok") {
		t.Errorf("deliveries_required %v for %v messages", num(t, r, "deliveries_required"), num(t, r, "messages_sent_ok"))
	}
	if num(t, r, "server_heap_inuse_after_leave_gc_bytes") <= 0 || num(t, r, "server_rss_peak_bytes") <= 0 {
		t.Errorf("no server memory: %v", r.Results)
	}
}
