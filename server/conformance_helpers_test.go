package server_test

// Helpers of the conformance suite: black-box tests of `magpie serve`
// (a real child process, see internal/testserver) against
// /work/shared/PROTOCOL.md, speaking only the wire protocol.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/magpie-im/magpie/internal/wstest"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/magpie-im/magpie/internal/testserver"
	"github.com/magpie-im/magpie/server"
)

const cfSecret = "conformance-secret-0123456789abcdef0123"

// slack is the scheduling allowance added to "at most 100 ms late".
func cfSlack() time.Duration {
	if cfRace {
		return 150 * time.Millisecond
	}
	return 80 * time.Millisecond
}

// cfServer is a magpie child process with a known --secret.
type cfServer struct {
	*testserver.Server
	t      testing.TB
	signer *server.Signer
}

// cfStart starts `magpie serve` with --secret, --fsync=false and
// --send-rate 0, then flags (later flags override earlier ones).
func cfStart(t testing.TB, flags ...string) *cfServer {
	t.Helper()
	args := append([]string{"--secret", cfSecret, "--fsync=false", "--send-rate", "0"}, flags...)
	s := testserver.Start(t, args...)
	return &cfServer{Server: s, t: t, signer: server.NewSigner([]byte(cfSecret), time.Hour)}
}

// do sends an HTTP request to the API listener.
func (s *cfServer) do(t testing.TB, method, path string, body []byte, hdr map[string]string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, s.HTTPURL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// postJSON posts v (a string is sent verbatim) and decodes a JSON object
// answer (nil when the answer is not an object).
func (s *cfServer) postJSON(t testing.TB, path string, v any) (int, map[string]any, []byte) {
	t.Helper()
	b, _ := wstest.Payload(v)
	code, out := s.do(t, "POST", path, b, nil)
	var m map[string]any
	_ = json.Unmarshal(out, &m)
	return code, m, out
}

func (s *cfServer) register(t testing.TB, name, pw string) (int, map[string]any) {
	t.Helper()
	code, m, _ := s.postJSON(t, "/api/register", map[string]string{"username": name, "password": pw})
	return code, m
}

func (s *cfServer) login(t testing.TB, name, pw string) (int, map[string]any) {
	t.Helper()
	code, m, _ := s.postJSON(t, "/api/login", map[string]string{"username": name, "password": pw})
	return code, m
}

// user registers name (password "password1") and returns its uid and a
// token minted with the server's secret.
func (s *cfServer) user(t testing.TB, name string) (int64, string) {
	t.Helper()
	code, m := s.register(t, name, "password1")
	if code != 201 {
		t.Fatalf("register %s: %d %v", name, code, m)
	}
	uid := cfNum(m["uid"])
	if uid <= 0 {
		t.Fatalf("register %s: uid %v", name, m["uid"])
	}
	tok, _ := s.signer.Mint(uint64(uid))
	return uid, tok
}

func (s *cfServer) url(q string) string {
	if q == "" {
		return s.WSURL()
	}
	return s.WSURL() + "?" + q
}

// cfWantAPIError checks an error answer: status and {"error":code,"message":…}.
func cfWantAPIError(t testing.TB, what string, status int, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("%s: HTTP %d, want %d (body %s)", what, status, wantStatus, body)
		return
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Errorf("%s: error body is not a JSON object: %q", what, body)
		return
	}
	if m["error"] != wantCode {
		t.Errorf("%s: error %v, want %q (body %s)", what, m["error"], wantCode, body)
	}
	if msg, ok := m["message"].(string); !ok || msg == "" {
		t.Errorf("%s: message missing or not a string: %s", what, body)
	}
}

// num converts a JSON number to int64; -1 when v is not a number.
func cfNum(v any) int64 {
	f, ok := v.(float64)
	if !ok {
		return -1
	}
	return int64(f)
}

// ---- WebSocket client ----

type cfFrame = wstest.Frame

// cfConn is wstest.Client with fatal errors; it echoes the server's close
// frame as RFC 6455 asks. c is its connection.
type cfConn struct {
	t    testing.TB
	name string
	*wstest.Client
	c *websocket.Conn
}

// cfDialWS dials url; it returns the HTTP status on handshake failure.
func cfDialWS(t testing.TB, url string, hdr http.Header) (*cfConn, int, error) {
	t.Helper()
	c, st, err := wstest.Dial(url, wstest.ClientOptions{Header: hdr, HandshakeTimeout: 5 * time.Second, EchoClose: true,
		OnBad: func(typ int, p []byte) {
			t.Errorf("server sent a non-JSON-object message (type %d): %q", typ, p)
		}})
	if err != nil {
		return nil, st, err
	}
	t.Cleanup(func() { c.Conn.Close() })
	return &cfConn{t: t, Client: c, c: c.Conn}, 101, nil
}

func cfDial(t testing.TB, url string) *cfConn {
	t.Helper()
	c, st, err := cfDialWS(t, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, st)
	}
	return c
}

