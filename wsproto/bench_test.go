package wsproto

import (
	"runtime"
	"strings"
	"testing"
)

// cpuMeter reports, next to the wall-clock ns/op, the CPU time the
// benchmark's thread spent per op ("cpu-ns/op", Linux only). On a shared
// machine wall-clock time includes the time the thread waited for a CPU;
// CPU time does not. Call it right before the loop and the returned stop
// right after.
func cpuMeter(b *testing.B) (stop func()) {
	runtime.LockOSThread()
	start, ok := threadCPU()
	return func() {
		end, ok2 := threadCPU()
		runtime.UnlockOSThread()
		if ok && ok2 && b.N > 0 {
			b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

// benchJSON is a typical 100-byte application frame.
var benchJSON = func() string {
	s := `{"type":"send","cmid":"c-1042","to":2,"body":"` + strings.Repeat("x", 100) + `"}`
	return s[:99] + "}"
}()

// BenchmarkParseMasked100 parses one masked 100-byte text frame (header,
// limit check, unmask in place, UTF-8 validation). Each iteration first
// copies the 106 masked bytes back into the buffer, since the previous
// iteration unmasked them in place; that copy is included in the time.
func BenchmarkParseMasked100(b *testing.B) {
	frame := stream(text(benchJSON))
	if len(benchJSON) != 100 || len(frame) != 106 {
		b.Fatalf("frame of %d bytes, payload %d", len(frame), len(benchJSON))
	}
	buf := make([]byte, len(frame))
	p := &Parser{MaxMessage: DefaultMaxMessage}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	stop := cpuMeter(b)
	for b.Loop() {
		copy(buf, frame)
		f, n, err := p.Next(buf)
		if err != nil || n != len(frame) || len(f.Payload) != 100 {
			b.Fatalf("Next = %d, %v", n, err)
		}
	}
	stop()
}

// BenchmarkParseFragmented4 parses a 100-byte text message sent as four
// fragments (allocates the fragment buffer once per message).
func BenchmarkParseFragmented4(b *testing.B) {
	s := benchJSON
	frames := stream(text(s[:25]).first(), cont(s[25:50]).first(), cont(s[50:75]).first(), cont(s[75:]))
	buf := make([]byte, len(frames))
	p := &Parser{MaxMessage: DefaultMaxMessage}
	b.SetBytes(int64(len(frames)))
	b.ReportAllocs()
	stop := cpuMeter(b)
	for b.Loop() {
		copy(buf, frames)
		rest := buf
		for {
			f, n, err := p.Next(rest)
			if err != nil || n == 0 {
				b.Fatalf("Next = %d, %v", n, err)
			}
			rest = rest[n:]
			if f.Op == OpText {
				break
			}
		}
	}
	stop()
}

// BenchmarkEncodeText encodes a 100-byte server text frame into a reused
// buffer.
func BenchmarkEncodeText(b *testing.B) {
	payload := []byte(benchJSON)
	dst := make([]byte, 0, 256)
	b.SetBytes(int64(len(payload) + 2))
	b.ReportAllocs()
	stop := cpuMeter(b)
	for b.Loop() {
		dst = AppendFrame(dst[:0], OpText, payload)
	}
	stop()
	if len(dst) != 102 {
		b.Fatalf("frame of %d bytes", len(dst))
	}
}

// benchRequest is a browser's upgrade request (Chrome-like headers).
var benchRequest = []byte("GET /ws?token=good&device=laptop-1 HTTP/1.1\r\n" +
	"Host: chat.example.com:7070\r\n" +
	"Connection: Upgrade\r\n" +
	"Pragma: no-cache\r\n" +
	"Cache-Control: no-cache\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n" +
	"Upgrade: websocket\r\n" +
	"Origin: https://ok.example\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"Accept-Encoding: gzip, deflate, br, zstd\r\n" +
	"Accept-Language: en-US,en;q=0.9\r\n" +
	"Sec-WebSocket-Key: " + rfcKey + "\r\n" +
	"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" +
	"\r\n")

// BenchmarkHandshake is the server's whole handshake: RequestEnd over the
// buffered request, then Upgrade with an Origin check and a token check
// (a map-free stub standing in for token verification).
func BenchmarkHandshake(b *testing.B) {
	u := &Upgrader{
		Path:        "/ws",
		AllowOrigin: func(o string) bool { return o == "https://ok.example" },
		Authorize: func(r *Request) bool {
			r.UID = 42
			return r.Token == "good"
		},
	}
	b.SetBytes(int64(len(benchRequest)))
	b.ReportAllocs()
	stop := cpuMeter(b)
	for b.Loop() {
		end := RequestEnd(benchRequest)
		var r Request
		resp, status := u.Upgrade(benchRequest[:end], &r)
		if status != 101 || len(resp) == 0 || r.UID != 42 {
			b.Fatalf("status %d", status)
		}
	}
	stop()
}
