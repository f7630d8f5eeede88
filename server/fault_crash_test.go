package server_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// The crash test (issue 4 item 6, issue 8 item 4): concurrent senders send
// as fast as the server takes them; the server is killed with SIGKILL at a
// random moment and restarted on the same data dir; every message that got
// `sent` must be in history exactly once with the same conv, seq, ts and
// body, seqs gapless, and idempotency must survive the crash.
//
// MAGPIE_CRASH_ROUNDS sets the kill/restart rounds per fsync mode
// (default 3, 2 with -short).

// fltState is what the client knows about one cmid.
type fltState uint8

const (
	fltInflight fltState = iota // written, no reply: unknown after a crash
	fltSent                     // got sent: must be stored, exactly once
	fltRejected                 // last reply rate_limited: nothing stored
)

type fltKey struct {
	from uint64
	cmid string
}

// fltAttempt is one cmid of one user, across rounds and resends.
type fltAttempt struct {
	from, to, group uint64
	cmid, body      string
	conv            string // the conversation it must land in
	round           int
	state           fltState
	seq, ts         uint64 // from sent
}

// fltLedger is what the clients know, shared by the sender goroutines.
type fltLedger struct {
	t  testing.TB
	mu sync.Mutex
	m  map[fltKey]*fltAttempt
}

func newFltLedger(t testing.TB) *fltLedger { return &fltLedger{t: t, m: make(map[fltKey]*fltAttempt)} }

func (l *fltLedger) add(a *fltAttempt) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m[fltKey{a.from, a.cmid}] = a
}

// sent records a `sent` reply for a; a repeated sent must match the first.
func (l *fltLedger) sent(a *fltAttempt, f fltFrame) {
	l.mu.Lock()
	defer l.mu.Unlock()
	conv, seq, ts := f.str("conv"), f.num("seq"), f.num("ts")
	if conv != a.conv || seq == 0 || ts == 0 {
		l.t.Errorf("cmid %s of %d: sent %v, want conv %s", a.cmid, a.from, f, a.conv)
	}
	if a.state == fltSent && (a.seq != seq || a.ts != ts) {
		l.t.Errorf("cmid %s of %d: sent again as %s/%d ts %d, first %s/%d ts %d", a.cmid, a.from, conv, seq, ts, a.conv, a.seq, a.ts)
		return
	}
	a.state, a.seq, a.ts = fltSent, seq, ts
}

func (l *fltLedger) setState(a *fltAttempt, s fltState) {
	l.mu.Lock()
	a.state = s
	l.mu.Unlock()
}

func (l *fltLedger) count() (sent, inflight, rejected int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.m {
		switch a.state {
		case fltSent:
			sent++
		case fltInflight:
			inflight++
		case fltRejected:
			rejected++
		}
	}
	return
}

// snapshot returns the attempts in a stable order.
func (l *fltLedger) snapshot() []*fltAttempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*fltAttempt, 0, len(l.m))
	for _, a := range l.m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].from != out[j].from {
			return out[i].from < out[j].from
		}
		return out[i].cmid < out[j].cmid
	})
	return out
}

// fltSender sends to one recipient (to or group) from uid.
type fltSender struct {
	uid, to, group uint64
	conv           string
}

type fltSenderStats struct {
	written, rateLimited int
}

