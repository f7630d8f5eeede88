package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/wstest"
)

// PROTOCOL §7: delivery, ACK and retransmission.

func TestConformanceDeliveryFanout(t *testing.T) {
	t.Parallel()
	s := cfStart(t)
	A, atok := s.user(t, "da")
	B, btok := s.user(t, "db")
	C, ctok := s.user(t, "dc")
	a1 := s.connect(t, atok)
	a1.name = "A1"
	a2 := s.connect(t, atok)
	a2.name = "A2"
	b1 := s.connect(t, btok)
	b1.name = "B1"
	b2 := s.connect(t, btok, "device=b2")
	b2.name = "B2"
	// The group's "created" reaches every connection of every member, the
	// requesting one too (PROTOCOL §13).
	created := a1.group(map[string]any{"type": "group_create", "name": "fan", "members": []int64{B, C}}, "created")
	gid := cfNum(created["group"])
	conv := cfG(gid)
	for _, c := range []*cfConn{a2, b1, b2} {
		if m := c.expectSys("created"); m["conv"] != conv || cfNum(m["seq"]) != 1 || cfNum(m["from"]) != A {
			t.Fatalf("%s: %v", c.name, m)
		}
	}

	t.Run("every connection of every member but the sending one", func(t *testing.T) {
		sent := a1.sendMsg("fan-1", 0, gid, "to the group")
		for _, c := range []*cfConn{a2, b1, b2} {
			m := c.expect("msg")
			if m["conv"] != conv || m["seq"] != sent["seq"] || m["ts"] != sent["ts"] || cfNum(m["from"]) != A || m["cmid"] != "fan-1" || m["body"] != "to the group" || m["kind"] != "text" {
				t.Errorf("%s: %v (sent %v)", c.name, m, sent)
			}
			c.send(map[string]any{"type": "ack", "conv": conv, "seq": m["seq"]})
		}
		a1.quiet(cfQuiet) // the sending connection gets sent only
	})

	t.Run("first transmissions in seq order", func(t *testing.T) {
		const n = 40
		for i := 0; i < n; i++ {
			a1.send(map[string]any{"type": "send", "cmid": fmt.Sprintf("ord-a-%d", i), "group": gid, "body": "a"})
			b1.send(map[string]any{"type": "send", "cmid": fmt.Sprintf("ord-b-%d", i), "group": gid, "body": "b"})
			a1.send(map[string]any{"type": "send", "cmid": fmt.Sprintf("ord-d-%d", i), "to": B, "body": "d"})
		}
		check := func(c *cfConn, want, wantSent int) {
			t.Helper()
			last := map[string]int64{}
			got, sent := 0, 0
			for got < want || sent < wantSent {
				m := c.next()
				switch m["type"] {
				case "sent":
					sent++
					continue
				case "msg":
				default:
					t.Fatalf("%s: unexpected %v", c.name, m)
				}
				cv := m["conv"].(string)
				seq := cfNum(m["seq"])
				if last[cv] != 0 && seq <= last[cv] {
					t.Fatalf("%s: %s seq %d after %d", c.name, cv, seq, last[cv])
				}
				if (c == a2 || c == b2) && last[cv] != 0 && seq != last[cv]+1 {
					t.Fatalf("%s: %s seq %d after %d (gap)", c.name, cv, seq, last[cv])
				}
				last[cv] = seq
				c.send(map[string]any{"type": "ack", "conv": cv, "seq": seq})
				got++
			}
		}
		check(a2, 3*n, 0) // a1's group and direct sends, b1's group sends
		check(b2, 3*n, 0)
		check(a1, n, 2*n) // b1's group sends only
		check(b1, 2*n, n) // a1's sends
		for _, c := range []*cfConn{a1, a2, b1, b2} {
			c.quiet(0)
		}
	})

	t.Run("a later connection gets nothing from the past", func(t *testing.T) {
		sent := a1.sendMsg("past-1", 0, gid, "before C connects")
		for _, c := range []*cfConn{a2, b1, b2} {
			m := c.expect("msg")
			c.send(map[string]any{"type": "ack", "conv": conv, "seq": m["seq"]})
		}
		a1.sendMsg("past-2", C, 0, "direct before C connects")
		a2.expect("msg")
		c := s.connect(t, ctok)
		b3 := s.connect(t, btok)
		c.quiet(2 * cfQuiet)
		b3.quiet(0)
		// Nothing is lost: history has it.
		c.send(map[string]any{"type": "history", "conv": conv, "after": cfNum(sent["seq"]) - 1})
		h := c.expect("history")
		if msgs := h["messages"].([]any); len(msgs) != 1 || msgs[0].(map[string]any)["cmid"] != "past-1" {
			t.Errorf("history %v", h)
		}
		// A message stored now reaches the new connections.
		s2 := a1.sendMsg("past-3", 0, gid, "after")
		for _, x := range []*cfConn{c, b3, a2, b1, b2} {
			if m := x.expect("msg"); m["seq"] != s2["seq"] {
				t.Errorf("%v", m)
			}
		}
	})
}

