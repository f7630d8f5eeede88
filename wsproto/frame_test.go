package wsproto

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"unsafe"
)

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func rep(n int) string { return strings.Repeat("a", n) }

// withMask appends the test masking key to a bare header built with bits.
func withMask(hdr []byte) []byte { return cat(hdr, testMask[:]) }

func TestParserTable(t *testing.T) {
	const max = 1000
	ev := func(op OpCode, p string) event { return event{Op: op, Payload: p} }
	cl := func(code uint16, reason string) event { return event{Op: OpClose, Payload: reason, Code: code} }
	tests := []struct {
		name  string
		in    []byte
		max   int // 0: use the const max above
		want  []event
		frags int
		err   *CloseError
		rest  int
	}{
		// Valid frames.
		{
			name: "masked text, RFC 6455 §5.7 example bytes",
			in:   []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
			want: []event{ev(OpText, "Hello")},
		},
		{
			name: "masked text, bits",
			in:   cat(withMask(bits("1 000 0001 1 0000101")), text("Hello").bytes()[6:]),
			want: []event{ev(OpText, "Hello")},
		},
		{name: "empty text", in: stream(text("")), want: []event{ev(OpText, "")}},
		{name: "binary is returned to the caller", in: stream(bin("\x00\xff\xfe")), want: []event{ev(OpBinary, "\x00\xff\xfe")}},
		{name: "ping with payload", in: stream(ping("are you there")), want: []event{ev(OpPing, "are you there")}},
		{name: "empty ping", in: withMask(bits("1 000 1001 1 0000000")), want: []event{ev(OpPing, "")}},
		{name: "ping of 125 bytes", in: stream(ping(rep(125))), want: []event{ev(OpPing, rep(125))}},
		{name: "pong", in: stream(pong("x")), want: []event{ev(OpPong, "x")}},
		{name: "close without payload", in: withMask(bits("1 000 1000 1 0000000")), want: []event{cl(CloseNoStatus, "")}},
		{name: "close 1000 with reason", in: stream(closeFrame(1000, "bye")), want: []event{cl(1000, "bye")}},
		{name: "close 4000 with UTF-8 reason", in: stream(closeFrame(4000, "adiós")), want: []event{cl(4000, "adiós")}},
		{name: "close with 125-byte payload", in: stream(closeFrame(1001, rep(123))), want: []event{cl(1001, rep(123))}},
		{name: "126 length form", in: stream(text(rep(200))), want: []event{ev(OpText, rep(200))}},
		{name: "126 length form, 65535 bytes", in: stream(text(rep(65535))), max: 70000, want: []event{ev(OpText, rep(65535))}},
		{name: "127 length form", in: stream(text(rep(70000))), max: 100000, want: []event{ev(OpText, rep(70000))}},
		{
			name: "non-minimal length forms are accepted",
			in:   stream(cframe{op: OpText, payload: []byte("abc"), lenForm: 126}, cframe{op: OpText, payload: []byte("de"), lenForm: 127}),
			want: []event{ev(OpText, "abc"), ev(OpText, "de")},
		},
		{
			name: "several frames in one buffer",
			in:   stream(text("a"), ping("b"), bin("c"), pong("d"), closeFrame(1000, "")),
			want: []event{ev(OpText, "a"), ev(OpPing, "b"), ev(OpBinary, "c"), ev(OpPong, "d"), cl(1000, "")},
		},
		{
			name:  "fragments with interleaved ping and pong",
			in:    stream(text("Hel").first(), ping("p1"), cont("lo").first(), pong("p2"), cont(" world")),
			want:  []event{ev(OpPing, "p1"), ev(OpPong, "p2"), ev(OpText, "Hello world")},
			frags: 2,
		},
		{
			name:  "fragmented binary",
			in:    stream(bin("ab").first(), cont("cd").first(), cont("ef")),
			want:  []event{ev(OpBinary, "abcdef")},
			frags: 2,
		},
		{
			name:  "fragments split inside a UTF-8 character",
			in:    stream(text("caf\xc3").first(), cont("\xa9 \xe2\x82").first(), cont("\xac")),
			want:  []event{ev(OpText, "café €")},
			frags: 2,
		},
		{
			name:  "empty fragments",
			in:    stream(text("").first(), cont("").first(), cont("")),
			want:  []event{ev(OpText, "")},
			frags: 2,
		},
		{
			name:  "close interleaved in a fragmented message",
			in:    stream(text("a").first(), closeFrame(1000, "")),
			want:  []event{cl(1000, "")},
			frags: 1,
		},
		{
			name:  "two fragmented messages in a row",
			in:    stream(text("a").first(), cont("b"), bin("c").first(), cont("d")),
			want:  []event{ev(OpText, "ab"), ev(OpBinary, "cd")},
			frags: 2,
		},
		{name: "binary need not be UTF-8", in: stream(bin("\xff\xc0")), want: []event{ev(OpBinary, "\xff\xc0")}},
		{name: "incomplete header waits", in: text("Hello").bytes()[:1], rest: 1},
		{name: "incomplete mask waits", in: text("Hello").bytes()[:5], rest: 5},
		{name: "incomplete payload waits", in: text("Hello").bytes()[:10], rest: 10},
		{name: "incomplete extended length waits", in: text(rep(70000)).bytes()[:9], max: 100000, rest: 9},
		{
			name: "incomplete frame after a complete one",
			in:   cat(stream(ping("x")), text("Hello").bytes()[:7]),
			want: []event{ev(OpPing, "x")},
			rest: 7,
		},

		// The limit (1009).
		{name: "exactly max in one frame", in: stream(text(rep(max))), want: []event{ev(OpText, rep(max))}},
		{
			name:  "exactly max in fragments",
			in:    stream(text(rep(600)).first(), cont(rep(300)).first(), cont(rep(100))),
			want:  []event{ev(OpText, rep(max))},
			frags: 2,
		},
		{
			name:  "control frames do not count toward the limit",
			in:    stream(text(rep(999)).first(), ping(rep(100)), cont("a")),
			want:  []event{ev(OpPing, rep(100)), ev(OpText, rep(max))},
			frags: 1,
		},
		{name: "max+1 in one frame", in: stream(text(rep(max + 1))), err: errTooBig},
		{name: "max+1 binary", in: stream(bin(rep(max + 1))), err: errTooBig},
		{name: "max+1 reported from the header alone", in: text(rep(max + 1)).bytes()[:4], err: errTooBig},
		{
			name:  "max+1 across fragments, from the header alone",
			in:    cat(stream(text(rep(600)).first()), cont(rep(401)).bytes()[:4]),
			frags: 1,
			err:   errTooBig,
		},
		{
			name: "64-bit length with the top bit set",
			in:   cat(bits("1 000 0001 1 1111111"), []byte{0x80, 0, 0, 0, 0, 0, 0, 5}),
			err:  errTooBig,
		},
		{
			name: "64-bit length 2^64-1",
			in:   cat(bits("1 000 0010 1 1111111"), bytes.Repeat([]byte{0xff}, 8)),
			err:  errTooBig,
		},
		{
			name:  "64-bit length top bit on a continuation",
			in:    cat(stream(text("a").first()), bits("1 000 0000 1 1111111"), []byte{0x80, 0, 0, 0, 0, 0, 0, 0}),
			frags: 1,
			err:   errTooBig,
		},
		{name: "MaxMessage ≤ 0 means the default, exactly", in: stream(text(rep(DefaultMaxMessage))), max: -1, want: []event{ev(OpText, rep(DefaultMaxMessage))}},
		{name: "MaxMessage ≤ 0 means the default, +1", in: text(rep(DefaultMaxMessage + 1)).bytes()[:10], max: -1, err: errTooBig},

		// Protocol errors (1002).
		{name: "unmasked text", in: cat(bits("1 000 0001 0 0000101"), []byte("Hello")), err: errUnmasked},
		{name: "unmasked, from the header alone", in: bits("1 000 0001 0 0000101"), err: errUnmasked},
		{name: "unmasked ping", in: stream(cframe{op: OpPing, unmask: true}), err: errUnmasked},
		{name: "unmasked close", in: stream(cframe{op: OpClose, unmask: true}), err: errUnmasked},
		{name: "RSV1", in: withMask(bits("1 100 0001 1 0000000")), err: errRSV},
		{name: "RSV2", in: withMask(bits("1 010 0001 1 0000000")), err: errRSV},
		{name: "RSV3", in: withMask(bits("1 001 0001 1 0000000")), err: errRSV},
		{name: "RSV on a ping", in: stream(cframe{op: OpPing, rsv: 4}), err: errRSV},
		{name: "RSV on a continuation", in: stream(text("a").first(), cframe{op: OpContinuation, rsv: 2}), frags: 1, err: errRSV},
		{name: "RSV from the first byte alone", in: bits("1 100 0001"), err: errRSV},
		{name: "ping not final", in: withMask(bits("0 000 1001 1 0000000")), err: errControlFrag},
		{name: "pong not final", in: stream(pong("x").first()), err: errControlFrag},
		{name: "close not final", in: stream(closeFrame(1000, "").first()), err: errControlFrag},
		{name: "ping of 126 bytes", in: stream(ping(rep(126))), err: errControlLen},
		{name: "ping announcing 126 bytes, header alone", in: bits("1 000 1001 1 1111110"), err: errControlLen},
		{name: "ping with an extended length form", in: stream(cframe{op: OpPing, payload: []byte("x"), lenForm: 126}), err: errControlLen},
		{name: "close of 126 bytes", in: stream(closeFrame(1000, rep(124))), err: errControlLen},
		{name: "pong with a 64-bit length form", in: stream(cframe{op: OpPong, lenForm: 127}), err: errControlLen},
		{name: "continuation with no message", in: stream(cont("x")), err: errNoMessage},
		{name: "continuation after a complete message", in: stream(text("a"), cont("b")), want: []event{ev(OpText, "a")}, err: errNoMessage},
		{name: "final continuation twice", in: stream(text("a").first(), cont("b"), cont("c")), want: []event{ev(OpText, "ab")}, frags: 1, err: errNoMessage},
		{name: "text while a fragmented message is in progress", in: stream(text("a").first(), text("b")), frags: 1, err: errInterleaved},
		{name: "binary while a fragmented message is in progress", in: stream(text("a").first(), bin("b")), frags: 1, err: errInterleaved},
		{name: "non-final text while one is in progress", in: stream(bin("a").first(), text("b").first()), frags: 1, err: errInterleaved},

		// Close frame payloads.
		{name: "close with a 1-byte payload", in: stream(cframe{op: OpClose, payload: []byte{0x03}}), err: errCloseShort},
		{name: "close reason not UTF-8", in: stream(closeFrame(1000, "\xff")), err: errCloseReason},
		{name: "close reason with a truncated character", in: stream(closeFrame(1000, "ab\xe2\x82")), err: errCloseReason},

		// Invalid UTF-8 (1007).
		{name: "text 0xff", in: stream(text("\xff")), err: errInvalidUTF8},
		{name: "text overlong encoding", in: stream(text("\xc0\xaf")), err: errInvalidUTF8},
		{name: "text UTF-16 surrogate", in: stream(text("\xed\xa0\x80")), err: errInvalidUTF8},
		{name: "text ending inside a character", in: stream(text("ok\xe2\x82")), err: errInvalidUTF8},
		{name: "fragmented text, invalid fragment", in: stream(text("ok").first(), cont("\xff")), frags: 1, err: errInvalidUTF8},
		{name: "fragmented text ending inside a character", in: stream(text("\xe2\x82").first(), cont("")), frags: 1, err: errInvalidUTF8},
		{name: "valid frames before an invalid one are delivered", in: stream(text("a"), ping("b"), text("\xff")), want: []event{ev(OpText, "a"), ev(OpPing, "b")}, err: errInvalidUTF8},
	}

	// Every reserved opcode, data (3–7) and control (B–F).
	for op := 3; op <= 0xf; op++ {
		if op == 8 || op == 9 || op == 0xa {
			continue
		}
		tests = append(tests, struct {
			name  string
			in    []byte
			max   int
			want  []event
			frags int
			err   *CloseError
			rest  int
		}{
			name: fmt.Sprintf("reserved opcode %#x", op),
			in:   withMask(bits(fmt.Sprintf("1 000 %04b 1 0000000", op))),
			err:  errOpcode,
		})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Parser{MaxMessage: max}
			if tt.max != 0 {
				p.MaxMessage = tt.max
			}
			got := feedT(t, p, tt.in)
			var wantCode uint16
			if tt.err != nil {
				wantCode = tt.err.Code
			}
			if got.Err != wantCode {
				t.Fatalf("error code %d (%q), want %d (%v)", got.Err, got.ErrReason, wantCode, tt.err)
			}
			if tt.err != nil && got.ErrReason != tt.err.Reason {
				t.Errorf("error %q, want %q", got.ErrReason, tt.err.Reason)
			}
			if fmt.Sprint(got.Events) != fmt.Sprint(tt.want) {
				t.Errorf("events\n got %v\nwant %v", got.Events, tt.want)
			}
			if got.Fragments != tt.frags {
				t.Errorf("%d fragments absorbed, want %d", got.Fragments, tt.frags)
			}
			if got.Rest != tt.rest {
				t.Errorf("%d bytes left, want %d", got.Rest, tt.rest)
			}
		})
	}
}

