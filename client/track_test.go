package client

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func seqs(ms []Message) []int64 {
	s := make([]int64, len(ms))
	for i, m := range ms {
		s[i] = m.Seq
	}
	return s
}

func msg(seq int64) Message { return Message{Conv: "d:1:2", Seq: seq} }

func TestTrackInOrderDedupGap(t *testing.T) {
	tests := []struct {
		name    string
		offers  []int64
		want    []int64
		held    int64
		pending []int64
	}{
		{"in order", []int64{1, 2, 3}, []int64{1, 2, 3}, 3, nil},
		{"duplicates", []int64{1, 1, 2, 1, 2, 3, 3}, []int64{1, 2, 3}, 3, nil},
		{"gap held back", []int64{1, 3, 4}, []int64{1}, 1, []int64{3, 4}},
		{"gap filled", []int64{1, 3, 4, 2}, []int64{1, 2, 3, 4}, 4, nil},
		{"reverse", []int64{4, 3, 2, 1}, []int64{1, 2, 3, 4}, 4, nil},
		{"dup above gap", []int64{3, 3, 1, 2, 3}, []int64{1, 2, 3}, 3, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &convTrack{positioned: true}
			var out []Message
			for _, s := range tt.offers {
				out = tr.offer(msg(s), out)
			}
			if got := seqs(out); !slices.Equal(got, tt.want) {
				t.Errorf("released %v, want %v", got, tt.want)
			}
			if tr.held != tt.held {
				t.Errorf("held %d, want %d", tr.held, tt.held)
			}
			if got := tr.pendingSeqs(); !slices.Equal(got, tt.pending) && len(got)+len(tt.pending) > 0 {
				t.Errorf("pending %v, want %v", got, tt.pending)
			}
			if tr.gap() != (len(tt.pending) > 0) {
				t.Errorf("gap() = %v", tr.gap())
			}
		})
	}
}

func TestTrackPosition(t *testing.T) {
	tr := &convTrack{}
	var out []Message
	for _, s := range []int64{5, 6, 8} {
		out = tr.offer(msg(s), out)
	}
	if len(out) != 0 {
		t.Fatalf("unpositioned track released %v", seqs(out))
	}
	out = tr.position(6, out)
	if len(out) != 0 || tr.held != 6 || tr.delivered != 6 || !tr.gap() {
		t.Fatalf("after position(6): out %v held %d delivered %d pending %v", seqs(out), tr.held, tr.delivered, tr.pendingSeqs())
	}
	out = tr.offer(msg(7), out)
	if got := seqs(out); !slices.Equal(got, []int64{7, 8}) {
		t.Fatalf("released %v, want [7 8]", got)
	}
	// Positioning again is a no-op.
	if out = tr.position(100, out[:0]); len(out) != 0 || tr.held != 8 {
		t.Fatalf("second position changed state: held %d", tr.held)
	}
}

// TestTrackRandomArrivals shuffles seqs 1..n with duplicates and checks
// every seq is released exactly once, in order.
func TestTrackRandomArrivals(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for round := 0; round < 200; round++ {
		n := 1 + r.IntN(50)
		var arrivals []int64
		for s := int64(1); s <= int64(n); s++ {
			arrivals = append(arrivals, s)
			if r.IntN(3) == 0 {
				arrivals = append(arrivals, s)
			}
		}
		r.Shuffle(len(arrivals), func(i, j int) { arrivals[i], arrivals[j] = arrivals[j], arrivals[i] })
		tr := &convTrack{positioned: true}
		var out []Message
		for _, s := range arrivals {
			out = tr.offer(msg(s), out)
		}
		got := seqs(out)
		for i, s := range got {
			if s != int64(i+1) {
				t.Fatalf("round %d: released %v", round, got)
			}
		}
		if len(got) != n || tr.gap() {
			t.Fatalf("round %d: released %d of %d, pending %v", round, len(got), n, tr.pendingSeqs())
		}
	}
}