// TestConformanceResendSchedule: resends at t0 + T·(2^k − 1), k = 1…R,
// identical, then 4005 at t0 + T·(2^(R+1) − 1); never early, ≤ 100 ms late.
func TestConformanceResendSchedule(t *testing.T) {
	t.Parallel()
	const T = 200 * time.Millisecond
	for _, R := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("R=%d", R), func(t *testing.T) {
			t.Parallel()
			s := cfStart(t, "--ack-timeout", T.String(), "--ack-retries", fmt.Sprint(R))
			_, atok := s.user(t, "ra")
			B, btok := s.user(t, "rb")
			a := s.connect(t, atok)
			b := s.connect(t, btok)
			a.sendMsg("x", B, 0, "resend me")
			f0 := b.nextFrame(5 * time.Second)
			t0 := time.Now()
			if f0.M["type"] != "msg" {
				t.Fatalf("first push %s", f0.Raw)
			}
			const early = 15 * time.Millisecond // receive latency of the first push
			for k := 1; k <= R; k++ {
				want := T * time.Duration(1<<k-1)
				lag := cfLag()
				f := b.nextFrame(want + 2*time.Second)
				el := time.Since(t0)
				l := lag()
				if string(f.Raw) != string(f0.Raw) {
					t.Fatalf("resend %d differs: %s vs %s", k, f.Raw, f0.Raw)
				}
				if el < want-early || el > want+100*time.Millisecond+cfSlack()+l {
					t.Errorf("resend %d after %v, want %v (never early, ≤100 ms late; local scheduling lag %v)", k, el, want, l)
				}
			}
			want := T * time.Duration(1<<(R+1)-1)
			lag := cfLag()
			code := b.waitClose(want + 3*time.Second)
			el := time.Since(t0)
			l := lag()
			if code != 4005 {
				t.Fatalf("close %d, want 4005", code)
			}
			if el < want-early || el > want+100*time.Millisecond+cfSlack()+l {
				t.Errorf("4005 after %v, want %v (never early, ≤100 ms late; local scheduling lag %v)", el, want, l)
			}
			// The sender is not affected.
			a.ping()
		})
	}
}

