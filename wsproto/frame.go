package wsproto

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// The errors of Next. They are shared so that a violation costs no
// allocation; callers must not modify them.
var (
	errRSV         = &CloseError{CloseProtocol, "reserved bit set"}
	errOpcode      = &CloseError{CloseProtocol, "unknown opcode"}
	errControlFrag = &CloseError{CloseProtocol, "fragmented control frame"}
	errNoMessage   = &CloseError{CloseProtocol, "continuation frame with no message in progress"}
	errInterleaved = &CloseError{CloseProtocol, "new data frame while a fragmented message is in progress"}
	errUnmasked    = &CloseError{CloseProtocol, "unmasked client frame"}
	errControlLen  = &CloseError{CloseProtocol, "control frame longer than 125 bytes"}
	errCloseShort  = &CloseError{CloseProtocol, "close frame with a 1-byte payload"}
	errCloseCode   = &CloseError{CloseProtocol, "invalid close code"}
	errCloseReason = &CloseError{CloseProtocol, "close reason is not valid UTF-8"}
	errInvalidUTF8 = &CloseError{CloseInvalidUTF8, "text message is not valid UTF-8"}
	errTooBig      = &CloseError{CloseTooBig, "message too big"}
)

// maxControlPayload is the largest control frame payload (RFC 6455 §5.5).
const maxControlPayload = 125

// minFragBuf is the smallest fragment buffer allocated, so that a message
// sent as many tiny fragments does not reallocate on every one.
const minFragBuf = 512