func TestParserCloseCodes(t *testing.T) {
	// RFC 6455 §7.4.1/§7.4.2 and the IANA registry: what may be on the wire.
	valid := []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999}
	invalid := []uint16{0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535}
	for _, code := range valid {
		p := &Parser{}
		got := feedT(t, p, stream(closeFrame(code, "r")))
		if got.Err != 0 || len(got.Events) != 1 || got.Events[0] != (event{OpClose, "r", code}) {
			t.Errorf("close %d: got %+v, want a close event", code, got)
		}
	}
	for _, code := range invalid {
		p := &Parser{}
		got := feedT(t, p, stream(closeFrame(code, "")))
		if got.Err != CloseProtocol || got.ErrReason != errCloseCode.Reason {
			t.Errorf("close %d: got %+v, want 1002 %q", code, got, errCloseCode.Reason)
		}
	}
}

func TestParserUnmasksInPlace(t *testing.T) {
	buf := stream(text("Hello"), ping("x"))
	var p Parser
	f, n, err := p.Next(buf)
	if err != nil || n != 11 || string(f.Payload) != "Hello" {
		t.Fatalf("Next = %v, %d, %v", f, n, err)
	}
	if &f.Payload[0] != &buf[6] {
		t.Error("Payload of a single frame does not alias buf")
	}
	// Appending to Payload must not overwrite the next frame.
	_ = append(f.Payload, "XXXX"...)
	f, n, err = p.Next(buf[n:])
	if err != nil || n != 7 || f.Op != OpPing || string(f.Payload) != "x" {
		t.Fatalf("second Next = %v, %d, %v", f, n, err)
	}
}

