package wsproto

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
)

// fuzzMax is small so that the fuzzer reaches the 1009 paths.
const fuzzMax = 1024

// FuzzParser: on any input, Next never panics, never reports n outside
// [0, len(buf)], never touches buf while asking for more, and the result
// (events, fragments absorbed, error code) is the same whether the input
// arrives whole, split at cut, or in tiny pieces (one byte at a time for
// inputs up to 512 bytes).
func FuzzParser(f *testing.F) {
	for _, s := range splitStreams() {
		f.Add(s, uint16(len(s)/2))
	}
	f.Add(stream(text("Hello")), uint16(3))
	f.Add(stream(text(rep(fuzzMax)).first()), uint16(2))
	f.Add(stream(text(rep(fuzzMax-1)).first(), ping("x"), cont("a")), uint16(1030))
	f.Add(stream(text(rep(fuzzMax-1)).first(), cont("ab")), uint16(7))
	f.Add(stream(closeFrame(1000, "bye"), closeFrame(999, "")), uint16(4))
	f.Add(stream(cframe{op: OpClose, payload: []byte{1}}), uint16(1))
	f.Add(cat(bits("1 000 0001 1 1111111"), []byte{0x80, 0, 0, 0, 0, 0, 0, 1}), uint16(9))
	f.Add(withMask(bits("1 100 0001 1 0000000")), uint16(1))
	f.Add(cat(bits("1 000 0001 0 0000010"), []byte("hi")), uint16(0))
	f.Add(stream(text("\xe2\x82").first(), cont("\xac")), uint16(5))

	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		fail := func(format string, args ...any) { t.Fatalf(format, args...) }
		whole := feed(&Parser{MaxMessage: fuzzMax}, [][]byte{data}, fail)
		if len(data) == 0 {
			return
		}
		i := int(cut) % len(data)
		split := feed(&Parser{MaxMessage: fuzzMax}, [][]byte{data[:i], data[i:]}, fail)
		if !sameResult(whole, split) {
			t.Fatalf("split at %d:\n got %+v\nwant %+v", i, split, whole)
		}
		// Byte by byte for short inputs; longer ones in pieces of 1 to 8
		// bytes (cheaper, so the fuzzer and its minimizer stay fast).
		pieces := bytewise(data)
		if len(data) > 512 {
			pieces = nil
			for rest, k := data, int(cut); len(rest) > 0; k++ {
				n := min(len(rest), 1+k%8)
				pieces, rest = append(pieces, rest[:n]), rest[n:]
			}
		}
		bw := feed(&Parser{MaxMessage: fuzzMax}, pieces, fail)
		if !sameResult(whole, bw) {
			t.Fatalf("in %d pieces:\n got %+v\nwant %+v", len(pieces), bw, whole)
		}
		for _, e := range whole.Events {
			switch e.Op {
			case OpText, OpBinary:
				if len(e.Payload) > fuzzMax {
					t.Fatalf("%d-byte message passed a %d limit", len(e.Payload), fuzzMax)
				}
			case OpPing, OpPong, OpClose:
				if len(e.Payload) > 125 {
					t.Fatalf("%d-byte control payload", len(e.Payload))
				}
			default:
				t.Fatalf("event with opcode %d", e.Op)
			}
		}
	})
}