// connect dials with the token in the URL and returns after welcome.
func (s *cfServer) connect(t testing.TB, tok string, q ...string) *cfConn {
	t.Helper()
	u := "token=" + tok
	for _, x := range q {
		u += "&" + x
	}
	c := cfDial(t, s.url(u))
	if w := c.next(); w["type"] != "welcome" {
		t.Fatalf("want welcome, got %v", w)
	}
	return c
}

func (c *cfConn) write(typ int, b []byte) error { return c.Write(typ, b) }

// send writes v as a text message (a string or []byte verbatim).
func (c *cfConn) send(v any) {
	c.t.Helper()
	if err := c.Send(v); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *cfConn) nextFrame(within time.Duration) cfFrame {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		f, err := c.Next(time.Until(deadline))
		if err == wstest.ErrClosed {
			c.t.Fatalf("%sconnection closed (code %d) while waiting for a frame", c.label(), c.closeCode())
		}
		if err != nil {
			c.t.Fatalf("%s%v", c.label(), err)
		}
		if !cfSkipped(f) {
			return f
		}
	}
}

// cfSkipped reports a version 2 receipt (§14): the reads these tests make
// send them to the other members, and the tests of §1–§12 do not look at
// them (server/receipts_test.go does).
func cfSkipped(f cfFrame) bool { return f.M["type"] == "receipt" }

func (c *cfConn) label() string {
	if c.name == "" {
		return ""
	}
	return c.name + ": "
}

// next returns the next frame within 5 s.
func (c *cfConn) next() map[string]any {
	c.t.Helper()
	return c.nextFrame(5 * time.Second).M
}

// expect returns the next frame and fails unless its type is typ.
func (c *cfConn) expect(typ string) map[string]any {
	c.t.Helper()
	m := c.next()
	if m["type"] != typ {
		c.t.Fatalf("%swant a %q frame, got %v", c.label(), typ, m)
	}
	return m
}

// expectErr reads the next frame and checks it is an error with code; rid
// "" means the frame must carry no rid.
func (c *cfConn) expectErr(code, rid string) map[string]any {
	c.t.Helper()
	m := c.next()
	if m["type"] != "error" || m["code"] != code {
		c.t.Fatalf("%swant error %s, got %v", c.label(), code, m)
	}
	cfCheckRID(c.t, m, rid)
	return m
}

// cfCheckRID: rid "" means absent.
func cfCheckRID(t testing.TB, m map[string]any, rid string) {
	t.Helper()
	got, has := m["rid"]
	if rid == "" && has {
		t.Errorf("frame %v carries rid %v, want none", m, got)
	}
	if rid != "" && got != rid {
		t.Errorf("frame %v: rid %v, want %q", m, got, rid)
	}
}

// quiet asserts that no frame arrives for d (only to check that something
// does NOT happen).
func (c *cfConn) quiet(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		f, ok := c.Quiet(max(time.Until(deadline), 0))
		if !ok {
			return
		}
		if !cfSkipped(f) {
			c.t.Fatalf("%sunexpected frame %s", c.label(), f.Raw)
		}
	}
}

// ping round-trips a ping: the connection is open and every earlier reply
// has been read.
func (c *cfConn) ping() {
	c.t.Helper()
	c.send(`{"type":"ping","rid":"sync"}`)
	if p := c.next(); p["type"] != "pong" || p["rid"] != "sync" {
		c.t.Fatalf("%swant pong sync, got %v", c.label(), p)
	}
}

func (c *cfConn) waitClose(within time.Duration) int {
	c.t.Helper()
	if !c.WaitClosed(within) {
		c.t.Fatalf("%sconnection not closed within %v", c.label(), within)
	}
	return c.closeCode()
}

func (c *cfConn) isClosed() bool { return c.Closed() }

// closeCode is the server's close code: -1 while open, 1006 when the
// connection ended without a close frame.
func (c *cfConn) closeCode() int {
	code, err := c.CloseCode()
	switch {
	case code != 0:
		return code
	case err == nil:
		return -1
	}
	return 1006
}

// sendMsg sends a message and returns its sent frame.
func (c *cfConn) sendMsg(cmid string, to, group int64, body string) map[string]any {
	c.t.Helper()
	f := map[string]any{"type": "send", "cmid": cmid, "body": body}
	if to != 0 {
		f["to"] = to
	}
	if group != 0 {
		f["group"] = group
	}
	c.send(f)
	s := c.next()
	if s["type"] != "sent" || s["cmid"] != cmid {
		c.t.Fatalf("%ssend %s: got %v", c.label(), cmid, s)
	}
	return s
}

func cfD(a, b int64) string {
	if a > b {
		a, b = b, a
	}
	return fmt.Sprintf("d:%d:%d", a, b)
}

func cfG(g int64) string { return fmt.Sprintf("g:%d", g) }

// ---- raw TCP client ----

// cfRaw is wstest.Raw with fatal errors.
type cfRaw struct {
	t testing.TB
	*wstest.Raw
}