func TestParserFragmentBuffer(t *testing.T) {
	const max = 1000
	p := &Parser{MaxMessage: max}
	if _, _, err := p.Next(stream(text(rep(600)).first())); err != nil {
		t.Fatal(err)
	}
	if p.msg == nil || p.msgOp != OpText {
		t.Fatal("no message in progress after a first fragment")
	}
	if _, _, err := p.Next(stream(cont(rep(399)).first())); err != nil {
		t.Fatal(err)
	}
	if cap(p.msg) > max {
		t.Errorf("fragment buffer capacity %d exceeds MaxMessage %d", cap(p.msg), max)
	}
	f, _, err := p.Next(stream(cont("b")))
	if err != nil || f.Op != OpText || len(f.Payload) != max {
		t.Fatalf("final fragment: %v %v", f.Op, err)
	}
	if p.msg != nil || p.msgOp != 0 {
		t.Error("fragment buffer kept after the message completed")
	}
	if cap(f.Payload) != len(f.Payload) {
		t.Errorf("assembled Payload capacity %d, want %d", cap(f.Payload), len(f.Payload))
	}
}

func TestParserReset(t *testing.T) {
	p := &Parser{}
	if _, _, err := p.Next(stream(text("a").first())); err != nil {
		t.Fatal(err)
	}
	p.Reset()
	if p.msg != nil || p.msgOp != 0 {
		t.Fatal("Reset kept the message in progress")
	}
	if _, _, err := p.Next(stream(cont("b"))); err != errNoMessage {
		t.Fatalf("continuation after Reset: %v, want %v", err, errNoMessage)
	}
	p.Reset()
	if f, _, err := p.Next(stream(text("c"))); err != nil || string(f.Payload) != "c" {
		t.Fatalf("text after Reset: %v %v", f, err)
	}
}

