// Package wsproto implements RFC 6455 over byte buffers for an event-loop
// server: incremental handshake parsing and upgrade (on gobwas/ws),
// incremental frame parsing, and frame encoding. It performs no I/O and knows
// nothing about gnet, JSON or users.
//
// CONTRACT (the server is written against these names; keep them):
//
//	RequestEnd(buf) int                       length of the HTTP request head through "\r\n\r\n", 0 if incomplete, -1 if the head exceeds MaxRequestHead
//	(*Upgrader).Upgrade(req, *Request) ([]byte, int)
//	                                          resp: bytes to write (101 response, or an HTTP error response with a small JSON body);
//	                                          status: 101 on success, else the HTTP status (400/401/403/404/…) and the caller closes after writing resp
//	(*Parser).Next(buf) (Frame, n int, err)   parses at most one frame from buf (gnet Peek bytes); n bytes consumed (caller Discards n);
//	                                          n == 0 && err == nil: need more bytes. Unmasks in place. err is *CloseError.
//	AppendFrame(dst, op, payload) []byte      one unmasked FIN server frame
//	AppendClose(dst, code, reason) []byte     a close frame
//	PutHeader(hdr *[MaxHeaderSize]byte, op, n) int   header only, for Writev(hdr, payload)
//
// Additions beyond the contract: DefaultMaxMessage, MaxDevice,
// AppendHTTPError (for the 431 that follows RequestEnd == -1, or a 503 while
// shutting down), and the rule that Next may consume a non-final fragment
// without producing an event (Frame.Op == OpContinuation, n > 0).
//
// # A read loop on an event loop
//
//	buf, _ := c.Peek(-1)
//	consumed := 0
//	for {
//		f, n, err := parser.Next(buf[consumed:])
//		if err != nil { /* write AppendClose(nil, err.(*CloseError).Code, ""), close */ }
//		if n == 0 { break } // wait for more bytes
//		switch f.Op {
//		case OpContinuation: // a fragment was absorbed; nothing to deliver
//		case OpText, OpBinary, OpPing, OpPong, OpClose:
//			// handle f; f.Payload is valid until Discard (or the next
//			// Next): copy what must outlive that
//		}
//		consumed += n
//	}
//	c.Discard(consumed)
//
// # Goroutines
//
// A Parser is owned by one connection and used from one goroutine at a time
// (the connection's event loop); it has no locks. An Upgrader is read-only
// configuration: Upgrade may run on many goroutines at once, provided its
// AllowOrigin and Authorize hooks are safe for that. The package-level
// functions are pure and safe everywhere.
package wsproto

import "strconv"

// OpCode is a frame opcode (RFC 6455 §5.2).
type OpCode byte

// Opcodes (RFC 6455 §5.2).
const (
	OpContinuation OpCode = 0x0
	OpText         OpCode = 0x1
	OpBinary       OpCode = 0x2
	OpClose        OpCode = 0x8
	OpPing         OpCode = 0x9
	OpPong         OpCode = 0xA
)

// Close codes used by the transport (PROTOCOL §11).
const (
	CloseNormal      uint16 = 1000
	CloseGoingAway   uint16 = 1001
	CloseProtocol    uint16 = 1002
	CloseUnsupported uint16 = 1003
	CloseNoStatus    uint16 = 1005 // never sent; "no code in the client's close"
	CloseInvalidUTF8 uint16 = 1007
	CloseTooBig      uint16 = 1009
)

// MaxHeaderSize is the largest frame header (2 + 8 + 4 bytes).
const MaxHeaderSize = 14

// MaxRequestHead bounds an upgrade request head; longer heads are rejected
// with HTTP 431 (RequestEnd returns -1; AppendHTTPError builds the response).
const MaxRequestHead = 8192

// DefaultMaxMessage is the message limit a Parser applies while its
// MaxMessage is zero or negative (PROTOCOL §12 --max-message default).
const DefaultMaxMessage = 65536

// MaxDevice is the longest "device" query parameter, in bytes after URL
// decoding, that the handshake accepts (PROTOCOL §3).
const MaxDevice = 64

// CloseError tells the caller to close the connection with Code.
//
// The errors returned by Parser.Next are shared, preallocated values (a
// protocol violation costs no allocation): treat them as read-only.
type CloseError struct {
	Code   uint16
	Reason string
}

// Error implements error.
func (e *CloseError) Error() string {
	return "wsproto: close " + strconv.Itoa(int(e.Code)) + ": " + e.Reason
}

// Frame is one parsed event. For Op == OpText/OpBinary it is a complete
// message (fragments already assembled); for control frames the frame
// itself. Op == OpContinuation (the zero value) with n > 0 from Next means
// a non-final fragment was absorbed into the parser and there is nothing to
// deliver yet.
//
// Payload aliases either buf given to Next (valid until the caller Discards
// those bytes) or the parser's fragment buffer (valid until the next Next).
// Copy it to keep it. Its capacity is clipped to its length, so appending to
// it never overwrites the caller's following bytes.
type Frame struct {
	Op OpCode
	// Payload is the unmasked payload; for OpClose it is the close reason
	// (valid UTF-8, without the 2-byte code).
	Payload []byte
	// For OpClose: the code (CloseNoStatus when the client sent none) and
	// reason. A close frame with an invalid code or 1-byte payload is a
	// CloseError 1002 instead.
	CloseCode uint16
}

// Parser is the per-connection incremental parser. Its zero value is ready
// to use once MaxMessage is set. It stays small (a few words) while no
// fragmented message is in progress: memory per connection matters.
//
// REQUIRES: one goroutine at a time (the connection's event loop).
type Parser struct {
	// MaxMessage is the total payload limit of a message; exactly MaxMessage
	// is accepted. Zero or negative means DefaultMaxMessage. Lowering it
	// while a fragmented message is in progress applies to that message.
	MaxMessage int

	// msg holds the payload of the fragmented message in progress. It is
	// nil while none is in progress, and released when the message
	// completes (the returned Payload keeps the array alive while the
	// caller holds it).
	msg []byte
	// msgOp is OpText or OpBinary while a fragmented message is in
	// progress, else OpContinuation (0).
	// INVARIANT: msgOp == 0 implies msg == nil.
	msgOp OpCode
}

// Request is what the handshake learned. Its strings are copies, not
// views of the request bytes: keep them as long as needed.
type Request struct {
	Token  string // the "token" query parameter ("" when absent or empty), URL-decoded
	Device string // the "device" query parameter, URL-decoded; at most MaxDevice bytes
	Origin string // the Origin header ("" when absent)
	// UID is set by Upgrader.Authorize.
	UID uint64
}

// Upgrader performs the server side of the opening handshake with the
// checks of PROTOCOL §1 in order: path (404), upgrade (400), Origin (403),
// device longer than 64 bytes (400), token (401).
//
// An Upgrader is not modified by Upgrade: one value may serve every event
// loop concurrently if AllowOrigin and Authorize are safe for concurrent
// use.
type Upgrader struct {
	// Path is the only request path served, compared byte for byte with the
	// request URI up to '?'. "/ws" in Magpie.
	Path string
	// AllowOrigin reports whether an Origin header value is allowed. nil: any.
	// Requests without Origin (or with an empty one) are always allowed.
	AllowOrigin func(origin string) bool
	// Authorize is called last, only when the token is non-empty; it returns
	// false for a bad or expired token (401) and may set r.UID. It runs
	// synchronously inside Upgrade, on the caller's goroutine. nil rejects
	// every non-empty token (fail closed).
	Authorize func(r *Request) bool
}
