package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// Disk faults at start (issue 8 item 4): a data dir the server cannot use
// must make `magpie serve` exit non-zero promptly with an error naming the
// data dir, and it must never print "ws listening" (never a half-working
// server). The tests run as root in CI, and root ignores file modes, so a
// read-only store is made with a read-only bind mount in a private mount
// namespace (unshare) and with the immutable attribute (chattr +i); as
// another user, chmod 0500 does it.

// fltFailStart runs `magpie serve` on data with extra args (through
// wrapper, when set: a command line that execs the rest) and checks that it
// fails at start. It returns the exit code and stderr.
func fltFailStart(t *testing.T, wrapper []string, data string, args ...string) (int, string) {
	t.Helper()
	bin := testserver.Binary(t)
	argv := append(append([]string(nil), wrapper...), bin, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", data, "--secret", fltSecret)
	argv = append(argv, args...)
	const limit = 15 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	out := stderr.String()
	if len(out) > 4096 {
		out = out[:2048] + "\n…\n" + out[len(out)-2048:]
	}
	if ctx.Err() != nil {
		t.Fatalf("magpie serve --data %s did not exit within %v (killed); %d bytes on stderr:\n%s", data, limit, stderr.Len(), out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("magpie serve --data %s: want a non-zero exit, got %v\n%s", data, err, out)
	}
	t.Logf("exit %d after %v: %s", ee.ExitCode(), took.Round(time.Millisecond), strings.TrimSpace(out))
	if strings.Contains(out, "ws listening") || strings.Contains(out, "http listening") {
		t.Errorf("a server that cannot use its data dir announced its listeners:\n%s", out)
	}
	if !strings.Contains(out, data) {
		t.Errorf("the error does not name the data dir %s:\n%s", data, out)
	}
	if stderr.Len() > 16<<10 {
		t.Errorf("%d bytes on stderr for one start-up error", stderr.Len())
	}
	return ee.ExitCode(), out
}

// fltMakeStore creates a store with one user in it, stopped cleanly.
func fltMakeStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	srv := fltStart(t, dir)
	fltRegister(t, srv, "diskuser")
	if err := srv.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Logs())
	}
	return dir
}

// fltCheckStore starts a server on dir and checks that the user of
// fltMakeStore can log in: the failed starts left the store intact.
func fltCheckStore(t *testing.T, dir string) {
	t.Helper()
	srv := fltStart(t, dir)
	b, _ := json.Marshal(map[string]string{"username": "diskuser", "password": "password1"})
	resp, err := http.Post(srv.HTTPURL()+"/api/login", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("login after the failed starts: HTTP %d", resp.StatusCode)
	}
	if err := srv.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Logs())
	}
}

func TestFaultDiskDataDirIsFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(f, []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("data is a file", func(t *testing.T) { fltFailStart(t, nil, f) })
	t.Run("parent is a file", func(t *testing.T) { fltFailStart(t, nil, filepath.Join(f, "data")) })
}

func TestFaultDiskReadOnlyStore(t *testing.T) {
	dir := fltMakeStore(t)
	db := filepath.Join(dir, "db")

	t.Run("read-only mount", func(t *testing.T) {
		// A private mount namespace: the read-only bind mount vanishes with
		// the process, whatever happens to the test.
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("unshare(1) not installed")
		}
		probe := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"`, dir)
		if out, err := probe.CombinedOutput(); err != nil {
			t.Skipf("cannot make a read-only bind mount here (needs CAP_SYS_ADMIN): %v %s", err, out)
		}
		wrapper := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
			`d="$1"; shift; mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" && exec "$@"`, "sh", dir}
		fltFailStart(t, wrapper, dir)
	})

	t.Run("unwritable store dir", func(t *testing.T) {
		if os.Geteuid() != 0 {
			if err := os.Chmod(db, 0o500); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Chmod(db, 0o755) })
		} else {
			// Root ignores modes; the immutable attribute stops root too
			// (EPERM on creating a file in the directory).
			if out, err := exec.Command("chattr", "+i", db).CombinedOutput(); err != nil {
				t.Skipf("running as root and chattr +i is not available here: %v %s", err, out)
			}
			t.Cleanup(func() {
				if out, err := exec.Command("chattr", "-i", db).CombinedOutput(); err != nil {
					t.Errorf("chattr -i %s: %v %s", db, err, out)
				}
			})
		}
		if f, err := os.CreateTemp(db, "probe"); err == nil {
			f.Close()
			os.Remove(f.Name())
			t.Fatalf("could not make %s unwritable", db)
		}
		fltFailStart(t, nil, dir)
	})

	// Both failed starts left the store usable.
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chattr", "-i", db).CombinedOutput(); err != nil {
			t.Logf("chattr -i: %v %s", err, out)
		}
	}
	fltCheckStore(t, dir)
}
