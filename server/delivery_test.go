package server

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/wstest"
	"github.com/magpie-im/magpie/wheel"
)

// Tests of the delivery path of issue 11: the window bound, one write
// path, drain slices, routing only to loops with recipients, and the
// inbox's backpressure.

// windowConn returns one open connection of a loop without gnet (writes go
// to a resetConn), with --max-inflight 8 and an hour's --ack-timeout.
func windowConn(t *testing.T) (*wheel.Wheel, *Server, *loop, *conn) {
	w := wheel.New(wheel.Options{})
	t.Cleanup(w.Stop)
	s := &Server{wheel: w, m: newMetrics(func() float64 { return 0 })}
	s.cfg.MaxInflight, s.cfg.AckTimeout = 8, time.Hour
	lp := &loop{srv: s}
	f := &resetConn{h: &handler{srv: s}}
	c := &conn{gc: f, lp: lp, state: stOpen, uid: 1}
	c.idle.Init(w, func() {})
	c.retx.Init(w, func() {})
	t.Cleanup(c.retx.Stop)
	f.ctx = c
	return w, s, lp, c
}

// TestWindowBoundWithHoles: acks of one conversation behind an unacked
// push of another leave holes; the window must still hold at most
// --max-inflight + winSlack entries, and never close 4008 for holes.
func TestWindowBoundWithHoles(t *testing.T) {
	_, s, lp, c := windowConn(t)
	c.push(&pushMsg{frame: []byte("a1"), conv: "d:1:2", seq: 1}) // never acked
	var r request
	for seq := uint64(1); seq <= 10000; seq++ {
		c.push(&pushMsg{frame: []byte("b"), conv: "g:7", seq: seq})
		r = request{has: hasConv | hasSeq, conv: []byte("g:7"), seq: seq}
		c.ack(&r)
		lp.flush()
		if c.state != stOpen {
			t.Fatalf("closed after %d pushes with 1-2 unacked", seq)
		}
		if n := len(c.win.ents); n > s.cfg.MaxInflight+winSlack {
			t.Fatalf("window holds %d entries (live %d), bound %d", n, c.win.live, s.cfg.MaxInflight+winSlack)
		}
		if c.win.live != 1 {
			t.Fatalf("live %d, want 1", c.win.live)
		}
	}
	// The unacked push is still there and still acks.
	r = request{has: hasConv | hasSeq, conv: []byte("d:1:2"), seq: 1}
	c.ack(&r)
	if c.win != nil && c.win.live != 0 {
		t.Fatalf("live %d after acking the last push", c.win.live)
	}
}

// TestSendErrorDoesNotOvertakeSent: sends read in one go are committed in
// one batch; the replies (sent, or the committer's error) leave in the
// order of the sends.
func TestSendErrorDoesNotOvertakeSent(t *testing.T) {
	ts := startServer(t, nil)
	_, tokA := ts.user("ova")
	uidB, _ := ts.user("ovb")
	a := login(t, ts, tokA)
	var buf bytes.Buffer
	const n = 40
	for i := 0; i < n; i++ {
		to := uidB
		if i%2 == 1 {
			to = 999999 // unknown uid: not_found from the committer
		}
		fmt.Fprintf(&buf, `{"type":"send","cmid":"c%d","to":%d,"body":"x"}`+"\n", i, to)
	}
	// One WebSocket message per send, all written before any reply.
	var frames [][]byte
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		frames = append(frames, []byte(line))
	}
	for _, f := range frames {
		a.send(string(f))
	}
	for i := 0; i < n; i++ {
		m := a.next()
		want := "sent"
		if i%2 == 1 {
			want = "error"
		}
		if m["type"] != want || m["cmid"] != fmt.Sprintf("c%d", i) {
			t.Fatalf("reply %d: %v, want %s for c%d", i, m, want, i)
		}
	}
}

// TestPongAfterEarlierReplies: replies and pongs of one read leave in the
// order of the requests (one write queue per connection).
func TestPongAfterEarlierReplies(t *testing.T) {
	ts := startServer(t, nil)
	_, tok := ts.user("pong")
	nc, _, err := rawDial(ts.ws, tok)
	if err != nil {
		t.Fatal(err)
	}
	br := nc.R
	defer nc.Close()
	key := [4]byte{9, 8, 7, 6}
	var b []byte
	b = append(b, wstest.ClientFrame(true, 1, []byte(`{"type":"nope","rid":"r1"}`), true, key)...)
	b = append(b, wstest.ClientFrame(true, 1, []byte(`{"type":"ping","rid":"r2"}`), true, key)...)
	b = append(b, wstest.ClientFrame(true, 9, []byte("p3"), true, key)...) // control ping
	b = append(b, wstest.ClientFrame(true, 1, []byte(`{"type":"ack"}`), true, key)...)
	if _, err := nc.Write(b); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	want := []string{`"rid":"r1"`, `"rid":"r2"`, "p3", `"bad_request"`}
	for i, w := range want {
		op, p, err := wstest.ReadServerFrame(br)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(p, []byte(w)) || (i == 2) != (op == 10) {
			t.Fatalf("frame %d: op %d %q, want %s", i, op, p, w)
		}
	}
}

