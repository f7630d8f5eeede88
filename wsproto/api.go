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
package wsproto

// Opcodes (RFC 6455 §5.2).
type OpCode byte

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
// with HTTP 431 (RequestEnd returns -1).
const MaxRequestHead = 8192

// CloseError tells the caller to close the connection with Code.
type CloseError struct {
	Code   uint16
	Reason string
}

func (e *CloseError) Error() string { panic("unimplemented") }

// Frame is one parsed event. For Kind == OpText/OpBinary it is a complete
// message (fragments already assembled); for control frames the frame
// itself. Payload aliases either buf given to Next (valid until the caller
// Discards) or the parser's fragment buffer (valid until the next Next).
type Frame struct {
	Op      OpCode
	Payload []byte
	// For OpClose: the code (CloseNoStatus when the client sent none) and
	// reason. A close frame with an invalid code or 1-byte payload is a
	// CloseError 1002 instead.
	CloseCode uint16
}

// Parser is the per-connection incremental parser. Its zero value is ready
// to use once MaxMessage is set. It stays small (a few words) while no
// fragmented message is in progress: memory per connection matters.
type Parser struct {
	MaxMessage int // total payload limit of a message; exactly MaxMessage is accepted
	// unexported state…
}

// Next parses at most one frame from buf. See the package CONTRACT.
// Control frames (ping, pong, close) are returned even while a fragmented
// message is in progress. Every §1 violation is a *CloseError with the
// PROTOCOL code: 1002, 1003 is NOT decided here (binary messages are
// returned; the server closes 1003), 1007 for invalid UTF-8 in a complete
// text message, 1009 as soon as a header announces a length that takes the
// message over MaxMessage.
func (p *Parser) Next(buf []byte) (f Frame, n int, err error) { panic("unimplemented") }

// Reset drops any message in progress and releases the fragment buffer.
func (p *Parser) Reset() { panic("unimplemented") }

// Request is what the handshake learned.
type Request struct {
	Token  string // the "token" query parameter ("" when absent or empty)
	Device string // the "device" query parameter
	Origin string
	// UID is set by Upgrader.Authorize.
	UID uint64
}

// Upgrader performs the server side of the opening handshake with the
// checks of PROTOCOL §1 in order: path (404), upgrade (400), Origin (403),
// device longer than 64 bytes (400), token (401).
type Upgrader struct {
	Path string // "/ws"
	// AllowOrigin reports whether an Origin header value is allowed. nil: any.
	// Requests without Origin are always allowed.
	AllowOrigin func(origin string) bool
	// Authorize is called last, only when the token is non-empty; it returns
	// false for a bad or expired token (401) and may set r.UID.
	Authorize func(r *Request) bool
}

// Upgrade parses exactly one request head (req must be exactly the bytes
// RequestEnd measured) and returns the response to write and its status.
func (u *Upgrader) Upgrade(req []byte, r *Request) (resp []byte, status int) {
	panic("unimplemented")
}

// AppendFrame appends one unmasked FIN frame with op and payload to dst.
func AppendFrame(dst []byte, op OpCode, payload []byte) []byte { panic("unimplemented") }

// AppendClose appends a close frame carrying code and reason (≤ 123 bytes).
func AppendClose(dst []byte, code uint16, reason string) []byte { panic("unimplemented") }

// PutHeader writes the header of an unmasked FIN frame of n payload bytes
// into hdr and returns its length.
func PutHeader(hdr *[MaxHeaderSize]byte, op OpCode, n int) int { panic("unimplemented") }
