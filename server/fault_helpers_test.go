package server_test

// Helpers of the fault tests (fault_*_test.go). These tests are black-box:
// they run `magpie serve` as a child process (internal/testserver) and
// speak only the wire protocol of PROTOCOL.md, so they also exercise the
// signal handling, exit codes and start-up of the real binary.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/magpie-im/magpie/internal/testserver"
	"github.com/magpie-im/magpie/internal/wstest"
	"github.com/magpie-im/magpie/server"
)

const fltSecret = "fault-secret-0123456789abcdef0123456789"

// fltSigner mints tokens the servers started with --secret fltSecret
// accept.
var fltSigner = server.NewSigner([]byte(fltSecret), time.Hour)

// fltStart starts `magpie serve --secret fltSecret` plus args in dir
// (a fresh temporary dir when empty).
func fltStart(t testing.TB, dir string, args ...string) *testserver.Server {
	t.Helper()
	args = append([]string{"--secret", fltSecret, "--log-level", "warn"}, args...)
	if dir == "" {
		return testserver.Start(t, args...)
	}
	return testserver.StartIn(t, dir, args...)
}

// register creates a user over HTTP and returns its uid.
func fltRegister(t testing.TB, srv *testserver.Server, name string) uint64 {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"username": name, "password": "password1"})
	resp, err := http.Post(srv.HTTPURL()+"/api/register", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	defer resp.Body.Close()
	var out struct {
		UID uint64 `json:"uid"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusCreated || out.UID == 0 {
		t.Fatalf("register %s: HTTP %d, uid %d, %v", name, resp.StatusCode, out.UID, err)
	}
	return out.UID
}

func fltToken(uid uint64) string {
	tok, _ := fltSigner.Mint(uid)
	return tok
}

// fltFrame is one server frame. Numbers decode as float64, exact below 2^53
// (PROTOCOL: every integer is).
type fltFrame map[string]any

func (f fltFrame) str(k string) string { s, _ := f[k].(string); return s }
func (f fltFrame) num(k string) uint64 { n, _ := f[k].(float64); return uint64(n) }

// fltConn is wstest.Client with errors returned (fault tests run against
// a server that may die at any moment); c is its connection.
type fltConn struct {
	*wstest.Client
	c   *websocket.Conn
	bad atomic.Pointer[error] // a message that was not a JSON object
}

// dial opens a WebSocket; a non-empty tok authenticates in the URL and the
// welcome frame is consumed before dial returns.
func fltDial(srv *testserver.Server, tok string) (*fltConn, error) {
	url := srv.WSURL()
	if tok != "" {
		url += "?token=" + tok
	}
	wc := &fltConn{}
	c, st, err := wstest.Dial(url, wstest.ClientOptions{EchoClose: true, OnBad: func(_ int, p []byte) {
		err := fmt.Errorf("server sent invalid JSON %q", p)
		wc.bad.CompareAndSwap(nil, &err)
	}})
	if err != nil {
		if st != 0 {
			return nil, fmt.Errorf("dial: %w (HTTP %d)", err, st)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	wc.Client, wc.c = c, c.Conn
	if tok != "" {
		f, err := wc.next(10 * time.Second)
		if err != nil {
			c.Conn.Close()
			return nil, fmt.Errorf("waiting for welcome: %w", err)
		}
		if f.str("type") != "welcome" {
			c.Conn.Close()
			return nil, fmt.Errorf("want welcome, got %v", f)
		}
	}
	return wc, nil
}

func fltMustDial(t testing.TB, srv *testserver.Server, tok string) *fltConn {
	t.Helper()
	c, err := fltDial(srv, tok)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.c.Close() })
	return c
}

var fltErrClosed = wstest.ErrClosed

// next returns the next frame, fltErrClosed once the connection is closed and
// every frame before the close was taken, or a timeout error.
// A message that was not a JSON object is an error too.
func (c *fltConn) next(within time.Duration) (fltFrame, error) {
	if e := c.bad.Load(); e != nil {
		return nil, *e
	}
	f, err := c.Next(within)
	return fltFrame(f.M), err
}

func (c *fltConn) write(v any) error { return c.Send(v) }

// closeCode waits up to within for the reader to stop and returns the close
// code the server sent (0: none) and the reader's error.
func (c *fltConn) closeCode(within time.Duration) (int, error) {
	if !c.WaitClosed(within) {
		return 0, fmt.Errorf("connection not closed within %v", within)
	}
	return c.CloseCode()
}

// request writes v (which carries rid) and returns the reply with that rid,
// acking and skipping pushes and other frames meanwhile.
func (c *fltConn) request(v map[string]any) (fltFrame, error) {
	if err := c.write(v); err != nil {
		return nil, err
	}
	rid := v["rid"]
	for {
		f, err := c.next(10 * time.Second)
		if err != nil {
			return nil, fmt.Errorf("%v: %w", v, err)
		}
		if f.str("type") == "msg" {
			_ = c.write(map[string]any{"type": "ack", "conv": f.str("conv"), "seq": f.num("seq")})
			continue
		}
		if f["rid"] == rid {
			return f, nil
		}
	}
}

// fltMsg is one message of a history reply.
type fltMsg struct {
	Conv string
	Seq  uint64
	From uint64
	TS   uint64
	Kind string
	Body string
	CMID string
}

// history returns every message of conv, ascending, paging with after.
func (c *fltConn) history(conv string) ([]fltMsg, error) {
	var out []fltMsg
	var after uint64
	for page := 0; ; page++ {
		f, err := c.request(map[string]any{"type": "history", "rid": fmt.Sprintf("h%d", page), "conv": conv, "after": after, "limit": 200})
		if err != nil {
			return nil, err
		}
		if f.str("type") != "history" {
			return nil, fmt.Errorf("history %s after %d: %v", conv, after, f)
		}
		list, _ := f["messages"].([]any)
		for _, x := range list {
			m, _ := x.(map[string]any)
			fm := fltFrame(m)
			hm := fltMsg{Conv: fm.str("conv"), Seq: fm.num("seq"), From: fm.num("from"), TS: fm.num("ts"), Kind: fm.str("kind"), Body: fm.str("body"), CMID: fm.str("cmid")}
			if hm.Conv == "" {
				hm.Conv = conv
			}
			out = append(out, hm)
		}
		more, _ := f["more"].(bool)
		if !more {
			return out, nil
		}
		if len(list) == 0 {
			return nil, fmt.Errorf("history %s after %d: more with an empty page", conv, after)
		}
		after = out[len(out)-1].Seq
	}
}

func fltDirect(a, b uint64) string {
	return fmt.Sprintf("d:%d:%d", min(a, b), max(a, b))
}

func fltGroup(gid uint64) string { return fmt.Sprintf("g:%d", gid) }

// fltCreateGroup creates a group of the connection's user with members.
func fltCreateGroup(t testing.TB, c *fltConn, name string, members []uint64) uint64 {
	t.Helper()
	f, err := c.request(map[string]any{"type": "group_create", "rid": "gc", "name": name, "members": members})
	if err != nil {
		t.Fatal(err)
	}
	if f.str("type") != "group" || f.num("group") == 0 {
		t.Fatalf("group_create: %v", f)
	}
	return f.num("group")
}