func TestAckerCoalesces(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := newAcker(20*time.Millisecond, 4)
	// Pushes not yet delivered are not ackable.
	a.pushed("d:1:2", 1, 0, t0)
	a.pushed("d:1:2", 2, 0, t0)
	if !a.next().IsZero() {
		t.Fatal("flush due before delivery")
	}
	a.deliveredTo("d:1:2", 1, t0)
	a.deliveredTo("d:1:2", 2, t0.Add(time.Millisecond))
	if got := a.next(); !got.Equal(t0.Add(20 * time.Millisecond)) {
		t.Fatalf("next = %v, want t0+20ms", got)
	}
	acks := a.flush(nil)
	if len(acks) != 1 || acks[0] != (ack{"d:1:2", 2}) {
		t.Fatalf("acks %v, want one cumulative ack of 2", acks)
	}
	if !a.next().IsZero() {
		t.Fatal("flush still due after flush")
	}
	// Delivery beyond what was pushed here (history) is not acked.
	a.deliveredTo("d:1:2", 10, t0)
	if !a.next().IsZero() {
		t.Fatal("ack for seqs never pushed on this connection")
	}
	// A conversation never pushed here is not acked at all.
	a.deliveredTo("g:7", 5, t0)
	if !a.next().IsZero() {
		t.Fatal("ack for a conversation without pushes")
	}
	// A duplicate push of a delivered seq needs an ack again.
	a.pushed("d:1:2", 3, 10, t0)
	if acks := a.flush(nil); len(acks) != 1 || acks[0].seq != 3 {
		t.Fatalf("acks %v, want ack of 3", acks)
	}
	// A batch of AckBatch ackable pushes is due at once.
	t1 := t0.Add(time.Second)
	for s := int64(1); s <= 4; s++ {
		a.pushed("g:9", s, 0, t1)
	}
	a.deliveredTo("g:9", 3, t1)
	if next := a.next(); !next.Equal(t1.Add(20 * time.Millisecond)) {
		t.Fatalf("3 ackable: next = %v, want t1+20ms", next)
	}
	a.deliveredTo("g:9", 4, t1)
	if next := a.next(); next.After(t1) {
		t.Fatalf("4 ackable: next = %v, want due now", next)
	}
	acks = a.flush(nil)
	if len(acks) != 1 || acks[0] != (ack{"g:9", 4}) {
		t.Fatalf("acks %v", acks)
	}
	a.suppress = true
	a.pushed("g:9", 5, 5, t1)
	if !a.next().IsZero() {
		t.Fatal("suppressed acker wants to flush")
	}
}

func TestAppendAck(t *testing.T) {
	got := string(appendAck(nil, "d:1:2", 17))
	if want := `{"type":"ack","conv":"d:1:2","seq":17}`; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	if got := string(appendJSONString(nil, "a\"b\\c\n\xff é")); got != `"a\"b\\c\u000a\ufffd é"` {
		t.Fatalf("escaping: %s", got)
	}
}

func TestParseConv(t *testing.T) {
	for _, tc := range []struct {
		in      string
		a, b, g int64
		ok      bool
	}{
		{"d:1:2", 1, 2, 0, true}, {"g:7", 0, 0, 7, true}, {"d:2:1", 0, 0, 0, false},
		{"d:01:2", 0, 0, 0, false}, {"g:0", 0, 0, 0, false}, {"x:1", 0, 0, 0, false}, {"d:1", 0, 0, 0, false},
	} {
		a, b, g, ok := ParseConv(tc.in)
		if a != tc.a || b != tc.b || g != tc.g || ok != tc.ok {
			t.Errorf("ParseConv(%q) = %d %d %d %v", tc.in, a, b, g, ok)
		}
	}
	if DirectConv(5, 3) != "d:3:5" || GroupConv(4) != "g:4" {
		t.Error("conv ids")
	}
}