// TestFanoutSlicesServeOtherConnections: a loop runs a large fan-out in
// slices and serves its other connections between them: a member that
// receives its push in the first slice pings, and gets the pong before the
// last slice is written (so before every member has the push).
func TestFanoutSlicesServeOtherConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const members = 6000 // about 47 turns of drainConns
	dir := t.TempDir()
	uids, gid := seedGroup(t, dir, members+1)
	ts := startServer(t, func(c *Config) { c.Data = dir; c.Loops = 1 })
	// uids[1] is the group's first member after the creator: the router
	// meets its connection first, so its push is in the first slice.
	var got atomic.Int64
	conns := make([]*rawPeer, 0, members)
	for i := 1; i <= members; i++ {
		conns = append(conns, dialPeer(t, ts, uids[i]))
	}
	pinger := conns[0]
	var wg sync.WaitGroup
	for _, p := range conns[1:] {
		wg.Add(1)
		go func(p *rawPeer) {
			defer wg.Done()
			if _, err := p.nextMsg(); err == nil {
				got.Add(1)
			}
		}(p)
	}
	pub := login(t, ts, mustMint(ts, uids[0]))
	pub.send(map[string]any{"type": "send", "cmid": "big", "group": gid, "body": "slice me"})
	if _, err := pinger.nextMsg(); err != nil {
		t.Fatal(err)
	}
	pinger.write(`{"type":"ping","rid":"during"}`)
	for {
		p, err := pinger.nextText()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(p, []byte(`"pong"`)) {
			break
		}
	}
	t.Logf("the pong came when %d of %d other members had the push", got.Load(), members-1)
	if n := got.Load(); n >= int64(members-1) {
		t.Errorf("pong came after all %d other members had the push: the fan-out did not yield", n)
	}
	wg.Wait()
	if n := got.Load(); n != int64(members-1) {
		t.Fatalf("%d of %d members got the push", n, members-1)
	}
}

// TestLoopWithoutRecipientsNotWoken: a committed batch wakes only the
// loops that hold its sender or recipients.
func TestLoopWithoutRecipientsNotWoken(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Loops = 2 })
	_, tokA := ts.user("lwa")
	_, tokB := ts.user("lwb")
	uidC, tokC := ts.user("lwc")
	// gnet hands accepted connections to its loops round-robin: A → first
	// loop, B → second, C → first again.
	a := login(t, ts, tokA)
	login(t, ts, tokB)
	c := login(t, ts, tokC)
	for i := 0; i < 5; i++ {
		a.send(map[string]any{"type": "send", "cmid": fmt.Sprint("m", i), "to": uidC, "body": "hi"})
		a.nextType("sent")
		c.nextType("msg")
	}
	l0 := ts.metric(`magpie_loop_fanout_entries_total{loop="0"}`)
	l1 := ts.metric(`magpie_loop_fanout_entries_total{loop="1"}`)
	if l0 < 5 || l1 != 0 {
		t.Fatalf("fan-out entries: loop 0 %v (want ≥ 5), loop 1 %v (want 0)", l0, l1)
	}
}