// FuzzHandshake: on any input, RequestEnd and Upgrade never panic;
// RequestEnd finds exactly the first "\r\n\r\n" within MaxRequestHead;
// Upgrade leaves req alone, answers with one of the PROTOCOL statuses and
// a well-formed HTTP response (a correct Sec-WebSocket-Accept on 101, a
// JSON error body otherwise), calls Authorize only with a non-empty token
// and a valid device, and is deterministic.
func FuzzHandshake(f *testing.F) {
	f.Add(upgrade("/ws"))
	f.Add(upgrade("/ws?token=good&device=phone"))
	f.Add(upgrade("/ws?token=bad&device=%41%42"))
	f.Add(upgrade("/ws?token=good", "Origin: https://ok.example"))
	f.Add(upgrade("/ws", "Origin: https://evil.example"))
	f.Add(upgrade("/ws?device=" + rep(70)))
	f.Add(upgrade("/other"))
	f.Add(upgrade("http://h/ws?token=good#frag"))
	f.Add(request("GET /ws HTTP/1.1", "Host: x"))
	f.Add(request("POST /ws HTTP/1.1", wsHeaders...))
	f.Add(request("GET /ws HTTP/1.1", without("Sec-WebSocket-Version", "Sec-WebSocket-Version: 12")...))
	f.Add(upgrade("/ws", "Sec-WebSocket-Extensions: permessage-deflate", "Sec-WebSocket-Protocol: chat"))
	f.Add(cat(upgrade("/ws"), stream(text("after"))))
	f.Add([]byte("GET /ws HTTP/1.1\n\n"))
	f.Add([]byte("\r\n\r\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		end := RequestEnd(data)
		first := bytes.Index(data, headEnd)
		switch {
		case end > 0:
			if end != first+4 || end > MaxRequestHead {
				t.Fatalf("RequestEnd = %d, first terminator ends at %d", end, first+4)
			}
			if got := RequestEnd(data[:end-1]); got != 0 {
				t.Fatalf("RequestEnd of a prefix = %d, want 0", got)
			}
		case end == 0:
			if len(data) >= MaxRequestHead || first >= 0 {
				t.Fatalf("RequestEnd = 0 for %d bytes, terminator at %d", len(data), first)
			}
		case end == -1:
			if len(data) < MaxRequestHead || (first >= 0 && first+4 <= MaxRequestHead) {
				t.Fatalf("RequestEnd = -1 for %d bytes, terminator at %d", len(data), first)
			}
		default:
			t.Fatalf("RequestEnd = %d", end)
		}
		req := data
		if end > 0 {
			req = data[:end]
		}

		var calls atomic.Int32
		u := testUpgrader(&calls)
		authorize := u.Authorize
		u.Authorize = func(r *Request) bool {
			if len(r.Device) > MaxDevice {
				t.Fatalf("Authorize called with a %d-byte device", len(r.Device))
			}
			return authorize(r)
		}
		orig := bytes.Clone(req)
		var r Request
		resp, status := u.Upgrade(req, &r)
		if !bytes.Equal(req, orig) {
			t.Fatal("Upgrade modified req")
		}
		if !slices.Contains([]int{101, 400, 401, 403, 404}, status) {
			t.Fatalf("status %d", status)
		}
		if calls.Load() > 1 || (calls.Load() == 1) != (status == 101 && r.Token != "" || status == 401) {
			t.Fatalf("Authorize called %d times for status %d, request %+v", calls.Load(), status, r)
		}
		resp2, status2 := u.Upgrade(req, &Request{})
		if status2 != status || !bytes.Equal(resp, resp2) {
			t.Fatalf("second Upgrade differs: %d vs %d", status2, status)
		}

		br := bufio.NewReader(bytes.NewReader(resp))
		hr, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
		if err != nil || hr.StatusCode != status {
			t.Fatalf("response (status %d) does not parse: %v\n%q", status, err, resp)
		}
		if status != 101 {
			body, err := io.ReadAll(hr.Body)
			var e struct{ Error, Message string }
			if err != nil || json.Unmarshal(body, &e) != nil || e.Error == "" || !hr.Close {
				t.Fatalf("bad error response %q", resp)
			}
			return
		}
		if r.Origin != "" && r.Origin != "https://ok.example" {
			t.Fatalf("101 for origin %q", r.Origin)
		}
		// The accept key must match the request's key when net/http
		// agrees there is exactly one.
		hreq, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(req)))
		if err == nil {
			if keys := hreq.Header.Values("Sec-WebSocket-Key"); len(keys) == 1 {
				if got, want := hr.Header.Get("Sec-WebSocket-Accept"), expectedAccept(keys[0]); got != want {
					t.Fatalf("accept %q, want %q for key %q", got, want, keys[0])
				}
			}
		}
	})
}
