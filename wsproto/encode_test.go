package wsproto

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func TestPutHeader(t *testing.T) {
	tests := []struct {
		op   OpCode
		n    int
		want []byte
	}{
		{OpText, 0, bits("1 000 0001 0 0000000")},
		{OpText, 5, bits("1 000 0001 0 0000101")},
		{OpBinary, 125, bits("1 000 0010 0 1111101")},
		{OpText, 126, cat(bits("1 000 0001 0 1111110"), []byte{0, 126})},
		{OpText, 65535, cat(bits("1 000 0001 0 1111110"), []byte{0xff, 0xff})},
		{OpText, 65536, cat(bits("1 000 0001 0 1111111"), []byte{0, 0, 0, 0, 0, 1, 0, 0})},
		{OpPong, 3, bits("1 000 1010 0 0000011")},
		{OpClose, 2, bits("1 000 1000 0 0000010")},
	}
	for _, tt := range tests {
		var hdr [MaxHeaderSize]byte
		k := PutHeader(&hdr, tt.op, tt.n)
		if !bytes.Equal(hdr[:k], tt.want) {
			t.Errorf("PutHeader(%v, %d) = % x, want % x", tt.op, tt.n, hdr[:k], tt.want)
		}
	}
}

// TestAppendFrameDecodesWithGobwas decodes our server frames with an
// independent implementation (gobwas/ws, client side).
func TestAppendFrameDecodesWithGobwas(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		for _, op := range []OpCode{OpText, OpBinary} {
			payload := []byte(rep(n))
			frame := AppendFrame([]byte("prefix"), op, payload)
			if !bytes.HasPrefix(frame, []byte("prefix")) {
				t.Fatal("AppendFrame lost dst's contents")
			}
			r := bytes.NewReader(frame[len("prefix"):])
			f, err := ws.ReadFrame(r)
			if err != nil {
				t.Fatalf("n=%d: %v", n, err)
			}
			if err := ws.CheckHeader(f.Header, ws.StateClientSide); err != nil {
				t.Errorf("n=%d: gobwas client rejects the header: %v", n, err)
			}
			if !f.Header.Fin || f.Header.Masked || byte(f.Header.OpCode) != byte(op) || !bytes.Equal(f.Payload, payload) {
				t.Errorf("n=%d op=%v: decoded fin=%v masked=%v op=%v len=%d", n, op, f.Header.Fin, f.Header.Masked, f.Header.OpCode, len(f.Payload))
			}
			if r.Len() != 0 {
				t.Errorf("n=%d: %d trailing bytes", n, r.Len())
			}
		}
	}
}

func TestAppendClose(t *testing.T) {
	tests := []struct {
		name   string
		code   uint16
		reason string
		want   []byte
	}{
		{"code only", 1000, "", []byte{0x88, 2, 0x03, 0xe8}},
		{"code and reason", 4001, "unauthorized", cat([]byte{0x88, 14, 0x0f, 0xa1}, []byte("unauthorized"))},
		{"no status", 0, "ignored", []byte{0x88, 0}},
		{"1005 is never sent", CloseNoStatus, "", []byte{0x88, 0}},
		{"123-byte reason fits", 1001, rep(123), cat([]byte{0x88, 125, 0x03, 0xe9}, []byte(rep(123)))},
		{"124-byte reason is cut", 1001, rep(124), cat([]byte{0x88, 125, 0x03, 0xe9}, []byte(rep(123)))},
		// 122 ASCII bytes then a 2-byte character: it does not fit in 123,
		// so the cut falls before it rather than inside it.
		{"cut at a character boundary", 1002, rep(122) + "é", cat([]byte{0x88, 124, 0x03, 0xea}, []byte(rep(122)))},
	}
	for _, tt := range tests {
		got := AppendClose(nil, tt.code, tt.reason)
		if !bytes.Equal(got, tt.want) {
			t.Errorf("%s: AppendClose = % x, want % x", tt.name, got, tt.want)
		}
		if len(got) > 2+125 || !utf8.Valid(got[min(len(got), 4):]) {
			t.Errorf("%s: invalid close frame % x", tt.name, got)
		}
	}
}

// TestServerFramesParseAsClientFrames masks our server frames the way a
// client would and parses them back: the encoder and the parser agree.
func TestServerFramesParseAsClientFrames(t *testing.T) {
	for _, n := range []int{0, 7, 125, 126, 1000, 65535, 65536} {
		payload := strings.Repeat("é", n/2) + rep(n%2)
		frame := AppendFrame(nil, OpText, []byte(payload))
		masked := maskServerFrame(frame)
		p := &Parser{MaxMessage: 1 << 20}
		f, m, err := p.Next(masked)
		if err != nil || m != len(masked) || f.Op != OpText || string(f.Payload) != payload {
			t.Errorf("n=%d: Next = %v, %d/%d, %v", n, f.Op, m, len(masked), err)
		}
	}
	c := maskServerFrame(AppendClose(nil, 4004, "replaced"))
	f, _, err := (&Parser{}).Next(c)
	if err != nil || f.Op != OpClose || f.CloseCode != 4004 || string(f.Payload) != "replaced" {
		t.Errorf("close: %+v %v", f, err)
	}
}

// maskServerFrame turns an unmasked frame into a masked one with testMask.
func maskServerFrame(frame []byte) []byte {
	hl := 2
	switch frame[1] & 0x7f {
	case 126:
		hl = 4
	case 127:
		hl = 10
	}
	out := append([]byte(nil), frame[:hl]...)
	out[1] |= 0x80
	out = append(out, testMask[:]...)
	for i, c := range frame[hl:] {
		out = append(out, c^testMask[i%4])
	}
	return out
}

func TestEncodeAllocs(t *testing.T) {
	payload := []byte(rep(100))
	dst := make([]byte, 0, 256)
	if a := testing.AllocsPerRun(100, func() { dst = AppendFrame(dst[:0], OpText, payload) }); a != 0 {
		t.Errorf("AppendFrame: %v allocs, want 0", a)
	}
	if a := testing.AllocsPerRun(100, func() { dst = AppendClose(dst[:0], 4003, "idle timeout") }); a != 0 {
		t.Errorf("AppendClose: %v allocs, want 0", a)
	}
	var hdr [MaxHeaderSize]byte
	if a := testing.AllocsPerRun(100, func() { PutHeader(&hdr, OpText, 70000) }); a != 0 {
		t.Errorf("PutHeader: %v allocs, want 0", a)
	}
}
