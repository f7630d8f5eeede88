package bench

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// wsConn is a minimal RFC 6455 client connection, written for the harness
// rather than taken from a library so that one process can hold ~10,000
// of them cheaply and so that the reader knows when its buffer is empty
// (Buffered), which is when cumulative acks are flushed.
//
// Client frames carry a zero masking key: masking is then the identity, so
// payloads are written as they are (legal per §5.3; the key's
// unpredictability protects proxies, not a loopback benchmark).
//
// Reads happen on one goroutine; writes are serialised by wmu.
type wsConn struct {
	nc  net.Conn
	br  *bufio.Reader
	msg []byte // current message payload; valid until the next read

	wmu  sync.Mutex
	wbuf []byte
}

// closeError is a close frame received from the server.
type closeError struct{ code int }

func (e closeError) Error() string { return "websocket closed by server: " + strconv.Itoa(e.code) }

// httpStatusError is a non-101 answer to the upgrade request.
type httpStatusError struct{ status int }

func (e httpStatusError) Error() string { return "handshake: HTTP " + strconv.Itoa(e.status) }

// dialWS connects to u (ws://host:port/path?query) from local address
// laddr (nil: any) and performs the upgrade.
func dialWS(u *url.URL, laddr net.Addr, timeout time.Duration) (*wsConn, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: laddr}
	nc, err := d.Dial("tcp", u.Host)
	if err != nil {
		return nil, err
	}
	c := &wsConn{nc: nc, br: bufio.NewReaderSize(nc, 4096)}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	req := make([]byte, 0, 256+len(u.RawQuery))
	req = append(req, "GET "...)
	req = append(req, u.RequestURI()...)
	req = append(req, " HTTP/1.1\r\nHost: "...)
	req = append(req, u.Host...)
	req = append(req, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"...)
	if _, err := nc.Write(req); err != nil {
		nc.Close()
		return nil, err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		nc.Close()
		return nil, err
	}
	// "HTTP/1.1 101 Switching Protocols"
	f := bytes.Fields(line)
	if len(f) < 2 {
		nc.Close()
		return nil, fmt.Errorf("handshake: bad status line %q", line)
	}
	status, _ := strconv.Atoi(string(f[1]))
	for {
		h, err := c.br.ReadSlice('\n')
		if err != nil {
			nc.Close()
			return nil, err
		}
		if len(bytes.TrimSpace(h)) == 0 {
			break
		}
	}
	if status != 101 {
		nc.Close()
		return nil, httpStatusError{status}
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// writeText sends one masked text frame holding p.
func (c *wsConn) writeText(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = appendFrame(c.wbuf[:0], 0x1, p)
	_, err := c.nc.Write(c.wbuf)
	return err
}

// writeTexts sends several text frames in one write.
func (c *wsConn) writeTexts(ps ...[]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = c.wbuf[:0]
	for _, p := range ps {
		c.wbuf = appendFrame(c.wbuf, 0x1, p)
	}
	_, err := c.nc.Write(c.wbuf)
	return err
}

func (c *wsConn) writeControl(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = appendFrame(c.wbuf[:0], op, p)
	_, err := c.nc.Write(c.wbuf)
	return err
}

// appendFrame appends a FIN frame with opcode op and a zero mask key.
func appendFrame(dst []byte, op byte, p []byte) []byte {
	dst = append(dst, 0x80|op)
	switch n := len(p); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, 0, 0, 0, 0)
	return append(dst, p...)
}

var errProtocol = errors.New("websocket protocol error from server")

// readMessage returns the next text message (valid until the next call),
// answering pings and turning a close frame into closeError.
func (c *wsConn) readMessage() ([]byte, error) {
	c.msg = c.msg[:0]
	for {
		var hdr [14]byte
		if _, err := readFull(c.br, hdr[:2]); err != nil {
			return nil, err
		}
		fin := hdr[0]&0x80 != 0
		op := hdr[0] & 0x0F
		masked := hdr[1]&0x80 != 0
		n := uint64(hdr[1] & 0x7F)
		switch n {
		case 126:
			if _, err := readFull(c.br, hdr[2:4]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(hdr[2:4]))
		case 127:
			if _, err := readFull(c.br, hdr[2:10]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(hdr[2:10])
		}
		if n > 64<<20 {
			return nil, errProtocol
		}
		var mask [4]byte
		if masked {
			if _, err := readFull(c.br, mask[:]); err != nil {
				return nil, err
			}
		}
		start := len(c.msg)
		if cap(c.msg)-start < int(n) {
			nb := make([]byte, start, start+int(n)+512)
			copy(nb, c.msg)
			c.msg = nb
		}
		c.msg = c.msg[:start+int(n)]
		if _, err := readFull(c.br, c.msg[start:]); err != nil {
			return nil, err
		}
		if masked {
			for i := start; i < len(c.msg); i++ {
				c.msg[i] ^= mask[(i-start)&3]
			}
		}
		switch op {
		case 0x8: // close
			code := 1005
			if n >= 2 {
				code = int(binary.BigEndian.Uint16(c.msg[start:]))
			}
			_ = c.writeControl(0x8, c.msg[start:start+min(int(n), 2)])
			return nil, closeError{code}
		case 0x9: // ping
			p := append([]byte(nil), c.msg[start:]...)
			c.msg = c.msg[:start]
			if err := c.writeControl(0xA, p); err != nil {
				return nil, err
			}
			continue
		case 0xA: // pong
			c.msg = c.msg[:start]
			continue
		}
		if fin {
			return c.msg, nil
		}
	}
}

func readFull(br *bufio.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := br.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// buffered reports bytes already read from the socket but not yet parsed.
func (c *wsConn) buffered() int { return c.br.Buffered() }

func (c *wsConn) close() error { return c.nc.Close() }

// --- tiny JSON field extraction for the hot frames (msg, sent, pong) ---
//
// The server encodes these frames itself with a fixed field order and the
// harness chooses every body and cmid, so a key search is exact here and
// far cheaper than encoding/json on 10^5–10^6 frames per second.

// frameType returns the value of "type" when it is the first field.
func frameType(p []byte) []byte {
	const pre = `{"type":"`
	if !bytes.HasPrefix(p, []byte(pre)) {
		return nil
	}
	rest := p[len(pre):]
	i := bytes.IndexByte(rest, '"')
	if i < 0 {
		return nil
	}
	return rest[:i]
}

// jsonUint returns the unsigned integer value of key in p.
func jsonUint(p []byte, key string) (uint64, bool) {
	i := indexKey(p, key)
	if i < 0 {
		return 0, false
	}
	var v uint64
	j := i
	for ; j < len(p) && p[j] >= '0' && p[j] <= '9'; j++ {
		v = v*10 + uint64(p[j]-'0')
	}
	return v, j > i
}

// jsonStr returns the raw (unescaped) string value of key in p.
func jsonStr(p []byte, key string) ([]byte, bool) {
	i := indexKey(p, key)
	if i < 0 || i >= len(p) || p[i] != '"' {
		return nil, false
	}
	rest := p[i+1:]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil, false
	}
	return rest[:j], true
}

// indexKey returns the index just past `"key":` in p, or -1.
func indexKey(p []byte, key string) int {
	var k [40]byte
	kb := append(k[:0], '"')
	kb = append(kb, key...)
	kb = append(kb, '"', ':')
	i := bytes.Index(p, kb)
	if i < 0 {
		return -1
	}
	return i + len(kb)
}

// parseUintBytes parses a decimal prefix of b.
func parseUintBytes(b []byte) (uint64, int) {
	var v uint64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		v = v*10 + uint64(b[i]-'0')
	}
	return v, i
}
