package server_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
	"github.com/magpie-im/magpie/internal/wstest"
)

// With --listen-fd the WebSocket socket belongs to a supervisor (here the
// test): a client that connects while the server is dead (SIGKILL) is not
// refused but waits in the socket's accept queue, and the restarted server
// answers its upgrade. With --listen that connect is refused.
func TestListenFDQueuesAcrossKill(t *testing.T) {
	s := testserver.StartHeld(t, "--secret", fltSecret, "--log-level", "warn")
	tok := fltToken(fltRegister(t, s, "held1"))
	welcome := func(r *wstest.Raw) {
		t.Helper()
		_, p, err := r.ReadFrame(10 * time.Second)
		if err != nil || !strings.Contains(string(p), `"type":"welcome"`) {
			t.Fatalf("want welcome, got %q, %v", p, err)
		}
	}
	r1, err := wstest.DialRaw(s.WSAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	if err := r1.Upgrade("token=" + tok); err != nil {
		t.Fatal(err)
	}
	welcome(r1)

	s.Kill()
	if _, _, err := r1.ReadFrame(5 * time.Second); err == nil {
		t.Fatal("the killed server's connection still delivers frames")
	}
	r2, err := wstest.DialRaw(s.WSAddr) // nobody runs: the held socket queues it
	if err != nil {
		t.Fatalf("connect while the server is down: %v (want it queued)", err)
	}
	defer r2.Close()
	if _, err := r2.Write([]byte("GET /ws?token=" + tok + " HTTP/1.1\r\nHost: x\r\n" + wstest.UpgradeHeaders + "\r\n")); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	if h, err := r2.Head(10 * time.Second); err != nil || !strings.HasPrefix(h, "HTTP/1.1 101") {
		t.Fatalf("queued upgrade after restart: %q, %v", h, err)
	}
	welcome(r2)
	if !strings.Contains(s.Logs(), "ws listening on "+s.WSAddr) {
		t.Errorf("start-up line does not name the inherited socket %s:\n%s", s.WSAddr, s.Logs())
	}
}

// A graceful restart (SIGTERM, then a new server) under socket activation:
// a client that connects after the 1001 is served by the next server, not
// refused, nor accepted and closed by the draining one. (The drain is
// short: when the connect lands after the old server's exit this passes
// without releaseListener too; TestReleaseListener checks that part
// alone.)
func TestListenFDGracefulRestart(t *testing.T) {
	s := testserver.StartHeld(t, "--secret", fltSecret, "--log-level", "warn", "--shutdown-grace", "10s")
	tok := fltToken(fltRegister(t, s, "held2"))
	r1, err := wstest.DialRaw(s.WSAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	if err := r1.Upgrade("token=" + tok + "&device=a"); err != nil {
		t.Fatal(err)
	}
	if _, p, err := r1.ReadFrame(10 * time.Second); err != nil || !strings.Contains(string(p), `"type":"welcome"`) {
		t.Fatalf("want welcome, got %q, %v", p, err)
	}
	s.Terminate()
	// The 1001 says the drain has begun.
	for {
		op, p, err := r1.ReadFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("no close frame after SIGTERM: %v", err)
		}
		if op == 0x8 {
			if len(p) < 2 || int(p[0])<<8|int(p[1]) != 1001 {
				t.Fatalf("close %v, want 1001", p)
			}
			break
		}
	}
	r2, err := wstest.DialRaw(s.WSAddr)
	if err != nil {
		t.Fatalf("connect during the drain: %v", err)
	}
	defer r2.Close()
	if _, err := r2.Write([]byte("GET /ws?token=" + tok + "&device=b HTTP/1.1\r\nHost: x\r\n" + wstest.UpgradeHeaders + "\r\n")); err != nil {
		t.Fatal(err)
	}
	r1.Close()
	if err := s.Wait(15 * time.Second); err != nil {
		t.Fatalf("graceful exit: %v\n%s", err, s.Logs())
	}
	s.Restart()
	if h, err := r2.Head(10 * time.Second); err != nil || !strings.HasPrefix(h, "HTTP/1.1 101") {
		t.Fatalf("upgrade sent during the drain, after restart: %q, %v", h, err)
	}
	if _, p, err := r2.ReadFrame(10 * time.Second); err != nil || !strings.Contains(string(p), `"type":"welcome"`) {
		t.Fatalf("want welcome from the next server, got %q, %v", p, err)
	}
}

// A descriptor that is not a listening TCP socket stops start-up with an
// error naming --listen-fd.
func TestListenFDNotAListener(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "notasocket")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testserver.Binary(t), "serve", "--listen-fd", "3", "--http", "127.0.0.1:0", "--data", t.TempDir())
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("want a failed start, got %v:\n%s", err, out)
	}
	if !strings.Contains(string(out), "--listen-fd 3") || !strings.Contains(string(out), "not a socket") {
		t.Errorf("message does not name --listen-fd 3 and the cause:\n%s", out)
	}
	if strings.Contains(string(out), "listening on") {
		t.Errorf("started listening:\n%s", out)
	}
}
