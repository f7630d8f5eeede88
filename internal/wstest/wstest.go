// Package wstest builds and reads raw WebSocket frames for tests that must
// send what no well-behaved client library would (unmasked frames, reserved
// bits, bad opcodes, split fragments) and read the server's bytes as sent.
package wstest

import (
	"errors"
	"io"
)

// ClientFrame returns one client frame with the given FIN bit, opcode
// (reserved bits may be or-ed into op) and payload, masked with key unless
// masked is false.
func ClientFrame(fin bool, op byte, payload []byte, masked bool, key [4]byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	mbit := byte(0)
	if masked {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		f = append(f, mbit|byte(n))
	case n < 65536:
		f = append(f, mbit|126, byte(n>>8), byte(n))
	default:
		f = append(f, mbit|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	if masked {
		f = append(f, key[:]...)
	}
	start := len(f)
	f = append(f, payload...)
	if masked {
		for i := start; i < len(f); i++ {
			f[i] ^= key[(i-start)%4]
		}
	}
	return f
}

// ErrMasked reports a server frame with the mask bit set (RFC 6455 §5.1
// forbids it).
var ErrMasked = errors.New("server frame is masked")

// ReadServerFrame reads one server frame from r.
func ReadServerFrame(r io.Reader) (op byte, payload []byte, err error) {
	var h [8]byte
	if _, err = io.ReadFull(r, h[:2]); err != nil {
		return 0, nil, err
	}
	if h[1]&0x80 != 0 {
		return 0, nil, ErrMasked
	}
	op = h[0] & 0x0F
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		if _, err = io.ReadFull(r, h[:2]); err != nil {
			return 0, nil, err
		}
		n = uint64(h[0])<<8 | uint64(h[1])
	case 127:
		if _, err = io.ReadFull(r, h[:8]); err != nil {
			return 0, nil, err
		}
		n = 0
		for _, x := range h {
			n = n<<8 | uint64(x)
		}
		if n > 1<<30 {
			return 0, nil, errors.New("server frame longer than 1 GiB")
		}
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r, payload)
	return op, payload, err
}
