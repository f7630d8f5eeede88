package wsproto

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

const rfcKey = "dGhlIHNhbXBsZSBub25jZQ==" // RFC 6455 §1.3; accept s3pPLMBiTxaQ9kYGzzhZRbK+xOo=

// wsHeaders are the headers of a valid upgrade request.
var wsHeaders = []string{
	"Host: example.com",
	"Upgrade: websocket",
	"Connection: Upgrade",
	"Sec-WebSocket-Key: " + rfcKey,
	"Sec-WebSocket-Version: 13",
}

// request builds a request head from a request line and header lines.
func request(line string, headers ...string) []byte {
	return []byte(line + "\r\n" + strings.Join(append(headers, ""), "\r\n") + "\r\n")
}

// upgrade builds a valid upgrade request for target plus extra headers.
func upgrade(target string, extra ...string) []byte {
	return request("GET "+target+" HTTP/1.1", append(append([]string(nil), wsHeaders...), extra...)...)
}

// without returns wsHeaders minus the header named name, plus extra.
func without(name string, extra ...string) []string {
	var out []string
	for _, h := range wsHeaders {
		if !strings.HasPrefix(h, name+":") {
			out = append(out, h)
		}
	}
	return append(out, extra...)
}

// expectedAccept computes Sec-WebSocket-Accept independently (RFC 6455 §4.2.2).
func expectedAccept(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// testUpgrader allows Origins "https://ok.example" and token "good" (UID 42),
// counting Authorize calls.
func testUpgrader(calls *atomic.Int32) *Upgrader {
	return &Upgrader{
		Path:        "/ws",
		AllowOrigin: func(o string) bool { return o == "https://ok.example" },
		Authorize: func(r *Request) bool {
			calls.Add(1)
			if r.Token == "" {
				panic("Authorize called with an empty token")
			}
			if r.Token == "good" || r.Token == "a b/c+" {
				r.UID = 42
				return true
			}
			r.UID = 7 // must not survive a rejection
			return false
		},
	}
}

// checkResponse parses resp as an HTTP response and verifies its shape for
// status; it returns the parsed response.
func checkResponse(t *testing.T, resp []byte, status int, key string) *http.Response {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(resp))
	hr, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("response does not parse: %v\n%s", err, resp)
	}
	if hr.StatusCode != status {
		t.Fatalf("response status %d, want %d\n%s", hr.StatusCode, status, resp)
	}
	if status == http.StatusSwitchingProtocols {
		if br.Buffered() != 0 {
			t.Errorf("%d bytes after the 101 head", br.Buffered())
		}
		if !strings.EqualFold(hr.Header.Get("Upgrade"), "websocket") || !strings.EqualFold(hr.Header.Get("Connection"), "upgrade") {
			t.Errorf("101 without Upgrade/Connection headers: %v", hr.Header)
		}
		if got, want := hr.Header.Get("Sec-WebSocket-Accept"), expectedAccept(key); got != want {
			t.Errorf("Sec-WebSocket-Accept %q, want %q", got, want)
		}
		for _, h := range []string{"Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"} {
			if v := hr.Header.Get(h); v != "" {
				t.Errorf("negotiated %s: %q", h, v)
			}
		}
		return hr
	}
	// net/http consumes "Connection: close" into hr.Close; check the bytes too.
	if !hr.Close || !bytes.Contains(resp, []byte("\r\nConnection: close\r\n")) {
		t.Errorf("error response without Connection: close:\n%s", resp)
	}
	if ct := hr.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	body, err := io.ReadAll(hr.Body)
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	var e struct{ Error, Message string }
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, body)
	}
	wantCode := map[int]string{400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}[status]
	if e.Error != wantCode || e.Message == "" {
		t.Errorf("body %s, want error %q and a message", body, wantCode)
	}
	return hr
}