func TestConformanceAck(t *testing.T) {
	t.Parallel()
	const T = 300 * time.Millisecond
	s := cfStart(t, "--ack-timeout", T.String(), "--ack-retries", "1")
	A, atok := s.user(t, "ka")
	B, btok := s.user(t, "kb")
	a := s.connect(t, atok)
	gid := cfNum(a.group(map[string]any{"type": "group_create", "name": "acks", "members": []int64{B}}, "created")["group"])
	X, Y := cfD(A, B), cfG(gid)
	b1 := s.connect(t, btok)
	b1.name = "B1"
	b2 := s.connect(t, btok)
	b2.name = "B2"
	for i := 1; i <= 3; i++ {
		a.sendMsg(fmt.Sprintf("k%d", i), B, 0, "x")
	}
	a.sendMsg("ky", 0, gid, "y")
	for i := 0; i < 4; i++ {
		b1.expect("msg")
		m := b2.expect("msg")
		b2.send(map[string]any{"type": "ack", "conv": m["conv"], "seq": m["seq"]})
	}
	// Cumulative per conversation and per connection: B1 acks X up to 2;
	// acks that cover no push are ignored.
	b1.send(map[string]any{"type": "ack", "conv": X, "seq": 2})
	b1.send(map[string]any{"type": "ack", "conv": Y, "seq": 0})
	b1.send(map[string]any{"type": "ack", "conv": cfD(B, 999999), "seq": 5})
	b1.send(map[string]any{"type": "ack", "conv": "g:999999", "seq": 5})
	got := map[string]int64{}
	for i := 0; i < 2; i++ {
		m := b1.nextFrame(T + time.Second).M
		if m["type"] != "msg" {
			t.Fatalf("B1: %v", m)
		}
		got[m["conv"].(string)] = cfNum(m["seq"])
	}
	if got[X] != 3 || got[Y] != 2 || len(got) != 2 { // Y: 1 is its "created"
		t.Fatalf("resent %v, want %s:3 and %s:2", got, X, Y)
	}
	b1.send(map[string]any{"type": "ack", "conv": X, "seq": 3})
	b1.send(map[string]any{"type": "ack", "conv": Y, "seq": 2})
	// Nothing more for either connection, no 4005 (due at 3T).
	b1.quiet(3*T + 200*time.Millisecond)
	b2.quiet(0)
	b1.ping()
	b2.ping()
	// An ack beyond what was pushed covers all pushes of that conv.
	a.sendMsg("k4", B, 0, "x")
	b1.expect("msg")
	b2.expect("msg")
	b1.send(map[string]any{"type": "ack", "conv": X, "seq": 1000})
	b2.send(map[string]any{"type": "ack", "conv": X, "seq": 4})
	b1.quiet(3*T + 200*time.Millisecond)
	b1.ping()
}

func TestConformanceSlowConsumerInflight(t *testing.T) {
	t.Parallel()
	s := cfStart(t, "--max-inflight", "2", "--ack-timeout", "20s")
	_, atok := s.user(t, "ia")
	B, btok := s.user(t, "ib")
	a := s.connect(t, atok)
	lazy := s.connect(t, btok)
	lazy.name = "lazy"
	busy := s.connect(t, btok)
	busy.name = "busy"
	for i := 1; i <= 3; i++ {
		a.sendMsg(fmt.Sprintf("i%d", i), B, 0, "x")
		m := busy.expect("msg")
		busy.send(map[string]any{"type": "ack", "conv": m["conv"], "seq": m["seq"]})
	}
	for i := 1; i <= 2; i++ {
		if m := lazy.next(); m["type"] != "msg" || cfNum(m["seq"]) != int64(i) {
			t.Fatalf("lazy: %v", m)
		}
	}
	if code := lazy.waitClose(3 * time.Second); code != 4008 {
		t.Fatalf("lazy: close %d, want 4008", code)
	}
	busy.ping()
}