// Next parses at most one frame from buf. See the package CONTRACT.
// Control frames (ping, pong, close) are returned even while a fragmented
// message is in progress. Every §1 violation is a *CloseError with the
// PROTOCOL code: 1002 for protocol errors, 1007 for invalid UTF-8 in a
// complete text message, 1009 as soon as a header announces a length that
// takes the message over MaxMessage. 1003 is NOT decided here: binary
// messages are returned and the server closes 1003.
//
// Results:
//   - n == 0, err == nil: buf holds no complete frame; call again with
//     more bytes (buf is not modified).
//   - n > 0, f.Op == OpContinuation: a non-final fragment was consumed
//     into the parser's buffer; nothing to deliver.
//   - n > 0, any other f.Op: one event (see Frame for Payload lifetimes).
//   - err != nil: a *CloseError; close the connection with its Code. The
//     parser state is unspecified afterwards.
//
// Violations in the first two header bytes are reported as soon as those
// bytes are in buf, and the length limit as soon as the length field is,
// before any payload arrives. A frame is unmasked in place (buf is
// modified) only once it is complete, so calling again with a longer buf
// after n == 0 is always correct. 0 ≤ n ≤ len(buf).
//
// Next does not allocate except to assemble a fragmented message.
//
// REQUIRES: the goroutine that owns p.
func (p *Parser) Next(buf []byte) (f Frame, n int, err error) {
	if len(buf) == 0 {
		return Frame{}, 0, nil
	}
	b0 := buf[0]
	fin := b0&0x80 != 0
	op := OpCode(b0 & 0x0f)
	control := op&0x8 != 0

	// Checks on the first byte, in a fixed order so that the reported
	// violation does not depend on how the stream was split.
	switch {
	case b0&0x70 != 0:
		return Frame{}, 0, errRSV
	case op > OpBinary && op < OpClose, op > OpPong:
		return Frame{}, 0, errOpcode
	case control && !fin:
		return Frame{}, 0, errControlFrag
	case op == OpContinuation && p.msgOp == 0:
		return Frame{}, 0, errNoMessage
	case (op == OpText || op == OpBinary) && p.msgOp != 0:
		return Frame{}, 0, errInterleaved
	}
	if len(buf) < 2 {
		return Frame{}, 0, nil
	}
	b1 := buf[1]
	if b1&0x80 == 0 {
		return Frame{}, 0, errUnmasked
	}
	length := uint64(b1 & 0x7f)
	if control && length > uint64(maxControlPayload) {
		// Also covers the 126 and 127 extended-length markers.
		return Frame{}, 0, errControlLen
	}
	hl := 2 + 4 // header length including the mask key
	switch length {
	case 126:
		if len(buf) < 4 {
			return Frame{}, 0, nil
		}
		length = uint64(binary.BigEndian.Uint16(buf[2:4]))
		hl = 4 + 4
	case 127:
		if len(buf) < 10 {
			return Frame{}, 0, nil
		}
		// A length with the top bit set (invalid per RFC 6455 §5.2) is
		// simply over any limit: compared as uint64 it never wraps to a
		// negative int.
		length = binary.BigEndian.Uint64(buf[2:10])
		hl = 10 + 4
	}
	if !control {
		limit := p.MaxMessage
		if limit <= 0 {
			limit = DefaultMaxMessage
		}
		// room < 0 only if MaxMessage was lowered mid-message.
		if room := limit - len(p.msg); room < 0 || length > uint64(room) {
			return Frame{}, 0, errTooBig
		}
	}
	// length ≤ limit (an int) or ≤ 125 here: the conversion is exact.
	end := hl + int(length)
	if len(buf) < end {
		return Frame{}, 0, nil
	}
	payload := buf[hl:end:end]
	ws.Cipher(payload, [4]byte(buf[hl-4:hl]), 0)

	switch op {
	case OpText, OpBinary:
		if !fin {
			p.msgOp = op
			p.appendFragment(payload)
			return Frame{}, end, nil
		}
		if op == OpText && !utf8.Valid(payload) {
			return Frame{}, 0, errInvalidUTF8
		}
		return Frame{Op: op, Payload: payload}, end, nil
	case OpContinuation:
		p.appendFragment(payload)
		if !fin {
			return Frame{}, end, nil
		}
		msg, mop := p.msg, p.msgOp
		p.msg, p.msgOp = nil, 0
		if mop == OpText && !utf8.Valid(msg) {
			return Frame{}, 0, errInvalidUTF8
		}
		return Frame{Op: mop, Payload: msg[:len(msg):len(msg)]}, end, nil
	case OpClose:
		switch len(payload) {
		case 0:
			return Frame{Op: OpClose, CloseCode: CloseNoStatus}, end, nil
		case 1:
			return Frame{}, 0, errCloseShort
		}
		code := binary.BigEndian.Uint16(payload)
		if !validCloseCode(code) {
			return Frame{}, 0, errCloseCode
		}
		reason := payload[2:]
		if !utf8.Valid(reason) {
			return Frame{}, 0, errCloseReason
		}
		return Frame{Op: OpClose, Payload: reason, CloseCode: code}, end, nil
	default: // OpPing, OpPong
		return Frame{Op: op, Payload: payload}, end, nil
	}
}

// appendFragment adds b to the message in progress, growing the buffer
// geometrically but never past the limit (which Next has already checked
// the total against).
func (p *Parser) appendFragment(b []byte) {
	need := len(p.msg) + len(b)
	if need > cap(p.msg) {
		limit := p.MaxMessage
		if limit <= 0 {
			limit = DefaultMaxMessage
		}
		c := max(2*cap(p.msg), need, minFragBuf)
		c = min(c, limit)
		grown := make([]byte, len(p.msg), max(c, need))
		copy(grown, p.msg)
		p.msg = grown
	}
	p.msg = append(p.msg, b...)
}

// Reset drops any message in progress and releases the fragment buffer.
//
// REQUIRES: the goroutine that owns p.
func (p *Parser) Reset() {
	p.msg = nil
	p.msgOp = 0
}

// validCloseCode reports whether code may appear in a close frame on the
// wire (RFC 6455 §7.4 and the IANA registry): 1000–1003, 1007–1014 and
// 3000–4999. 1004–1006 and 1015 are reserved or must not be sent,
// 1016–2999 are reserved for future RFCs, and nothing is defined from 5000.
func validCloseCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003:
		return true
	case code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
