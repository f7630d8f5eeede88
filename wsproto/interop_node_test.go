package wsproto

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestInteropNode runs testdata/node/client.mjs, a client built on the npm
// package "ws", against the test server: a fragmented text message echoed
// whole, a ping answered with the same payload, a close echoed with its
// code. It needs node and `npm install --prefix wsproto/testdata/node`
// (run from the module root). Without them it skips, unless the CI
// environment variable is set: then it fails, so CI cannot silently skip it.
func TestInteropNode(t *testing.T) {
	missing := func(what string) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf("%s (CI is set, so this test must run; install with: npm install --prefix wsproto/testdata/node)", what)
		}
		t.Skipf("%s; install with: npm install --prefix wsproto/testdata/node", what)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed")
	}
	dir := filepath.Join("testdata", "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws", "package.json")); err != nil {
		missing("the npm package ws is not installed under " + dir)
	}

	s := startTestServer(t, interopUpgrader(), 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.mjs", s.url("/ws?token=good&device=node"))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node client: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "ok echo,pong,close") {
		t.Fatalf("node client output:\n%s", out)
	}

	log := s.nextLog(t)
	if log.status != 101 || log.req.UID != 42 || log.req.Device != "node" {
		t.Errorf("handshake: status %d, request %+v", log.status, log.req)
	}
	if log.fragments < 2 {
		t.Errorf("server absorbed %d fragments; the client did not fragment", log.fragments)
	}
	if log.messages != 1 || len(log.pings) != 1 || log.pings[0] != "node-ping-7" || log.closeIn != 4000 || log.closeOut != 4000 || log.violation != "" {
		t.Errorf("server log %+v", log)
	}
}
