package bench

import (
	"strings"
	"testing"
)

// traceOf shows a conversation's events and every (re)connection, oldest
// first, and keeps only the last soakTrace events.
func TestSoakTrace(t *testing.T) {
	var k soakClient
	k.conn = 1
	k.note('w', "", 0)
	k.note('p', "d:1:2", 1)
	k.note('p', "d:1:3", 1)
	k.note('x', "", 0)
	k.conn = 2
	k.note('w', "", 0)
	k.note('h', "d:1:2", 2)
	got := k.traceOf("d:1:2")
	var kinds []string
	for _, f := range strings.Fields(got) {
		kinds = append(kinds, strings.TrimLeft(f, "0123456789"))
	}
	if want := "w1 p1:1 x1 w2 h2:2"; strings.Join(kinds, " ") != want {
		t.Fatalf("traceOf = %q, events %q, want %q", got, kinds, want)
	}
	for i := 0; i < 2*soakTrace; i++ {
		k.note('p', "d:1:3", uint64(i))
	}
	if got := k.traceOf("d:1:2"); strings.Contains(got, "p") || strings.Contains(got, "h") {
		t.Fatalf("old events kept: %q", got)
	}
}