func TestUpgrade(t *testing.T) {
	long := rep(MaxDevice + 1)
	tests := []struct {
		name   string
		req    []byte
		status int
		calls  int32   // Authorize calls
		want   Request // checked on 101
		header string  // "Name: value" expected in the response
	}{
		{name: "valid", req: upgrade("/ws"), status: 101},
		{name: "valid with token and device", req: upgrade("/ws?token=good&device=phone-1"), status: 101, calls: 1, want: Request{Token: "good", Device: "phone-1", UID: 42}},
		{name: "query is URL-decoded", req: upgrade("/ws?device=my%20ph%C3%B6ne&token=a+b%2Fc%2B"), status: 101, calls: 1, want: Request{Token: "a b/c+", Device: "my phöne", UID: 42}},
		{name: "encoded parameter names", req: upgrade("/ws?%74oken=good"), status: 101, calls: 1, want: Request{Token: "good", UID: 42}},
		{name: "first token wins", req: upgrade("/ws?token=good&token=bad"), status: 101, calls: 1, want: Request{Token: "good", UID: 42}},
		{name: "empty token counts as none", req: upgrade("/ws?token=&device=d"), status: 101, want: Request{Device: "d"}},
		{name: "other parameters are ignored, even malformed", req: upgrade("/ws?x=%zz&token=good&y"), status: 101, calls: 1, want: Request{Token: "good", UID: 42}},
		{name: "allowed origin", req: upgrade("/ws", "Origin: https://ok.example"), status: 101, want: Request{Origin: "https://ok.example"}},
		{name: "empty origin counts as none", req: upgrade("/ws", "Origin: "), status: 101},
		{name: "absolute-form URI", req: upgrade("http://example.com/ws?token=good"), status: 101, calls: 1, want: Request{Token: "good", UID: 42}},
		{name: "lowercase header names and values", req: request("GET /ws HTTP/1.1", "host: x", "upgrade: WebSocket", "connection: keep-alive, upgrade", "sec-websocket-key: "+rfcKey, "sec-websocket-version: 13"), status: 101},
		{name: "extensions and subprotocols are not negotiated", req: upgrade("/ws", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits", "Sec-WebSocket-Protocol: chat, superchat"), status: 101},
		{name: "device of exactly 64 bytes", req: upgrade("/ws?device=" + rep(MaxDevice)), status: 101, want: Request{Device: rep(MaxDevice)}},
		{name: "device of 64 bytes after decoding", req: upgrade("/ws?device=" + strings.Repeat("%61", MaxDevice)), status: 101, want: Request{Device: rep(MaxDevice)}},

		// 1. Path (404), before anything else.
		{name: "other path", req: upgrade("/other"), status: 404},
		{name: "other path, not an upgrade", req: request("GET /other HTTP/1.1", "Host: x"), status: 404},
		{name: "other path, POST", req: request("POST /api/login HTTP/1.1", "Host: x", "Content-Length: 0"), status: 404},
		{name: "other path, bad origin, bad token", req: upgrade("/x?token=bad", "Origin: https://evil.example"), status: 404},
		{name: "root", req: upgrade("/"), status: 404},
		{name: "trailing slash", req: upgrade("/ws/"), status: 404},
		{name: "prefix", req: upgrade("/wsx"), status: 404},
		{name: "case matters", req: upgrade("/WS"), status: 404},
		{name: "absolute-form, other path", req: upgrade("http://example.com/other"), status: 404},
		{name: "malformed request line", req: []byte("GARBAGE\r\n\r\n"), status: 400},

		// 2. Upgrade (400).
		{name: "plain GET", req: request("GET /ws HTTP/1.1", "Host: x"), status: 400},
		{name: "no Upgrade header", req: request("GET /ws HTTP/1.1", without("Upgrade")...), status: 400},
		{name: "Upgrade: h2c", req: request("GET /ws HTTP/1.1", without("Upgrade", "Upgrade: h2c")...), status: 400},
		{name: "no Connection header", req: request("GET /ws HTTP/1.1", without("Connection")...), status: 400},
		{name: "Connection: keep-alive", req: request("GET /ws HTTP/1.1", without("Connection", "Connection: keep-alive")...), status: 400},
		{name: "no key", req: request("GET /ws HTTP/1.1", without("Sec-WebSocket-Key")...), status: 400},
		{name: "short key", req: request("GET /ws HTTP/1.1", without("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ=")...), status: 400},
		{name: "no version", req: request("GET /ws HTTP/1.1", without("Sec-WebSocket-Version")...), status: 400},
		{name: "version 8", req: request("GET /ws HTTP/1.1", without("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")...), status: 400, header: "Sec-Websocket-Version: 13"},
		{name: "no Host", req: request("GET /ws HTTP/1.1", without("Host")...), status: 400},
		{name: "POST", req: request("POST /ws HTTP/1.1", wsHeaders...), status: 400},
		{name: "HTTP/1.0", req: request("GET /ws HTTP/1.0", wsHeaders...), status: 400},
		{name: "header line without colon", req: upgrade("/ws", "nonsense"), status: 400},
		{name: "truncated head", req: upgrade("/ws")[:40], status: 400},
		{name: "not an upgrade beats a bad origin", req: request("GET /ws HTTP/1.1", "Host: x", "Origin: https://evil.example"), status: 400},
		{name: "not an upgrade beats a bad token", req: request("GET /ws?token=bad HTTP/1.1", "Host: x"), status: 400},

		// 3. Origin (403).
		{name: "origin not allowed", req: upgrade("/ws", "Origin: https://evil.example"), status: 403},
		{name: "duplicate Origin: the first counts", req: upgrade("/ws", "Origin: https://evil.example", "Origin: https://ok.example"), status: 403},
		{name: "bad origin beats a long device", req: upgrade("/ws?device="+long, "Origin: https://evil.example"), status: 403},
		{name: "bad origin beats a bad token", req: upgrade("/ws?token=bad", "Origin: https://evil.example"), status: 403},
		{name: "bad origin beats a malformed token", req: upgrade("/ws?token=%zz", "Origin: https://evil.example"), status: 403},

		// 4. Device (400).
		{name: "device of 65 bytes", req: upgrade("/ws?device=" + long), status: 400},
		{name: "device of 65 bytes after decoding", req: upgrade("/ws?device=" + strings.Repeat("%61", MaxDevice+1)), status: 400},
		{name: "long device beats a bad token", req: upgrade("/ws?token=bad&device=" + long), status: 400},
		{name: "malformed device encoding", req: upgrade("/ws?device=%4"), status: 400},
		{name: "malformed token encoding", req: upgrade("/ws?token=go%zzod"), status: 400},

		// 5. Token (401).
		{name: "bad token", req: upgrade("/ws?token=bad"), status: 401, calls: 1},
		{name: "bad token with a good origin and device", req: upgrade("/ws?token=bad&device=d", "Origin: https://ok.example"), status: 401, calls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			u := testUpgrader(&calls)
			orig := bytes.Clone(tt.req)
			r := Request{Token: "stale", UID: 99}
			resp, status := u.Upgrade(tt.req, &r)
			if status != tt.status {
				t.Fatalf("status %d, want %d\n%s", status, tt.status, resp)
			}
			hr := checkResponse(t, resp, tt.status, rfcKey)
			if tt.header != "" {
				name, value, _ := strings.Cut(tt.header, ": ")
				if got := hr.Header.Get(name); got != value {
					t.Errorf("header %s = %q, want %q", name, got, value)
				}
			}
			if got := calls.Load(); got != tt.calls {
				t.Errorf("Authorize called %d times, want %d", got, tt.calls)
			}
			if status == 101 && r != tt.want {
				t.Errorf("request %+v, want %+v", r, tt.want)
			}
			if status != 101 && r.UID != 0 {
				t.Errorf("UID %d left after a rejection", r.UID)
			}
			if !bytes.Equal(tt.req, orig) {
				t.Error("Upgrade modified req")
			}
		})
	}
}

func TestUpgradeNilHooks(t *testing.T) {
	u := &Upgrader{Path: "/ws"}
	var r Request
	if _, status := u.Upgrade(upgrade("/ws", "Origin: https://any.example"), &r); status != 101 {
		t.Errorf("nil AllowOrigin: status %d, want 101 (any origin)", status)
	}
	if _, status := u.Upgrade(upgrade("/ws?token=x"), &r); status != 401 {
		t.Errorf("nil Authorize with a token: status %d, want 401", status)
	}
	if _, status := u.Upgrade(upgrade("/ws"), &r); status != 101 {
		t.Errorf("nil Authorize without a token: status %d, want 101", status)
	}
}

func TestRequestEnd(t *testing.T) {
	full := upgrade("/ws")
	if got := RequestEnd(full); got != len(full) {
		t.Errorf("complete head: %d, want %d", got, len(full))
	}
	for i := range len(full) {
		if got := RequestEnd(full[:i]); got != 0 {
			t.Fatalf("prefix of %d bytes: %d, want 0", i, got)
		}
	}
	withFrame := cat(full, stream(text("hi")))
	if got := RequestEnd(withFrame); got != len(full) {
		t.Errorf("head followed by a frame: %d, want %d", got, len(full))
	}

	// Exactly MaxRequestHead bytes is accepted; one more is refused,
	// whether or not the terminator has arrived.
	pad := func(n int) []byte {
		h := request("GET /ws HTTP/1.1", "Host: x", "X-Pad: ")
		filler := n - len(h)
		return request("GET /ws HTTP/1.1", "Host: x", "X-Pad: "+rep(filler))
	}
	exact := pad(MaxRequestHead)
	if len(exact) != MaxRequestHead {
		t.Fatalf("test head is %d bytes", len(exact))
	}
	if got := RequestEnd(exact); got != MaxRequestHead {
		t.Errorf("head of exactly MaxRequestHead: %d, want %d", got, MaxRequestHead)
	}
	over := pad(MaxRequestHead + 1)
	if got := RequestEnd(over); got != -1 {
		t.Errorf("head of MaxRequestHead+1: %d, want -1", got)
	}
	if got := RequestEnd(over[:MaxRequestHead]); got != -1 {
		t.Errorf("unterminated MaxRequestHead bytes: %d, want -1", got)
	}
	if got := RequestEnd(over[:MaxRequestHead-1]); got != 0 {
		t.Errorf("unterminated MaxRequestHead-1 bytes: %d, want 0", got)
	}
	if a := testing.AllocsPerRun(100, func() { RequestEnd(full) }); a != 0 {
		t.Errorf("RequestEnd: %v allocs", a)
	}
}

// TestHandshakeThenFrames is the server's sequence: request and first
// frame arrive in one read; RequestEnd splits them, Upgrade sees only the
// head, and the parser gets the frame.
func TestHandshakeThenFrames(t *testing.T) {
	buf := cat(upgrade("/ws?token=good"), stream(text("first")))
	end := RequestEnd(buf)
	var calls atomic.Int32
	var r Request
	resp, status := testUpgrader(&calls).Upgrade(buf[:end], &r)
	if status != 101 || r.UID != 42 {
		t.Fatalf("status %d, request %+v\n%s", status, r, resp)
	}
	checkResponse(t, resp, 101, rfcKey)
	f, n, err := (&Parser{}).Next(buf[end:])
	if err != nil || n != len(buf)-end || string(f.Payload) != "first" {
		t.Fatalf("first frame: %v %d %v", f, n, err)
	}
}

func TestAppendHTTPError(t *testing.T) {
	tests := []struct {
		status int
		code   string
	}{
		{400, "bad_request"}, {401, "unauthorized"}, {403, "forbidden"}, {404, "not_found"},
		{429, "rate_limited"}, {431, "request_header_fields_too_large"}, {500, "internal"},
		{503, "service_unavailable"}, {599, "http_error"},
	}
	for _, tt := range tests {
		msg := `say "hi"\ ` + "\x01 ünï"
		resp := AppendHTTPError([]byte("x"), tt.status, msg)[1:]
		hr, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(resp)), nil)
		if err != nil {
			t.Fatalf("%d: %v", tt.status, err)
		}
		body, _ := io.ReadAll(hr.Body)
		var e struct{ Error, Message string }
		if err := json.Unmarshal(body, &e); err != nil {
			t.Fatalf("%d: body %s: %v", tt.status, body, err)
		}
		if hr.StatusCode != tt.status || e.Error != tt.code || e.Message != msg || !hr.Close {
			t.Errorf("%d: got status %d, body %s, close %v", tt.status, hr.StatusCode, body, hr.Close)
		}
	}
}

