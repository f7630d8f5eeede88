package wstest

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// Raw is the bare-TCP test client of every Magpie suite: for what no
// client library would send, and for thousands of cheap connections. The
// server's in-package and conformance tests wrap it with their own
// assertion helpers.

// UpgradeHeaders are the headers of a valid upgrade request, each line
// ending in CRLF.
const UpgradeHeaders = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

// Raw is a bare TCP connection to the WebSocket listener with a buffered
// reader: the handshake and frames are written and read as bytes.
type Raw struct {
	net.Conn
	R *bufio.Reader
}

// DialRaw connects to addr (host:port).
func DialRaw(addr string) (*Raw, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return NewRaw(c), nil
}

// NewRaw wraps an open connection.
func NewRaw(c net.Conn) *Raw { return &Raw{Conn: c, R: bufio.NewReader(c)} }

// Read reads through the buffer (never around it).
func (r *Raw) Read(p []byte) (int, error) { return r.R.Read(p) }

// Handshake sends a valid upgrade request for /ws?q (just /ws when q is
// empty) and returns the response head, CRLFs included.
func (r *Raw) Handshake(q string) (string, error) {
	path := "/ws"
	if q != "" {
		path += "?" + q
	}
	if _, err := fmt.Fprintf(r, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, UpgradeHeaders); err != nil {
		return "", err
	}
	return r.Head(5 * time.Second)
}

// Head reads an HTTP response head (what arrived, on error).
func (r *Raw) Head(within time.Duration) (string, error) {
	_ = r.SetReadDeadline(time.Now().Add(within))
	var b strings.Builder
	for !strings.HasSuffix(b.String(), "\r\n\r\n") {
		c, err := r.R.ReadByte()
		if err != nil {
			return b.String(), err
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// Upgrade performs the handshake and fails unless the answer is 101.
func (r *Raw) Upgrade(q string) error {
	h, err := r.Handshake(q)
	if err != nil || !strings.HasPrefix(h, "HTTP/1.1 101") {
		return fmt.Errorf("upgrade of /ws?%s failed: %q %v", q, h, err)
	}
	return nil
}

// WriteFrame writes one client frame, masked with key unless masked is
// false.
func (r *Raw) WriteFrame(fin bool, op byte, payload []byte, masked bool, key [4]byte) error {
	_, err := r.Write(ClientFrame(fin, op, payload, masked, key))
	return err
}

// ReadFrame reads one server frame within d.
func (r *Raw) ReadFrame(d time.Duration) (op byte, payload []byte, err error) {
	_ = r.SetReadDeadline(time.Now().Add(d))
	return ReadServerFrame(r.R)
}

// ExpectClose is ReadClose for tests: it fails t without a close frame and
// reports data after it or TCP still open closeWithin later.
func (r *Raw) ExpectClose(t testing.TB, d, closeWithin time.Duration) int {
	t.Helper()
	code, after, open, err := r.ReadClose(d, closeWithin)
	if err != nil {
		t.Fatalf("no close frame: %v", err)
	}
	if after {
		t.Errorf("data after the close frame")
	}
	if open {
		t.Errorf("TCP not closed within %v after the close frame", closeWithin)
	}
	return code
}

// ReadClose reads frames until a close frame (within d) and returns its
// code (1005 without one); then it waits up to closeWithin for TCP to
// close and reports whether data followed or TCP stayed open.
func (r *Raw) ReadClose(d, closeWithin time.Duration) (code int, dataAfter, stillOpen bool, err error) {
	deadline := time.Now().Add(d)
	for {
		op, p, err := r.ReadFrame(time.Until(deadline))
		if err != nil {
			return 0, false, false, err
		}
		if op != 8 {
			continue
		}
		code = 1005
		if len(p) >= 2 {
			code = int(p[0])<<8 | int(p[1])
		}
		_ = r.SetReadDeadline(time.Now().Add(closeWithin))
		if _, err := r.R.ReadByte(); err == nil {
			dataAfter = true
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			stillOpen = true
		}
		return code, dataAfter, stillOpen, nil
	}
}
