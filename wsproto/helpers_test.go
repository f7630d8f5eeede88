package wsproto

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// bits turns "1 000 0001 1 0000101" into bytes: spaces are ignored, the
// rest must be whole bytes of '0' and '1'.
func bits(s string) []byte {
	s = strings.ReplaceAll(s, " ", "")
	if len(s)%8 != 0 {
		panic(fmt.Sprintf("bits: %d bits is not whole bytes", len(s)))
	}
	out := make([]byte, len(s)/8)
	for i, c := range s {
		switch c {
		case '1':
			out[i/8] |= 0x80 >> (i % 8)
		case '0':
		default:
			panic("bits: bad digit " + string(c))
		}
	}
	return out
}

// testMask is the masking key of the RFC 6455 §5.7 examples.
var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// cframe describes a client frame for tests. The zero value of the fields
// other than op and payload gives a valid masked FIN frame.
type cframe struct {
	op      OpCode
	payload []byte
	more    bool   // FIN clear
	rsv     byte   // RSV bits, 0..7
	unmask  bool   // send without mask
	lenForm int    // 0: shortest; 126 or 127: force that extended form
	length  uint64 // when non-zero, the length to announce instead of len(payload)
}

// bytes encodes f the way a client would, independently of the package's
// server-side encoder.
func (f cframe) bytes() []byte {
	var b []byte
	b0 := byte(f.op) | f.rsv<<4
	if !f.more {
		b0 |= 0x80
	}
	n := uint64(len(f.payload))
	if f.length != 0 {
		n = f.length
	}
	var maskBit byte = 0x80
	if f.unmask {
		maskBit = 0
	}
	switch form := f.lenForm; {
	case form == 127 || (form == 0 && n > 0xffff):
		b = append(b, b0, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, n)
	case form == 126 || (form == 0 && n > 125):
		b = append(b, b0, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, b0, maskBit|byte(n))
	}
	if f.unmask {
		return append(b, f.payload...)
	}
	b = append(b, testMask[:]...)
	for i, c := range f.payload {
		b = append(b, c^testMask[i%4])
	}
	return b
}

func text(s string) cframe { return cframe{op: OpText, payload: []byte(s)} }
func bin(s string) cframe  { return cframe{op: OpBinary, payload: []byte(s)} }
func ping(s string) cframe { return cframe{op: OpPing, payload: []byte(s)} }
func pong(s string) cframe { return cframe{op: OpPong, payload: []byte(s)} }
func cont(s string) cframe { return cframe{op: OpContinuation, payload: []byte(s)} }

func closeFrame(code uint16, reason string) cframe {
	p := binary.BigEndian.AppendUint16(nil, code)
	return cframe{op: OpClose, payload: append(p, reason...)}
}

// first marks a frame as not final (FIN clear).
func (f cframe) first() cframe { f.more = true; return f }

func stream(fs ...cframe) []byte {
	var b []byte
	for _, f := range fs {
		b = append(b, f.bytes()...)
	}
	return b
}

// event is a parsed Frame with its payload copied, comparable.
type event struct {
	Op      OpCode
	Payload string
	Code    uint16
}

func (e event) String() string {
	p := e.Payload
	if len(p) > 40 {
		p = fmt.Sprintf("%.20q…(%d bytes)", p, len(p))
	} else {
		p = fmt.Sprintf("%q", p)
	}
	if e.Op == OpClose {
		return fmt.Sprintf("close(%d, %s)", e.Code, p)
	}
	return fmt.Sprintf("op%d(%s)", e.Op, p)
}

// result is everything a parser produced from a stream.
type result struct {
	Events    []event
	Fragments int    // non-final fragments absorbed (Op == OpContinuation, n > 0)
	Err       uint16 // close code of the error that stopped parsing, 0 if none
	ErrReason string
	Rest      int // bytes left unconsumed at the end (0 after an error)
}

// feed runs a parser over a stream delivered in chunks, the way the server
// drives it: append what arrived to the pending bytes, call Next until it
// needs more, drop consumed bytes. It checks the invariants every call must
// keep: 0 ≤ n ≤ len(buf), n == 0 without error leaves buf untouched, and
// an event has n > 0. It reports violations through fail.
func feed(p *Parser, chunks [][]byte, fail func(format string, args ...any)) result {
	var r result
	var pending []byte
	// A frame the parser may wait for is at most this long; with more
	// bytes buffered, Next must make progress or fail.
	limit := p.MaxMessage
	if limit <= 0 {
		limit = DefaultMaxMessage
	}
	limit += MaxHeaderSize
	for _, c := range chunks {
		pending = append(pending, c...)
		for {
			var before string
			if len(pending) < limit {
				before = string(pending) // kept small: no quadratic copying
			}
			f, n, err := p.Next(pending)
			if n < 0 || n > len(pending) {
				fail("Next returned n=%d for %d buffered bytes", n, len(pending))
				r.Err = 1
				return r
			}
			if err != nil {
				ce, ok := err.(*CloseError)
				if !ok {
					fail("Next returned %T %v, want *CloseError", err, err)
					r.Err = 1
					return r
				}
				if n != 0 {
					fail("Next returned n=%d with error %v", n, err)
				}
				// Rest stays 0: how much was buffered at the error
				// depends on the split.
				r.Err, r.ErrReason = ce.Code, ce.Reason
				return r
			}
			if n == 0 {
				if f.Op != 0 || f.Payload != nil {
					fail("Next returned an event %v with n == 0", f)
				}
				if len(pending) >= limit {
					fail("Next waits for more bytes with %d buffered (limit %d)", len(pending), p.MaxMessage)
				} else if string(pending) != before {
					fail("Next modified buf while asking for more bytes")
				}
				break
			}
			if f.Op == OpContinuation {
				r.Fragments++
			} else {
				if cap(f.Payload) != len(f.Payload) {
					fail("Payload capacity %d exceeds its length %d", cap(f.Payload), len(f.Payload))
				}
				r.Events = append(r.Events, event{f.Op, string(f.Payload), f.CloseCode})
			}
			pending = pending[n:]
		}
	}
	r.Rest = len(pending)
	return r
}

// feedT is feed with failures reported to t.
func feedT(t testing.TB, p *Parser, chunks ...[]byte) result {
	t.Helper()
	return feed(p, chunks, func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
	})
}

func sameResult(a, b result) bool {
	if a.Err != b.Err || a.Fragments != b.Fragments || a.Rest != b.Rest || len(a.Events) != len(b.Events) {
		return false
	}
	for i := range a.Events {
		if a.Events[i] != b.Events[i] {
			return false
		}
	}
	return true
}