// TestConformanceSlowConsumerOutbound: a client that never reads is closed
// with 4008 once more than --max-outbound bytes wait for it; the server
// drops the queued data (its memory stays bounded) and closes TCP once the
// close frame is written or after 5 s.
func TestConformanceSlowConsumerOutbound(t *testing.T) {
	t.Parallel()
	const maxOut = 65536
	s := cfStart(t, "--max-outbound", fmt.Sprint(maxOut), "--max-inflight", "1000000", "--ack-timeout", "60s")
	_, atok := s.user(t, "oa")
	B, btok := s.user(t, "ob")
	a := s.connect(t, atok)
	srvAddr, _ := net.ResolveTCPAddr("tcp", s.WSAddr)
	// Two raw clients with small receive buffers: late reads after the
	// flood, never never reads at all.
	dial := func(name string) (*cfRaw, *net.TCPAddr) {
		d := net.Dialer{Timeout: 5 * time.Second, Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			_ = c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			return serr
		}}
		nc, err := d.DialContext(context.Background(), "tcp", s.WSAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		r := &cfRaw{t: t, Raw: wstest.NewRaw(nc)}
		r.upgrade("token=" + btok + "&device=" + name)
		if _, p, err := r.readFrame(5 * time.Second); err != nil || !strings.Contains(string(p), `"welcome"`) {
			t.Fatalf("%s: welcome %q %v", name, p, err)
		}
		return r, nc.LocalAddr().(*net.TCPAddr)
	}
	late, lateAddr := dial("late")
	_, neverAddr := dial("never")
	_ = B

	pid := s.PID()
	base := cfVmRSS(t, pid)
	peak := base
	body := strings.Repeat("z", 16000)
	const window, maxMsgs = 8, 4000
	var tExceed time.Time
	pushed, sentN, queued := int64(0), 0, 0
	for sentN < maxMsgs && tExceed.IsZero() {
		for queued-sentN < window {
			a.send(map[string]any{"type": "send", "cmid": fmt.Sprint(queued), "to": B, "body": body})
			queued++
		}
		if m := a.next(); m["type"] != "sent" {
			t.Fatalf("sender: %v", m)
		}
		sentN++
		pushed += 2 * int64(len(body)) // two connections, at least the body each
		if r := cfVmRSS(t, pid); r > peak {
			peak = r
		}
		inKernel := int64(0)
		closed := false
		for _, ca := range []*net.TCPAddr{lateAddr, neverAddr} {
			st, txq, _, ok := cfTCPState(t, srvAddr, ca)
			if !ok || st != "01" {
				closed = true
			}
			_, _, rxq, _ := cfTCPState(t, ca, srvAddr)
			inKernel += txq + rxq
		}
		// pushed − inKernel is a lower bound of what waits in the server.
		if closed || pushed-inKernel > 2*maxOut+2*int64(len(body)) {
			tExceed = time.Now()
		}
	}
	for queued > sentN {
		a.next()
		sentN++
	}
	if tExceed.IsZero() {
		t.Fatalf("no close after %d messages of %d bytes (RSS %d → %d KiB)", sentN, len(body), base, peak)
	}
	t.Logf("over the limit after %d messages; RSS %d → %d KiB", sentN, base, peak)
	// The late reader starts reading now: it gets whole frames, then
	// close 4008, then EOF.
	type lateResult struct {
		msgs int
		code int
		err  error
		at   time.Duration
	}
	lateDone := make(chan lateResult, 1)
	go func() {
		var res lateResult
		for {
			op, p, err := late.readFrame(10 * time.Second)
			if err != nil {
				res.err = err
				break
			}
			if op == 8 {
				if len(p) >= 2 {
					res.code = int(p[0])<<8 | int(p[1])
				}
				res.at = time.Since(tExceed)
				break
			}
			var m map[string]any
			if op != 1 || json.Unmarshal(p, &m) != nil || m["type"] != "msg" {
				res.err = fmt.Errorf("frame op %d %.100q", op, p)
				break
			}
			res.msgs++
		}
		lateDone <- res
	}()
	// The never-reading client: TCP closed within 5 s.
	for {
		st, _, _, ok := cfTCPState(t, srvAddr, neverAddr)
		if !ok || st != "01" {
			break
		}
		if time.Since(tExceed) > 5*time.Second+time.Second {
			t.Fatalf("never-reading client: TCP still open %v after its close was due", time.Since(tExceed))
		}
		time.Sleep(20 * time.Millisecond) // polling kernel state: no event to await
	}
	t.Logf("never-reading client: TCP closed %v after the limit was exceeded", time.Since(tExceed))
	res := <-lateDone
	if res.err != nil || res.code != 4008 {
		t.Errorf("late reader: %d msgs, then close %d / error %v; want whole msg frames, then close 4008", res.msgs, res.code, res.err)
	} else {
		t.Logf("late reader: %d msgs, then 4008 %v after the limit was exceeded", res.msgs, res.at)
	}
	if r := cfVmRSS(t, pid); r > peak {
		peak = r
	}
	bound := int64(32 << 10) // KiB; the flood above sent several MB
	if cfRace {
		bound = 96 << 10 // race detector shadow memory
	}
	if peak-base > bound {
		t.Errorf("server RSS grew by %d KiB (from %d), want < %d KiB", peak-base, base, bound)
	}
	a.ping()
}
