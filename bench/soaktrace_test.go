package bench

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
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

// A worker records a client's pushes for the soak check only once
// prepSoak ran: the coordinator runs it on every worker before any sends.
func TestPrepSoakRecordsPushes(t *testing.T) {
	u, _ := url.Parse("ws://127.0.0.1:1/ws")
	p := newPool(u, 0, time.Second, 64)
	defer close(p.quit)
	p.noAck = true
	c := p.newClient(clientSpec{UID: 31, Token: "t"})
	p.clients = []*client{c}
	push := func(seq int) {
		c.onMsg([]byte(`{"type":"msg","conv":"d:10:31","seq":` + strconv.Itoa(seq) + `,"from":10,"ts":1,"cmid":"c","body":"hi"}`))
	}
	push(1)
	if c.sk.convs["d:10:31"] != nil {
		t.Fatal("recorded before soak mode")
	}
	prepSoak(p)
	push(1)
	push(2)
	if got := c.held("d:10:31"); got != 2 {
		t.Fatalf("held %d after prepSoak, want 2", got)
	}
}
