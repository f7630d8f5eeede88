package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/magpie-im/magpie/internal/wstest"
)

// testServer is an in-process server on 127.0.0.1 ports chosen by the OS.
type testServer struct {
	t      testing.TB
	cfg    Config
	ws     string // host:port
	http   string
	cancel context.CancelFunc
	done   chan error
	signer *Signer
	srv    *Server // the running server (its loops, sessions)
}

const testSecret = "test-secret-0123456789abcdef0123456789"

func startServer(t testing.TB, mutate func(*Config)) *testServer {
	t.Helper()
	return startServerLog(t, mutate, nil)
}

// startServerLog is startServer with the server's logger (nil: slog's
// default).
func startServerLog(t testing.TB, mutate func(*Config), log *slog.Logger) *testServer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.HTTP = "127.0.0.1:0"
	cfg.Data = t.TempDir()
	cfg.Secret = testSecret
	cfg.Fsync = false
	cfg.Loops = 2
	cfg.SendRate = 0
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, cfg: cfg, done: make(chan error, 1), signer: NewSigner([]byte(testSecret), cfg.TokenTTL)}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	started := make(chan struct{})
	go func() {
		ts.done <- Run(ctx, cfg, Options{Logger: log, Stderr: io.Discard, onServer: func(s *Server) { ts.srv = s }, Started: func(ws, h string) {
			ts.ws, ts.http = ws, h
			close(started)
		}})
	}()
	select {
	case <-started:
	case err := <-ts.done:
		t.Fatalf("server did not start: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("server did not start in 20s")
	}
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	select {
	case err := <-ts.done:
		if err != nil {
			ts.t.Errorf("server shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		ts.t.Error("server did not shut down")
	}
}

func (ts *testServer) url(q string) string {
	u := "ws://" + ts.ws + "/ws"
	if q != "" {
		u += "?" + q
	}
	return u
}

func (ts *testServer) post(path string, body any) (int, map[string]any) {
	ts.t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post("http://"+ts.http+path, "application/json", bytes.NewReader(b))
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// user registers name and returns its uid and a token.
func (ts *testServer) user(name string) (uint64, string) {
	ts.t.Helper()
	code, out := ts.post("/api/register", map[string]string{"username": name, "password": "password1"})
	if code != 201 {
		ts.t.Fatalf("register %s: %d %v", name, code, out)
	}
	uid := uint64(out["uid"].(float64))
	tok, _ := ts.signer.Mint(uid)
	return uid, tok
}

// wsClient is wstest.Client with fatal errors; c is its connection.
type wsClient struct {
	t testing.TB
	*wstest.Client
	c *websocket.Conn
}

func dialWS(t testing.TB, url string) *wsClient {
	t.Helper()
	c, st, err := wstest.Dial(url, wstest.ClientOptions{OnBad: func(_ int, p []byte) {
		t.Errorf("server sent invalid JSON %q", p)
	}})
	if err != nil {
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, st)
	}
	t.Cleanup(func() { c.Conn.Close() })
	return &wsClient{t: t, Client: c, c: c.Conn}
}

// login dials with the token in the URL and waits for welcome.
func login(t testing.TB, ts *testServer, tok string) *wsClient {
	t.Helper()
	c := dialWS(t, ts.url("token="+tok))
	w := c.next()
	if w["type"] != "welcome" {
		t.Fatalf("want welcome, got %v", w)
	}
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	if err := c.Send(v); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame within 5 s.
func (c *wsClient) next() map[string]any {
	c.t.Helper()
	f, err := c.Next(5 * time.Second)
	if err == wstest.ErrClosed {
		c.t.Fatalf("connection closed (code %d) while waiting for a frame", c.closeCode())
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return f.M
}

// nextType skips frames until one of type typ.
func (c *wsClient) nextType(typ string) map[string]any {
	c.t.Helper()
	for {
		m := c.next()
		if m["type"] == typ {
			return m
		}
	}
}

// waitClose waits for the connection to close and returns the close code.
func (c *wsClient) waitClose(within time.Duration) int {
	c.t.Helper()
	if !c.WaitClosed(within) {
		c.t.Fatalf("connection not closed within %v", within)
	}
	return c.closeCode()
}

func (c *wsClient) closeCode() int {
	code, _ := c.CloseCode()
	return code
}

// expectQuiet asserts that no frame arrives for d (used only to check that
// something does NOT happen; never to wait for something that should).
func (c *wsClient) expectQuiet(d time.Duration) {
	c.t.Helper()
	if f, ok := c.Quiet(d); ok {
		c.t.Fatalf("unexpected frame %v", f.M)
	}
}

func num(v any) uint64 {
	f, _ := v.(float64)
	return uint64(f)
}

// rawConn is a TCP connection for protocol-violation tests (wstest.Raw
// with fatal errors).
type rawConn struct {
	t testing.TB
	*wstest.Raw
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	r, err := wstest.DialRaw(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &rawConn{t: t, Raw: r}
}

// upgrade performs a valid handshake on path with query q.
func (r *rawConn) upgrade(q string) {
	r.t.Helper()
	if err := r.Upgrade(q); err != nil {
		r.t.Fatal(err)
	}
}

// readHTTP reads one HTTP response head.
func (r *rawConn) readHTTP() string {
	h, _ := r.Head(5 * time.Second)
	return h
}

// frame writes a client frame (masked unless unmasked is set).
func (r *rawConn) frame(fin bool, op byte, payload []byte, masked bool) {
	r.t.Helper()
	if err := r.WriteFrame(fin, op, payload, masked, [4]byte{1, 2, 3, 4}); err != nil {
		r.t.Fatalf("write frame: %v", err)
	}
}

// readFrame reads one server frame (unmasked) within 5 s.
func (r *rawConn) readFrame() (op byte, payload []byte, err error) {
	return r.ReadFrame(5 * time.Second)
}

// expectClose reads frames until a close frame and returns its code, and
// checks that TCP is closed afterwards.
func (r *rawConn) expectClose() int {
	r.t.Helper()
	return r.ExpectClose(r.t, 5*time.Second, 2*time.Second)
}
