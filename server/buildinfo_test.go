package server

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/magpie-im/magpie/internal/buildinfo"
)

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7070": true, "[::1]:8080": true, "localhost:7070": true, "127.0.0.2:1": true,
		":7070": false, "0.0.0.0:7070": false, "[::]:8080": false, "192.168.1.5:7070": false, "example.com:80": false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestBuildInfoAndDemoWarning: the first log line names the build,
// /metrics has magpie_build_info, and --demo warns about the listener that
// is bound beyond loopback (here --listen) and only about it.
func TestBuildInfoAndDemoWarning(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ts := startServerLog(t, func(c *Config) {
		c.Demo = true
		c.Listen = "0.0.0.0:0"
	}, log)
	bi := buildinfo.Get()
	out := logs.String()
	first, _, _ := strings.Cut(out, "\n")
	if !strings.Contains(first, "magpie starting") || !strings.Contains(first, "version="+bi.Version) || !strings.Contains(first, "revision="+bi.ShortRevision()) {
		t.Errorf("first log line does not name the build:\n%s", first)
	}
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "flag=--listen addr=0.0.0.0:0") {
		t.Errorf("no --demo warning for --listen 0.0.0.0:\n%s", out)
	}
	if strings.Contains(out, "flag=--http") {
		t.Errorf("warned about the loopback --http:\n%s", out)
	}
	resp, err := http.Get("http://" + ts.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `magpie_build_info{go="` + bi.Go + `",revision="` + bi.ShortRevision() + `",version="` + bi.Version + `"} 1`
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}

// syncBuffer is a log sink the server's goroutines may write concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