// run sends until the connection dies, keeping up to window sends
// unanswered. first is called once, at the first sent (or on failure).
// After a rate_limited error the sender pauses 5 ms and retries that cmid
// before anything new.
func (s *fltSender) run(t testing.TB, srv *testserver.Server, round, window int, led *fltLedger, first func(), st *fltSenderStats) {
	var once sync.Once
	defer once.Do(first)
	c, err := fltDial(srv, fltToken(s.uid))
	if err != nil {
		t.Errorf("sender %d: %v", s.uid, err)
		return
	}
	defer c.c.Close()
	out := make(map[string]*fltAttempt) // written on this connection, unanswered
	var retries []*fltAttempt
	var pauseUntil time.Time
	acks := make(map[string]uint64)
	n := 0
	alive := true

	handle := func(f fltFrame) {
		switch f.str("type") {
		case "sent":
			a := out[f.str("cmid")]
			if a == nil {
				t.Errorf("sender %d: sent for a cmid not in flight: %v", s.uid, f)
				return
			}
			delete(out, a.cmid)
			led.sent(a, f)
			once.Do(first)
		case "error":
			a := out[f.str("cmid")]
			if a == nil || f.str("code") != "rate_limited" {
				t.Errorf("sender %d: unexpected error %v", s.uid, f)
				return
			}
			delete(out, a.cmid)
			led.setState(a, fltRejected)
			st.rateLimited++
			retries = append(retries, a)
			pauseUntil = time.Now().Add(5 * time.Millisecond)
		case "msg":
			if seq := f.num("seq"); seq > acks[f.str("conv")] {
				acks[f.str("conv")] = seq
			}
		}
	}
	for alive {
		// Fill the window.
		for alive && len(out) < window && !time.Now().Before(pauseUntil) {
			var a *fltAttempt
			if len(retries) > 0 {
				a, retries = retries[0], retries[1:]
			} else {
				cmid := fmt.Sprintf("r%d-%d", round, n)
				a = &fltAttempt{from: s.uid, to: s.to, group: s.group, cmid: cmid, conv: s.conv, round: round,
					body: fmt.Sprintf("%s from %d %s", cmid, s.uid, strings.Repeat("z", n%97))}
				n++
				led.add(a)
			}
			led.setState(a, fltInflight)
			out[a.cmid] = a
			req := map[string]any{"type": "send", "cmid": a.cmid, "body": a.body}
			if a.group != 0 {
				req["group"] = a.group
			} else {
				req["to"] = a.to
			}
			st.written++
			if c.write(req) != nil {
				alive = false // the server is gone; a stays in flight (unknown)
			}
		}
		var pause <-chan time.Time
		var tm *time.Timer
		if alive && len(out) < window {
			tm = time.NewTimer(time.Until(pauseUntil))
			pause = tm.C
		}
		select {
		case f := <-c.In:
			handle(fltFrame(f.M))
		drain:
			for {
				select {
				case f := <-c.In:
					handle(fltFrame(f.M))
				default:
					break drain
				}
			}
		case <-c.Done:
			alive = false
		case <-pause:
		}
		if tm != nil {
			tm.Stop()
		}
		for conv, seq := range acks {
			if c.write(map[string]any{"type": "ack", "conv": conv, "seq": seq}) != nil {
				alive = false
			}
			delete(acks, conv)
		}
	}
	// The server is gone: every reply that arrived before is valid.
	<-c.Done
	for {
		select {
		case f := <-c.In:
			handle(fltFrame(f.M))
		default:
			return
		}
	}
}

func fltCrashRounds(t *testing.T) int {
	if v := os.Getenv("MAGPIE_CRASH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("MAGPIE_CRASH_ROUNDS=%q: want a positive integer", v)
		}
		return n
	}
	if testing.Short() {
		return 2
	}
	return 3
}

func TestFaultCrashKill9(t *testing.T) {
	rounds := fltCrashRounds(t)
	for _, fsync := range []bool{true, false} {
		t.Run(fmt.Sprintf("fsync=%v", fsync), func(t *testing.T) {
			fltCrashTest(t, fsync, rounds)
		})
	}
}