func cfDialRaw(t testing.TB, addr string) *cfRaw {
	t.Helper()
	r, err := wstest.DialRaw(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &cfRaw{t: t, Raw: r}
}

// handshake sends an upgrade for /ws?q and returns the response head.
func (r *cfRaw) handshake(q string) string {
	r.t.Helper()
	h, _ := r.Handshake(q)
	return h
}

func (r *cfRaw) upgrade(q string) {
	r.t.Helper()
	if h := r.handshake(q); !strings.HasPrefix(h, "HTTP/1.1 101") {
		_ = r.SetReadDeadline(time.Now().Add(time.Second))
		body := make([]byte, 512)
		n, _ := r.R.Read(body)
		r.t.Fatalf("upgrade of /ws?%s failed: %q %q", q, h, body[:n])
	}
}

// head reads an HTTP response head.
func (r *cfRaw) head() string {
	h, _ := r.Head(5 * time.Second)
	return h
}

// frame writes one client frame, masked unless unmasked.
func (r *cfRaw) frame(fin bool, op byte, payload []byte, masked bool) {
	r.t.Helper()
	if err := r.WriteFrame(fin, op, payload, masked, [4]byte{7, 1, 9, 3}); err != nil {
		r.t.Fatalf("write frame: %v", err)
	}
}

// readFrame reads one server frame within d.
func (r *cfRaw) readFrame(d time.Duration) (op byte, payload []byte, err error) {
	return r.ReadFrame(d)
}

// expectClose reads frames until a close frame (within d) and returns its
// code (1005 without one); it then checks that TCP closes within 1 s.
func (r *cfRaw) expectClose(d time.Duration) int {
	r.t.Helper()
	return r.ExpectClose(r.t, d, time.Second+cfSlack())
}

// ---- process inspection ----

// cfVmRSS returns the VmRSS of pid in KiB.
func cfVmRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// cfTCPState returns the state (hex, e.g. "01" ESTABLISHED) and queue sizes
// of the IPv4 socket local→remote in /proc/net/tcp; ok false when absent.
func cfTCPState(t testing.TB, local, remote *net.TCPAddr) (state string, txq, rxq int64, ok bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	enc := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	l, r := enc(local), enc(remote)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[1] != l || f[2] != r {
			continue
		}
		q := strings.SplitN(f[4], ":", 2)
		tx, _ := strconv.ParseInt(q[0], 16, 64)
		rx, _ := strconv.ParseInt(q[1], 16, 64)
		return f[3], tx, rx, true
	}
	return "", 0, 0, false
}

// cfLag measures how late this process's own timers fire while a timing
// check runs (testserver.Lag): the allowed lateness is 100 ms + cfSlack()
// + the lag observed here.
func cfLag() func() time.Duration { return testserver.Lag() }

// ---- groups, version 2 (PROTOCOL §13) ----

// expectSys reads the next frame, which must be the push of a group
// change's system message with event ev (kind "system", a "sys:" cmid, a
// body with that event), acks it, and returns it with the body decoded
// under "event_body".
func (c *cfConn) expectSys(ev string) map[string]any {
	c.t.Helper()
	m := c.expect("msg")
	c.checkSys(m, ev)
	return m
}

// checkSys checks that m is the system message of event ev and acks it.
func (c *cfConn) checkSys(m map[string]any, ev string) {
	c.t.Helper()
	var body map[string]any
	cmid, _ := m["cmid"].(string)
	if m["kind"] != "system" || !strings.HasPrefix(cmid, "sys:") || json.Unmarshal([]byte(fmt.Sprint(m["body"])), &body) != nil || body["event"] != ev {
		c.t.Fatalf("%swant the system message of a %q event, got %v", c.label(), ev, m)
	}
	m["event_body"] = body
	c.send(map[string]any{"type": "ack", "conv": m["conv"], "seq": m["seq"]})
}

// groupCall sends a group request and returns its reply (a group or an
// error frame). When ev is set, the request's change stores a system
// message with that event, which this connection gets pushed too, before
// or after the reply (PROTOCOL §13 leaves their order open): it is
// checked, acked and returned as push.
func (c *cfConn) groupCall(f map[string]any, ev string) (reply, push map[string]any) {
	c.t.Helper()
	c.send(f)
	for reply == nil || ev != "" && push == nil {
		m := c.next()
		switch {
		case m["type"] == "msg" && ev != "" && push == nil:
			c.checkSys(m, ev)
			push = m
		case (m["type"] == "group" || m["type"] == "error") && reply == nil:
			reply = m
			if m["type"] == "error" && ev != "" {
				c.t.Fatalf("%s%v: error %v, want a %q change", c.label(), f, m, ev)
			}
		default:
			c.t.Fatalf("%s%v: unexpected frame %v", c.label(), f, m)
		}
	}
	return reply, push
}

// group is groupCall for a request that must succeed; it returns the
// group reply.
func (c *cfConn) group(f map[string]any, ev string) map[string]any {
	c.t.Helper()
	g, _ := c.groupCall(f, ev)
	if g["type"] != "group" {
		c.t.Fatalf("%s%v: got %v", c.label(), f, g)
	}
	return g
}