// TestUpgradeConcurrent runs handshakes from many goroutines on one
// Upgrader (the pooled per-call state must not leak between them); run
// with -race.
func TestUpgradeConcurrent(t *testing.T) {
	var calls atomic.Int32
	u := testUpgrader(&calls)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				var r Request
				var req []byte
				want := 101
				switch (g + i) % 3 {
				case 0:
					req = upgrade("/ws?token=good&device=d" + string(rune('a'+g)))
				case 1:
					req, want = upgrade("/ws?token=bad"), 401
				case 2:
					req, want = upgrade("/ws", "Origin: https://evil.example"), 403
				}
				_, status := u.Upgrade(req, &r)
				if status != want {
					t.Errorf("goroutine %d: status %d, want %d", g, status, want)
					return
				}
				if want == 101 && (r.UID != 42 || r.Device != "d"+string(rune('a'+g))) {
					t.Errorf("goroutine %d: request %+v", g, r)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestUpgradeConcurrentNoTokenCarryOver interleaves, on many goroutines,
// tokenless upgrades with token upgrades and with requests gobwas rejects
// before or after OnRequest (bad method, HTTP/1.0, a malformed header): a
// tokenless request must never see a token of an earlier request through
// the pooled handshake (401), and never reach Authorize. Run with -race.
func TestUpgradeConcurrentNoTokenCarryOver(t *testing.T) {
	var calls atomic.Int32
	u := testUpgrader(&calls)
	cases := []struct {
		req    []byte
		status int
	}{
		{upgrade("/ws?token=good&device=d1"), 101},
		{upgrade("/ws?token=bad"), 401},
		{upgrade("/ws"), 101},
		{request("POST /ws?token=bad HTTP/1.1", wsHeaders...), 400},
		{request("GET /ws?token=bad HTTP/1.0", wsHeaders...), 400},
		{request("GET /ws?token=bad HTTP/1.1", "Host: x", "no colon here"), 400},
		{upgrade("/ws?token=&device="), 101},
		{upgrade("/ws?device=d2"), 101},
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				tc := cases[(g+i)%len(cases)]
				var r Request
				_, status := u.Upgrade(tc.req, &r)
				if status != tc.status {
					t.Errorf("goroutine %d, %q: status %d, want %d", g, tc.req[:bytes.IndexByte(tc.req, '\r')], status, tc.status)
					return
				}
				if status == 101 && r.Token == "" && r.UID != 0 {
					t.Errorf("goroutine %d: tokenless request got UID %d", g, r.UID)
					return
				}
			}
		}()
	}
	wg.Wait()
}