func fltCrashTest(t *testing.T, fsync bool, rounds int) {
	// --queue 128 is smaller than the senders' windows together, so the
	// committer queue fills and rate_limited (retry later) is exercised.
	srv := fltStart(t, "", "--fsync="+strconv.FormatBool(fsync), "--send-rate", "0", "--queue", "128")
	uids := make([]uint64, 6)
	for i := range uids {
		uids[i] = fltRegister(t, srv, fmt.Sprintf("crash%d", i))
	}
	setup := fltMustDial(t, srv, fltToken(uids[0]))
	gid := fltCreateGroup(t, setup, "crashers", uids[1:])
	setup.c.Close()
	g := fltGroup(gid)
	// Two users write into one direct conversation both ways, one writes
	// into another, three into the group.
	senders := []*fltSender{
		{uid: uids[0], to: uids[1], conv: fltDirect(uids[0], uids[1])},
		{uid: uids[1], to: uids[0], conv: fltDirect(uids[0], uids[1])},
		{uid: uids[2], to: uids[3], conv: fltDirect(uids[2], uids[3])},
		{uid: uids[3], group: gid, conv: g},
		{uid: uids[4], group: gid, conv: g},
		{uid: uids[5], group: gid, conv: g},
	}
	readers := map[string]uint64{ // conv → a member that reads it
		fltDirect(uids[0], uids[1]): uids[0],
		fltDirect(uids[2], uids[3]): uids[2],
		g:                           uids[0],
	}
	const window = 48
	led := newFltLedger(t)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)

	for round := 1; round <= rounds; round++ {
		var wg, ready sync.WaitGroup
		stats := fltStartSenders(t, srv, senders, round, window, led, &wg, &ready)
		delay := fltKillRandomly(t, srv, rng, round, &ready, &wg)
		written, limited := 0, 0
		for _, st := range stats {
			written += st.written
			limited += st.rateLimited
		}
		sent, inflight, rejected := led.count()
		t.Logf("round %d: killed %v after the first sents; %d sends written, %d rate_limited; ledger: %d sent, %d unknown, %d rejected",
			round, delay.Round(time.Millisecond), written, limited, sent, inflight, rejected)

		start := time.Now()
		srv.Restart()
		t.Logf("round %d: restart took %v", round, time.Since(start).Round(time.Millisecond))
		idx := fltVerify(t, srv, led, readers)
		if t.Failed() {
			t.FailNow()
		}
		fltResend(t, srv, led, idx, round, rng)
		if t.Failed() {
			t.FailNow()
		}
	}
	fltVerify(t, srv, led, readers)
}

// fltStartSenders starts each sender's run of this round (window sends in
// flight each), counted in wg, each marking ready at its first reply; it
// returns their statistics, filled once wg is done.
func fltStartSenders(t *testing.T, srv *testserver.Server, senders []*fltSender, round, window int, led *fltLedger, wg, ready *sync.WaitGroup) []fltSenderStats {
	stats := make([]fltSenderStats, len(senders))
	for i, s := range senders {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			s.run(t, srv, round, window, led, ready.Done, &stats[i])
		}()
	}
	return stats
}

// fltKillRandomly waits until every client of the round had its first
// reply (ready), kills the server at a random moment in the next 400 ms,
// while all of them are busy, and waits for the clients (wg) to notice.
// It returns the delay.
func fltKillRandomly(t *testing.T, srv *testserver.Server, rng *rand.Rand, round int, ready, wg *sync.WaitGroup) time.Duration {
	t.Helper()
	if !fltWait(ready, 30*time.Second) {
		t.Fatalf("round %d: clients got no reply within 30s\n%s", round, srv.Logs())
	}
	if t.Failed() {
		srv.Kill()
		wg.Wait()
		t.FailNow()
	}
	delay := time.Duration(rng.Int64N(int64(400 * time.Millisecond)))
	time.Sleep(delay) // the random crash point itself, not a synchronisation
	srv.Kill()
	if !fltWait(wg, 30*time.Second) {
		t.Fatalf("round %d: clients did not notice the kill within 30s", round)
	}
	return delay
}