func TestParserSize(t *testing.T) {
	// MaxMessage, the fragment buffer slice and the opcode: 5 words.
	if s := unsafe.Sizeof(Parser{}); s > 5*unsafe.Sizeof(uintptr(0)) {
		t.Errorf("Parser is %d bytes; keep it a few words", s)
	}
}

func TestParserAllocs(t *testing.T) {
	frames := map[string][]byte{
		"text 100":  stream(text(rep(100))),
		"text 4096": stream(text(rep(4096))),
		"ping":      stream(ping("x")),
		"close":     stream(closeFrame(1000, "bye")),
		"binary":    stream(bin(rep(300))),
	}
	for name, frame := range frames {
		buf := make([]byte, len(frame))
		p := &Parser{}
		allocs := testing.AllocsPerRun(200, func() {
			copy(buf, frame)
			if _, n, err := p.Next(buf); n != len(buf) || err != nil {
				t.Fatalf("%s: n=%d err=%v", name, n, err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocs per frame, want 0", name, allocs)
		}
	}
}

func TestCloseErrorMessage(t *testing.T) {
	if got, want := errUnmasked.Error(), "wsproto: close 1002: unmasked client frame"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// TestParserLimitBeforePayload shows the limit does not wait for the
// payload: a header announcing 1 GiB is refused with only 10 bytes buffered.
func TestParserLimitBeforePayload(t *testing.T) {
	hdr := cat(bits("1 000 0001 1 1111111"), binary.BigEndian.AppendUint64(nil, 1<<30))
	p := &Parser{MaxMessage: 1 << 20}
	if _, n, err := p.Next(hdr); err != errTooBig || n != 0 {
		t.Fatalf("Next = %d, %v; want 0, %v", n, err, errTooBig)
	}
}

func TestParserLimitLoweredMidMessage(t *testing.T) {
	p := &Parser{MaxMessage: 1000}
	if _, _, err := p.Next(stream(text(rep(600)).first())); err != nil {
		t.Fatal(err)
	}
	p.MaxMessage = 500
	if _, _, err := p.Next(stream(cont(""))); err != errTooBig {
		t.Fatalf("continuation after lowering the limit below the buffered 600 bytes: %v, want %v", err, errTooBig)
	}
}