// TestInboxBackpressure: with a small --inbox and a loop that cannot keep
// up, fan-out makes the router wait for that loop, the committer wait for
// the router, and Submit answer rate_limited (counted), instead of
// queueing without bound. The slow loop is made deterministic: the test
// stalls the loop that holds half the members (not the publisher's) with
// an inbox entry that blocks until released, and keeps sending until a
// send is answered rate_limited — which never happens if anything on the
// path grows without bound. Every send gets exactly one reply, and every
// stored message then reaches every member in order.
func TestInboxBackpressure(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const members = 1000
	dir := t.TempDir()
	uids, gid := seedGroup(t, dir, members+1)
	ts := startServer(t, func(c *Config) {
		c.Data = dir
		c.Loops = 2
		c.Inbox = 200 // smaller than one message's fan-out to a loop
		c.QueueSize = 16
		c.MaxInflight = 1 << 16
		c.AckTimeout = time.Minute // the members ack nothing
	})
	pub := dialPeer(t, ts, uids[0])
	peers := make([]*rawPeer, 0, members)
	for i := 1; i <= members; i++ {
		peers = append(peers, dialPeer(t, ts, uids[i]))
	}
	// Stall a loop that has members and not the publisher.
	loopOf := func(uid uint64) *loop {
		cs := ts.srv.sess.lookup(uid)
		if len(cs) != 1 {
			t.Fatalf("uid %d has %d connections", uid, len(cs))
		}
		return cs[0].lp
	}
	pubLoop := loopOf(uids[0])
	var victim *conn
	onStalled := 0
	for _, uid := range uids[1:] {
		if lp := loopOf(uid); lp != pubLoop {
			victim = ts.srv.sess.lookup(uid)[0]
			onStalled++
		}
	}
	if onStalled < 2*200 {
		t.Fatalf("only %d members on the other loop", onStalled)
	}
	stalled, release := make(chan struct{}), make(chan struct{})
	victim.lp.put(entry{kind: entCall, items: []item{{c: victim}}, call: func(*conn) {
		close(stalled)
		<-release // blocks that event loop: a loop far slower than the fan-out
	}}, false)
	<-stalled
	var released sync.Once
	defer released.Do(func() { close(release) })

	type tally struct {
		stored, limited int
		unexpected      []string
		err             error
	}
	var limited atomic.Bool
	firstLimited := make(chan struct{})
	replies := make(chan tally, 1)
	var sent atomic.Int64 // sends written; the reader stops when all are answered
	allWritten := make(chan struct{})
	// The reader stops at the reply that answers the last send written
	// (or at a read error); it reports to the test goroutine, which may
	// have returned already. When allWritten closes, a reply is still due:
	// the first rate_limited means the committer holds a batch it cannot
	// hand on.
	go func() {
		var n tally
		for {
			p, err := pub.nextText()
			if err != nil {
				n.err = err
				replies <- n
				return
			}
			switch {
			case bytes.Contains(p, []byte(`"type":"sent"`)):
				n.stored++
			case bytes.Contains(p, []byte(`"rate_limited"`)):
				n.limited++
				if limited.CompareAndSwap(false, true) {
					close(firstLimited)
				}
			case bytes.Contains(p, []byte(`"type":"error"`)):
				n.unexpected = append(n.unexpected, string(p))
			}
			select {
			case <-allWritten:
				if int64(n.stored+n.limited) == sent.Load() {
					replies <- n
					return
				}
			default:
			}
		}
	}()
	// Chunks of 10 until a send was answered rate_limited and the committer
	// has waited for the router; 5,000 sends without both means the path
	// queued without bound.
	const chunk, maxSends = 10, 5000
	for k := 0; !limited.Load() || ts.metric("magpie_router_waits_total") == 0; k++ {
		if int(sent.Load()) >= maxSends {
			t.Fatalf("%d sends and no backpressure while a loop was stalled (rate_limited seen: %v)", maxSends, limited.Load())
		}
		var b []byte
		for i := 0; i < chunk; i++ {
			f := fmt.Sprintf(`{"type":"send","cmid":"c%d-%d","group":%d,"body":"x"}`, k, i, gid)
			b = append(b, wstest.ClientFrame(true, 1, []byte(f), true, pub.key)...)
		}
		sent.Add(chunk)
		if _, err := pub.Write(b); err != nil {
			t.Fatal(err)
		}
		select {
		case <-firstLimited:
		case <-time.After(5 * time.Millisecond): // pacing the load; the event is awaited above
		}
	}
	if w := ts.metric("magpie_router_waits_total"); w == 0 {
		t.Error("the committer never waited for the router")
	}
	// No open entry grew past --inbox items (plus the one add that filled
	// it), though one message fans out to more on the stalled loop.
	if n := ts.metric("magpie_router_open_items"); n > 2*(200+1) {
		t.Errorf("open entries hold %v items, want at most --inbox per loop", n)
	}
	if w := ts.metric(fmt.Sprintf(`magpie_loop_inbox_waits_total{loop="%d"}`, victim.lp.idx)); w == 0 {
		t.Error("the router never waited for the stalled loop's inbox")
	}
	close(allWritten) // no more sends: sent is final
	released.Do(func() { close(release) })
	var n tally
	select {
	case n = <-replies:
	case <-time.After(60 * time.Second):
		t.Fatal("not every send was answered")
	}
	if n.err != nil {
		t.Fatalf("publisher: %v", n.err)
	}
	for _, u := range n.unexpected {
		t.Errorf("unexpected %s", u)
	}
	t.Logf("%d sends: %d stored, %d answered rate_limited", sent.Load(), n.stored, n.limited)
	if int64(n.stored+n.limited) != sent.Load() || n.limited == 0 {
		t.Fatalf("replies %+v for %d sends", n, sent.Load())
	}
	if e := ts.metric(`magpie_error_frames_total{code="rate_limited"}`); int(e) != n.limited {
		t.Errorf("rate_limited counted %v, sent %d", e, n.limited)
	}
	var wg sync.WaitGroup
	errs := make(chan error, members)
	for _, p := range peers {
		wg.Add(1)
		go func(p *rawPeer) {
			defer wg.Done()
			last := uint64(0)
			for k := 0; k < n.stored; k++ {
				seq, err := p.nextMsg()
				if err != nil {
					errs <- err
					return
				}
				if seq <= last {
					errs <- fmt.Errorf("seq %d after %d", seq, last)
					return
				}
				last = seq
			}
		}(p)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestWelcomeAnnouncesAckPacing: welcome carries ack_delay_ms (--ack-delay,
// at most a tenth of --ack-timeout) and max_inflight.
func TestWelcomeAnnouncesAckPacing(t *testing.T) {
	for _, tc := range []struct {
		delay, timeout time.Duration
		want           string
	}{
		{20 * time.Millisecond, 5 * time.Second, `"ack_delay_ms":20,"max_inflight":77`},
		{20 * time.Millisecond, 100 * time.Millisecond, `"ack_delay_ms":10,"max_inflight":77`},
		{0, 5 * time.Second, `"ack_delay_ms":0,"max_inflight":77`},
	} {
		ts := startServer(t, func(c *Config) { c.AckDelay, c.AckTimeout, c.MaxInflight = tc.delay, tc.timeout, 77 })
		uid, _ := ts.user("w" + strconv.Itoa(int(tc.timeout.Milliseconds())) + strconv.Itoa(int(tc.delay.Milliseconds())))
		p := dialPeer(t, ts, uid)
		if !bytes.Contains(p.welcome, []byte(tc.want)) {
			t.Errorf("--ack-delay %v --ack-timeout %v: welcome %s, want %s", tc.delay, tc.timeout, p.welcome, tc.want)
		}
		if !bytes.Contains(p.welcome, []byte(`"version":2`)) {
			t.Errorf("welcome %s: version must be 2 (PROTOCOL §3)", p.welcome)
		}
		ts.stop()
	}
}

// rawPeer is an authenticated wstest.Raw, cheap enough for thousands in
// one test.
type rawPeer struct {
	*wstest.Raw
	key     [4]byte
	welcome []byte
}

func dialPeer(t testing.TB, ts *testServer, uid uint64) *rawPeer {
	t.Helper()
	r, welcome, err := rawDial(ts.ws, mustMint(ts, uid))
	if err != nil {
		t.Fatalf("uid %d: %v", uid, err)
	}
	t.Cleanup(func() { r.Close() })
	return &rawPeer{Raw: r, key: [4]byte{byte(uid), 1, 2, 3}, welcome: welcome}
}

// nextText returns the next text message (within 60 s).
func (p *rawPeer) nextText() ([]byte, error) {
	p.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		op, b, err := wstest.ReadServerFrame(p.R)
		if err != nil {
			return nil, err
		}
		if op == 1 {
			return b, nil
		}
	}
}

// nextMsg returns the seq of the next msg frame, skipping other frames.
func (p *rawPeer) nextMsg() (uint64, error) {
	for {
		b, err := p.nextText()
		if err != nil {
			return 0, err
		}
		if bytes.Contains(b, []byte(`"type":"msg"`)) {
			return jsonUint(b, `"seq":`), nil
		}
	}
}

func (p *rawPeer) write(s string) {
	_ = p.WriteFrame(true, 1, []byte(s), true, p.key)
}

// TestFirstSendStampedAtWrite: a push's first-send time is when its frame
// is written, not when the turn that queued it began: a turn that spends
// 5 ms between queueing and writing must not make the resend 5 ms early.
func TestFirstSendStampedAtWrite(t *testing.T) {
	w, s, lp, c := windowConn(t)
	queued := w.Precise()
	c.push(&pushMsg{frame: []byte("m1"), conv: "d:1:2", seq: 1})
	for w.Precise() < queued+int64(5*time.Millisecond) {
		// the rest of a long turn (simulated time passing, not a wait for an event)
	}
	written := w.Precise()
	lp.flush()
	if t0 := c.win.ents[c.win.head].t0; t0 < written {
		t.Fatalf("t0 %d is %v before the write", t0, time.Duration(written-t0))
	}
	if c.retxAt < written+int64(s.cfg.AckTimeout) {
		t.Fatalf("resend due %v before write + ack timeout", time.Duration(written+int64(s.cfg.AckTimeout)-c.retxAt))
	}
	// A push written in a later turn keeps the earlier t0 of the first.
	c.push(&pushMsg{frame: []byte("m2"), conv: "d:1:2", seq: 2})
	lp.flush()
	if e := c.win.ents[c.win.head:]; len(e) != 2 || e[0].t0 > e[1].t0 || e[0].t0 < written {
		t.Fatalf("window %+v", e)
	}
}