// fltWait waits for wg up to d and reports whether it finished.
func fltWait(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// fltVerify reads every conversation in full and checks it against the
// ledger: seqs gapless 1..last; no (from, cmid) twice; no message nobody
// sent; every sent message present with its conv, seq, ts and body; nothing
// stored for a cmid whose last reply was rate_limited. It returns the
// stored messages by (from, cmid), without the system messages of group
// changes (PROTOCOL §13: kind "system", a "sys:" cmid, in groups only),
// which it counts.
func fltVerify(t *testing.T, srv *testserver.Server, led *fltLedger, readers map[string]uint64) map[fltKey]fltMsg {
	t.Helper()
	conns := make(map[uint64]*fltConn)
	defer func() {
		for _, c := range conns {
			c.c.Close()
		}
	}()
	idx := make(map[fltKey]fltMsg)
	total, systems := 0, 0
	for conv, uid := range readers {
		c := conns[uid]
		if c == nil {
			c = fltMustDial(t, srv, fltToken(uid))
			conns[uid] = c
		}
		msgs, err := c.history(conv)
		if err != nil {
			t.Fatal(err)
		}
		total += len(msgs)
		for i, m := range msgs {
			if m.Seq != uint64(i+1) || m.Conv != conv {
				t.Errorf("%s: message %d is %s/%d: seqs not gapless from 1", conv, i, m.Conv, m.Seq)
				break
			}
			if m.Kind == "system" {
				if !strings.HasPrefix(m.CMID, "sys:") || !strings.HasPrefix(conv, "g:") {
					t.Errorf("%s: system message %s/%d with cmid %q", conv, m.Conv, m.Seq, m.CMID)
				}
				systems++
				continue
			}
			k := fltKey{m.From, m.CMID}
			if prev, dup := idx[k]; dup {
				t.Errorf("cmid %s of %d stored twice: %s/%d and %s/%d", m.CMID, m.From, prev.Conv, prev.Seq, m.Conv, m.Seq)
			}
			idx[k] = m
		}
	}
	var sent, unknownStored, unknownLost int
	for _, a := range led.snapshot() {
		m, ok := idx[fltKey{a.from, a.cmid}]
		if ok && (m.Conv != a.conv || m.Body != a.body || m.Kind != "text") {
			t.Errorf("cmid %s of %d: stored as %s/%d kind %q body %q, sent to %s with body %q", a.cmid, a.from, m.Conv, m.Seq, m.Kind, m.Body, a.conv, a.body)
		}
		switch a.state {
		case fltSent:
			sent++
			if !ok {
				t.Errorf("LOST: cmid %s of %d got sent %s/%d ts %d (round %d) and is not in history", a.cmid, a.from, a.conv, a.seq, a.ts, a.round)
			} else if m.Seq != a.seq || m.TS != a.ts {
				t.Errorf("cmid %s of %d: sent %s/%d ts %d, history has %s/%d ts %d", a.cmid, a.from, a.conv, a.seq, a.ts, m.Conv, m.Seq, m.TS)
			}
		case fltRejected:
			if ok {
				t.Errorf("cmid %s of %d: answered rate_limited, yet stored as %s/%d", a.cmid, a.from, m.Conv, m.Seq)
			}
		case fltInflight:
			if ok {
				unknownStored++
			} else {
				unknownLost++
			}
		}
	}
	for k, m := range idx {
		led.mu.Lock()
		_, known := led.m[k]
		led.mu.Unlock()
		if !known {
			t.Errorf("history has %s/%d with cmid %q of %d that no client sent", m.Conv, m.Seq, m.CMID, m.From)
		}
	}
	t.Logf("verified %d stored messages (%d of them system messages): %d sent all present; unanswered at the crash: %d stored, %d not", total, systems, sent, unknownStored, unknownLost)
	return idx
}

// fltResend re-sends, on fresh connections, a sample of cmids that
// got sent (with another body: the original must come back), every cmid
// that was unanswered at the crash (up to 40 per user) and a few that were
// rate_limited. Unanswered ones that were stored must return the stored
// message; the others are stored now (verified by the next fltVerify).
func fltResend(t *testing.T, srv *testserver.Server, led *fltLedger, idx map[fltKey]fltMsg, round int, rng *rand.Rand) {
	t.Helper()
	byUser := make(map[uint64][]*fltAttempt)
	var sentPool []*fltAttempt
	for _, a := range led.snapshot() {
		switch {
		case a.state == fltSent:
			sentPool = append(sentPool, a)
		case a.state == fltInflight && len(byUser[a.from]) < 40:
			byUser[a.from] = append(byUser[a.from], a)
		case a.state == fltRejected && rng.IntN(4) == 0:
			byUser[a.from] = append(byUser[a.from], a)
		}
	}
	for range 20 {
		if len(sentPool) == 0 {
			break
		}
		a := sentPool[rng.IntN(len(sentPool))]
		byUser[a.from] = append(byUser[a.from], a)
	}
	var dupOK, storedNow, unknownDup int
	for uid, list := range byUser {
		// Pipelined: write every resend, then take the replies by rid.
		c := fltMustDial(t, srv, fltToken(uid))
		type resend struct {
			a        *fltAttempt
			state    fltState
			seq, ts  uint64
			req      map[string]any
			tries    int
			answered bool
		}
		byRID := make(map[string]*resend, len(list))
		for i, a := range list {
			led.mu.Lock()
			r := &resend{a: a, state: a.state, seq: a.seq, ts: a.ts}
			led.mu.Unlock()
			body := a.body
			if r.state == fltSent {
				body = "a different body " + strconv.Itoa(i)
			}
			rid := "re" + strconv.Itoa(i)
			r.req = map[string]any{"type": "send", "cmid": a.cmid, "body": body, "rid": rid}
			if a.group != 0 {
				r.req["group"] = a.group
			} else {
				r.req["to"] = a.to
			}
			byRID[rid] = r
			if err := c.write(r.req); err != nil {
				t.Fatal(err)
			}
		}
		for left := len(list); left > 0; {
			f, err := c.next(10 * time.Second)
			if err != nil {
				t.Fatalf("resends of %d: %v", uid, err)
			}
			if f.str("type") == "msg" {
				_ = c.write(map[string]any{"type": "ack", "conv": f.str("conv"), "seq": f.num("seq")})
				continue
			}
			r := byRID[f.str("rid")]
			if r == nil || r.answered {
				t.Fatalf("resends of %d: unexpected %v", uid, f)
			}
			a := r.a
			if f.str("type") == "error" && f.str("code") == "rate_limited" && r.tries < 100 {
				r.tries++
				time.Sleep(5 * time.Millisecond) // "retry later" (PROTOCOL §4)
				if err := c.write(r.req); err != nil {
					t.Fatal(err)
				}
				continue
			}
			r.answered = true
			left--
			if f.str("type") != "sent" || f.str("cmid") != a.cmid {
				t.Errorf("resend %s of %d: %v", a.cmid, uid, f)
				continue
			}
			m, stored := idx[fltKey{a.from, a.cmid}]
			switch {
			case r.state == fltSent:
				if f.str("conv") != a.conv || f.num("seq") != r.seq || f.num("ts") != r.ts {
					t.Errorf("resend of sent %s of %d after the crash: %v, first sent %s/%d ts %d", a.cmid, uid, f, a.conv, r.seq, r.ts)
				}
				dupOK++
			case stored:
				if f.str("conv") != m.Conv || f.num("seq") != m.Seq || f.num("ts") != m.TS {
					t.Errorf("resend of unanswered %s of %d: %v, but history has %s/%d ts %d", a.cmid, uid, f, m.Conv, m.Seq, m.TS)
				}
				unknownDup++
			default:
				storedNow++
			}
			led.sent(a, f)
		}
		c.c.Close()
	}
	t.Logf("round %d resends: %d sent ones returned the original, %d unanswered-but-stored returned the stored one, %d stored now", round, dupOK, unknownDup, storedNow)
}
