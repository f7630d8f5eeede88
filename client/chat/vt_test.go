package chat

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

// screen is the small part of a VT100/xterm that a terminal shows of the
// chat client's output: printable text with auto-wrap (xterm's deferred
// wrap at the last column), CR, LF, BS, TAB, cursor moves (CSI A B C D),
// erase in line (CSI K) and SGR (CSI m, ignored). Any other control or
// escape sequence is recorded in bad, so that the test fails rather than
// judging a screen this emulator cannot draw.
type screen struct {
	mu      sync.Mutex
	rows    int
	cols    int
	cells   [][]rune
	x, y    int
	wrap    bool   // the cursor is past the last column (deferred wrap)
	pending []byte // an incomplete UTF-8 sequence or escape sequence
	bad     []string
	changed chan struct{} // closed and replaced on every write
}

func newScreen(rows, cols int) *screen {
	s := &screen{rows: rows, cols: cols, changed: make(chan struct{})}
	for i := 0; i < rows; i++ {
		s.cells = append(s.cells, s.blank())
	}
	return s
}

func (s *screen) blank() []rune {
	r := make([]rune, s.cols)
	for i := range r {
		r[i] = ' '
	}
	return r
}

func (s *screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := append(s.pending, p...)
	s.pending = nil
	for len(b) > 0 {
		n := s.step(b)
		if n == 0 { // incomplete: wait for more bytes
			s.pending = append([]byte(nil), b...)
			break
		}
		b = b[n:]
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return len(p), nil
}

// step consumes one character or sequence from b; 0 when b holds only its
// beginning.
func (s *screen) step(b []byte) int {
	switch c := b[0]; {
	case c == 0x1b:
		return s.escape(b)
	case c == '\r':
		s.x, s.wrap = 0, false
	case c == '\n':
		s.lineFeed()
	case c == '\b':
		if s.x > 0 {
			s.x--
		}
		s.wrap = false
	case c == '\t':
		s.x = min((s.x/8+1)*8, s.cols-1)
	case c == 0x07: // bell
	case c < 0x20 || c == 0x7f:
		s.bad = append(s.bad, fmt.Sprintf("control %#x", c))
	default:
		if !utf8.FullRune(b) {
			return 0
		}
		r, n := utf8.DecodeRune(b)
		s.put(r)
		return n
	}
	return 1
}

func (s *screen) escape(b []byte) int {
	if len(b) < 2 {
		return 0
	}
	if b[1] != '[' {
		s.bad = append(s.bad, fmt.Sprintf("escape %q", b[:2]))
		return 2
	}
	i := 2
	for i < len(b) && (b[i] >= '0' && b[i] <= '9' || b[i] == ';' || b[i] == '?') {
		i++
	}
	if i == len(b) {
		return 0
	}
	params, final := string(b[2:i]), b[i]
	n := 1
	if v, err := strconv.Atoi(params); err == nil && v > 0 {
		n = v
	}
	switch final {
	case 'A':
		s.y = max(s.y-n, 0)
	case 'B':
		s.y = min(s.y+n, s.rows-1)
	case 'C':
		s.x = min(s.x+n, s.cols-1)
	case 'D':
		s.x = max(s.x-n, 0)
	case 'K':
		switch params {
		case "", "0":
			for x := s.x; x < s.cols; x++ {
				s.cells[s.y][x] = ' '
			}
		case "2":
			s.cells[s.y] = s.blank()
		default:
			s.bad = append(s.bad, "CSI "+params+"K")
		}
	case 'm':
	default:
		s.bad = append(s.bad, fmt.Sprintf("CSI %q", b[:i+1]))
	}
	s.wrap = false
	return i + 1
}

func (s *screen) lineFeed() {
	s.wrap = false
	if s.y < s.rows-1 {
		s.y++
		return
	}
	s.cells = append(s.cells[1:], s.blank())
}

func (s *screen) put(r rune) {
	if s.wrap {
		s.x = 0
		s.lineFeed()
	}
	s.cells[s.y][s.x] = r
	if s.x == s.cols-1 {
		s.wrap = true
	} else {
		s.x++
	}
}

// lines are the screen's rows without trailing blanks.
func (s *screen) lines() []string {
	out := make([]string, s.rows)
	for i, r := range s.cells {
		out[i] = strings.TrimRight(string(r), " ")
	}
	return out
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines(), "\n")
}

// cursorLine is the row the cursor is on: the prompt and the typed input.
func (s *screen) cursorLine() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines()[s.y]
}

// rowOf is the first row containing sub (-1: none) and the cursor's row.
func (s *screen) rowOf(sub string) (row, cursor int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, l := range s.lines() {
		if strings.Contains(l, sub) {
			return i, s.y
		}
	}
	return -1, s.y
}

// snapshot is the screen's rows without trailing blanks.
func (s *screen) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines()
}

// count is how many rows contain sub.
func (s *screen) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lines() {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// TestScreen checks the emulator on what x/term's line editor writes.
func TestScreen(t *testing.T) {
	s := newScreen(3, 12)
	fmt.Fprint(s, "ab\r\nprompt> xy")
	fmt.Fprint(s, "\r\x1b[Kmsg\r\nprompt> xy")
	if got := s.String(); got != "ab\nmsg\nprompt> xy" || s.cursorLine() != "prompt> xy" {
		t.Fatalf("screen:\n%s", got)
	}
	fmt.Fprint(s, "zw\r\n")         // a full row: deferred wrap, then CR LF (no blank row)
	fmt.Fprint(s, "é\x1b[D\x1b[C!") // UTF-8, moves
	if got := s.String(); got != "msg\nprompt> xyzw\né!" || len(s.bad) != 0 {
		t.Fatalf("screen:\n%s\nbad %v", got, s.bad)
	}
	fmt.Fprint(s, "abcdefghijklmn") // wraps
	if got := s.String(); got != "prompt> xyzw\né!abcdefghij\nklmn" {
		t.Fatalf("screen:\n%s", got)
	}
	fmt.Fprint(s, "\x1b[2J")
	if len(s.bad) != 1 {
		t.Fatalf("unsupported sequence not recorded: %v", s.bad)
	}
}
