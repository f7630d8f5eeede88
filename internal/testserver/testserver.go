// Package testserver builds the magpie binary once per test process and
// runs `magpie serve` as a real child process on loopback, for end-to-end
// tests of the server, the SDKs, the web UI and the harness.
package testserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/holdsock"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary returns the path of a magpie binary built from this checkout
// (with -race when the test binary has it), building it on first use.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "magpie-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "magpie")
		// -buildvcs=auto: stamped with the git revision like `make
		// build`, even where GOFLAGS turns stamping off.
		args := []string{"build", "-buildvcs=auto", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/magpie-im/magpie/cmd/magpie")
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build magpie: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Server is a running `magpie serve` child process.
type Server struct {
	t        testing.TB
	Dir      string   // data dir (kept across Restart)
	Args     []string // extra flags
	WSAddr   string   // host:port of the WebSocket listener
	HTTPAddr string   // host:port of the HTTP listener
	held     *os.File // StartHeld: the WebSocket socket, passed as descriptor 3
	cmd      *exec.Cmd
	done     chan struct{}
	exitErr  error
	mu       sync.Mutex
	logs     strings.Builder
}

// Start runs `magpie serve --listen 127.0.0.1:0 --http 127.0.0.1:0 --data DIR`
// plus args, and waits until both listeners are up and /healthz is 200.
// The process is killed at test cleanup.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	s := &Server{t: t, Dir: t.TempDir(), Args: args}
	s.start()
	t.Cleanup(func() { s.Kill() })
	return s
}

// StartIn is Start on a given data dir.
func StartIn(t testing.TB, dir string, args ...string) *Server {
	t.Helper()
	s := &Server{t: t, Dir: dir, Args: args}
	s.start()
	t.Cleanup(func() { s.Kill() })
	return s
}

// StartHeld is Start with the WebSocket socket held by the test, as a
// supervisor holds it under socket activation: the server gets it as
// descriptor 3 (--listen-fd 3), and it stays open, queueing connections,
// across Kill and Restart.
func StartHeld(t testing.TB, args ...string) *Server {
	t.Helper()
	f, _, err := holdsock.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, Dir: t.TempDir(), Args: args, held: f}
	t.Cleanup(func() { s.Kill(); f.Close() })
	s.start()
	return s
}

func (s *Server) start() {
	s.t.Helper()
	listen, httpAddr := "127.0.0.1:0", "127.0.0.1:0"
	// On restart keep the same ports so clients reconnect to the same URL.
	if s.WSAddr != "" {
		listen, httpAddr = s.WSAddr, s.HTTPAddr
	}
	argv := []string{"serve", "--listen", listen, "--http", httpAddr, "--data", s.Dir}
	if s.held != nil {
		argv = []string{"serve", "--listen-fd", "3", "--http", httpAddr, "--data", s.Dir}
	}
	argv = append(argv, s.Args...)
	cmd := exec.Command(Binary(s.t), argv...)
	if s.held != nil {
		cmd.ExtraFiles = []*os.File{s.held}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.logs.WriteString(line + "\n")
			s.mu.Unlock()
			select {
			case lines <- line:
			default:
			}
		}
		close(lines)
	}()
	go func() {
		s.exitErr = cmd.Wait()
		close(s.done)
	}()
	deadline := time.After(30 * time.Second)
	var ws, h string
	for ws == "" || h == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				<-s.done
				s.t.Fatalf("magpie exited before listening: %v\n%s", s.exitErr, s.Logs())
			}
			if i := strings.Index(line, "ws listening on "); i >= 0 {
				ws = strings.TrimSpace(line[i+len("ws listening on "):])
			}
			if i := strings.Index(line, "http listening on "); i >= 0 {
				h = strings.TrimSpace(line[i+len("http listening on "):])
			}
		case <-deadline:
			s.t.Fatalf("magpie did not start in 30s\n%s", s.Logs())
		}
	}
	// Drain further lines so the child never blocks on stderr.
	go func() {
		for range lines {
		}
	}()
	s.WSAddr, s.HTTPAddr = ws, h
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.HTTPURL()+"/healthz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-ctx.Done():
			s.t.Fatalf("magpie /healthz not ready in 30s\n%s", s.Logs())
		case <-time.After(10 * time.Millisecond): // polling an external process: no event to await
		}
	}
}

// WSURL is ws://WSAddr/ws.
func (s *Server) WSURL() string { return "ws://" + s.WSAddr + "/ws" }

// HTTPURL is http://HTTPAddr.
func (s *Server) HTTPURL() string { return "http://" + s.HTTPAddr }

// Logs returns what the server printed to stderr so far.
func (s *Server) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// Kill sends SIGKILL and waits for the exit. Safe to call twice.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// Stop sends SIGTERM and waits up to timeout; it returns the exit error
// (nil for exit 0).
func (s *Server) Stop(timeout time.Duration) error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return s.exitErr
	case <-time.After(timeout):
		s.Kill()
		return fmt.Errorf("magpie did not exit within %v", timeout)
	}
}

// Terminate sends SIGTERM and returns at once (Wait for the exit).
func (s *Server) Terminate() { _ = s.cmd.Process.Signal(syscall.SIGTERM) }

// Wait waits up to timeout for the process to exit and returns its exit
// error (nil for exit 0).
func (s *Server) Wait(timeout time.Duration) error {
	select {
	case <-s.done:
		return s.exitErr
	case <-time.After(timeout):
		return fmt.Errorf("magpie did not exit within %v", timeout)
	}
}

// Restart starts the server again on the same data dir and ports after
// Kill or Stop.
func (s *Server) Restart() {
	s.t.Helper()
	s.start()
}

// PID is the child's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }
