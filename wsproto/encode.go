package wsproto

import (
	"encoding/binary"
	"slices"
	"unicode/utf8"
)

// maxCloseReason is the longest close reason that fits a control frame
// next to its 2-byte code.
const maxCloseReason = maxControlPayload - 2

// PutHeader writes the header of an unmasked FIN frame of n payload bytes
// into hdr and returns its length (2, 4 or 10), for
// Writev([][]byte{hdr[:k], payload}). It uses the shortest length form.
// n must not be negative. Control frames (close, ping, pong) must have
// n ≤ 125; PutHeader does not check it.
func PutHeader(hdr *[MaxHeaderSize]byte, op OpCode, n int) int {
	hdr[0] = 0x80 | byte(op)
	switch {
	case n <= 125:
		hdr[1] = byte(n)
		return 2
	case n <= 0xffff:
		hdr[1] = 126
		binary.BigEndian.PutUint16(hdr[2:4], uint16(n))
		return 4
	default:
		hdr[1] = 127
		binary.BigEndian.PutUint64(hdr[2:10], uint64(n))
		return 10
	}
}

// AppendFrame appends one unmasked FIN frame with op and payload to dst
// and returns the extended slice. It allocates only when dst lacks the
// capacity (at most once), so a message encoded once into a buffer of the
// right size can be written to many connections.
func AppendFrame(dst []byte, op OpCode, payload []byte) []byte {
	var hdr [MaxHeaderSize]byte
	k := PutHeader(&hdr, op, len(payload))
	dst = slices.Grow(dst, k+len(payload))
	dst = append(dst, hdr[:k]...)
	return append(dst, payload...)
}

// AppendClose appends a close frame carrying code and reason to dst.
// A reason longer than 123 bytes is cut at the last UTF-8 character
// boundary that fits. Code 0 or CloseNoStatus (1005, which must never be
// sent) produce a close frame without payload, the way to say "no status";
// any other code is written as given: callers send only codes allowed on
// the wire (1000–1003, 1007–1014, 3000–4999).
func AppendClose(dst []byte, code uint16, reason string) []byte {
	if code == 0 || code == CloseNoStatus {
		return append(dst, 0x80|byte(OpClose), 0)
	}
	if len(reason) > maxCloseReason {
		cut := maxCloseReason
		// Back up to the start of the character that straddles the cut.
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	n := 2 + len(reason)
	dst = slices.Grow(dst, 2+n)
	dst = append(dst, 0x80|byte(OpClose), byte(n), byte(code>>8), byte(code))
	return append(dst, reason...)
}
