package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// Tests of PROTOCOL §16 (presence).

// presItems returns a presence frame's items as "uid:online:last_seen".
func presItems(m map[string]any) []string {
	var out []string
	list, _ := m["items"].([]any)
	for _, x := range list {
		it, _ := x.(map[string]any)
		out = append(out, fmt.Sprintf("%d:%v:%d", num(it["uid"]), it["online"], num(it["last_seen"])))
	}
	return out
}

// presItem returns uid's item of a presence frame.
func presItem(m map[string]any, uid uint64) (online bool, lastSeen int64, ok bool) {
	list, _ := m["items"].([]any)
	for _, x := range list {
		it, _ := x.(map[string]any)
		if num(it["uid"]) == uid {
			o, _ := it["online"].(bool)
			return o, int64(num(it["last_seen"])), true
		}
	}
	return false, 0, false
}

// pushes stamps c's presence pushes (presence frames without rid) with
// their arrival time, on a goroutine of its own that takes every frame of
// c from now on (the test reads them from the returned channel), so the
// times do not depend on when the test gets to them.
func (c *wsClient) pushes() <-chan stampedFrame {
	ch := make(chan stampedFrame, 1024)
	go func() {
		defer close(ch)
		for {
			select {
			case f := <-c.In:
				if f.M["type"] == "presence" && f.M["rid"] == nil {
					ch <- stampedFrame{f.M, time.Now()}
				}
			case <-c.Done:
				return
			}
		}
	}()
	return ch
}

type stampedFrame struct {
	m  map[string]any
	at time.Time
}

// nextPush returns the next push from ch and when it arrived.
func nextPush(t *testing.T, ch <-chan stampedFrame, within time.Duration) (map[string]any, time.Time) {
	t.Helper()
	select {
	case f, ok := <-ch:
		if !ok {
			t.Fatal("connection closed while waiting for a presence push")
		}
		return f.m, f.at
	case <-time.After(within):
		t.Fatalf("no presence push within %v", within)
	}
	return nil, time.Time{}
}

// noPush fails when a push arrives on ch within d (only to check that
// something does NOT happen).
func noPush(t *testing.T, ch <-chan stampedFrame, d time.Duration) {
	t.Helper()
	select {
	case f := <-ch:
		t.Fatalf("unexpected presence push %v", f.m)
	case <-time.After(d):
	}
}

// The reply: every uid in request order without duplicates, unknown uids
// offline with last_seen 0, with the rid; bad lists are bad_request.
func TestPresenceSubReply(t *testing.T) {
	ts := startServer(t, nil)
	a, atok := ts.user("pa")
	b, btok := ts.user("pb")
	c, _ := ts.user("pc")
	ca := login(t, ts, atok)
	login(t, ts, btok)
	m := ca.request(map[string]any{"type": "presence_sub", "rid": "p1", "uids": []uint64{c, b, 999999, b, a, c}})
	want := fmt.Sprintf("%d:false:0 %d:true:0 999999:false:0 %d:true:0", c, b, a)
	if got := strings.Join(presItems(m), " "); m["type"] != "presence" || got != want {
		t.Fatalf("reply %v: items %s, want %s", m, got, want)
	}
	if m := ca.request(map[string]any{"type": "presence_sub", "rid": "p2", "uids": []uint64{}}); m["type"] != "presence" || len(presItems(m)) != 0 {
		t.Fatalf("empty list: %v", m)
	}
	many := make([]uint64, 1001)
	for i := range many {
		many[i] = uint64(i + 1)
	}
	bad := []any{nil, 5, "1,2", []any{0}, []any{-1}, []any{1.5}, []any{"2"}, []any{b, nil}, many}
	for i, uids := range bad {
		rid := fmt.Sprintf("b%d", i)
		f := map[string]any{"type": "presence_sub", "rid": rid}
		if uids != nil {
			f["uids"] = uids
		}
		wantError(t, ca.request(f), "bad_request", rid)
	}
	if m := ca.request(map[string]any{"type": "presence_sub", "rid": "max", "uids": many[:1000]}); len(presItems(m)) != 1000 {
		t.Fatalf("1000 uids: %d items", len(presItems(m)))
	}
}

// Pushes: a change is pushed at once after the reply (the reply does not
// count toward the 1 s), going offline waits for --presence-grace after
// the close (never early, ≤ 100 ms late) and carries the close's time.
func TestPresencePushAndGrace(t *testing.T) {
	const grace = 300 * time.Millisecond
	ts := startServer(t, func(c *Config) { c.PresenceGrace = grace })
	_, atok := ts.user("ga")
	b, btok := ts.user("gb")
	ca := login(t, ts, atok)
	if m := ca.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": []uint64{b}}); strings.Join(presItems(m), "") != fmt.Sprintf("%d:false:0", b) {
		t.Fatalf("reply %v", m)
	}
	replied := time.Now()
	pa := ca.pushes()
	cb := login(t, ts, btok)
	m, at := nextPush(t, pa, 5*time.Second)
	if got := strings.Join(presItems(m), ""); got != fmt.Sprintf("%d:true:0", b) {
		t.Fatalf("push %v, want b online", m)
	}
	if d := at.Sub(replied); d >= time.Second {
		t.Errorf("first push %v after the reply: the reply counted toward the 1 s", d)
	}
	// Close b at least a second after that push, so that only the grace
	// decides when the next one comes.
	time.Sleep(time.Until(at.Add(time.Second)))
	lag := testserver.Lag()
	before := time.Now()
	cb.c.Close()
	closed := time.Now()
	m, at = nextPush(t, pa, grace+5*time.Second)
	l := lag()
	online, seen, ok := presItem(m, b)
	if !ok || online || len(presItems(m)) != 1 {
		t.Fatalf("push %v, want b offline only", m)
	}
	if el := at.Sub(before); el < grace {
		t.Errorf("offline pushed %v after the close: early (grace %v)", el, grace)
	}
	if el := at.Sub(closed); el > grace+100*time.Millisecond+slack()+l {
		t.Errorf("offline pushed %v after the close, want %v + ≤ 100 ms (local lag %v)", el, grace, l)
	}
	if seen < before.UnixMilli() || seen > at.UnixMilli() {
		t.Errorf("last_seen %d outside [%d, %d] (close … push)", seen, before.UnixMilli(), at.UnixMilli())
	}
	// The state is now offline for a new subscriber too, with that time.
	cn := login(t, ts, atok)
	if m := cn.request(map[string]any{"type": "presence_sub", "rid": "s2", "uids": []uint64{b}}); strings.Join(presItems(m), "") != fmt.Sprintf("%d:false:%d", b, seen) {
		t.Fatalf("reply after offline: %v", m)
	}
}

// slack is the scheduling allowance of in-process timing checks.
func slack() time.Duration {
	if raceEnabled {
		return 150 * time.Millisecond
	}
	return 80 * time.Millisecond
}

// A reconnect within the grace is no change: nothing is pushed.
func TestPresenceNoFlicker(t *testing.T) {
	const grace = time.Second
	ts := startServer(t, func(c *Config) { c.PresenceGrace = grace })
	_, atok := ts.user("fa")
	b, btok := ts.user("fb")
	cb := login(t, ts, btok)
	ca := login(t, ts, atok)
	ca.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": []uint64{b}})
	pa := ca.pushes()
	for i := 0; i < 3; i++ {
		cb.c.Close()
		cb = login(t, ts, btok)
	}
	noPush(t, pa, grace+300*time.Millisecond)
	if m := login(t, ts, atok).request(map[string]any{"type": "presence_sub", "rid": "s2", "uids": []uint64{b}}); strings.Join(presItems(m), "") != fmt.Sprintf("%d:true:0", b) {
		t.Fatalf("after reconnects: %v", m)
	}
}

// Pushes on a connection are at least 1 s apart and carry every pending
// user's latest state; users dropped from the list are not reported.
func TestPresenceCoalescing(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PresenceGrace = 50 * time.Millisecond })
	_, atok := ts.user("ca")
	var uids []uint64
	var toks []string
	for i := 0; i < 6; i++ {
		u, tok := ts.user(fmt.Sprintf("cu%d", i))
		uids, toks = append(uids, u), append(toks, tok)
	}
	dropped, dtok := ts.user("cdropped")
	ca := login(t, ts, atok)
	ca.request(map[string]any{"type": "presence_sub", "rid": "s0", "uids": []uint64{dropped}})
	ca.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": uids})
	pa := ca.pushes()
	login(t, ts, dtok) // dropped from the list: never reported
	// Six users come online 100 ms apart.
	var conns []*wsClient
	for _, tok := range toks {
		conns = append(conns, login(t, ts, tok))
		time.Sleep(100 * time.Millisecond) // spread the changes over the coalescing window
	}
	online := map[uint64]bool{}
	var last time.Time
	frames := 0
	for len(online) < len(uids) {
		m, at := nextPush(t, pa, 5*time.Second)
		frames++
		if !last.IsZero() && at.Sub(last) < time.Second-20*time.Millisecond {
			t.Errorf("pushes %v apart, want ≥ 1 s: %v", at.Sub(last), m)
		}
		last = at
		for _, s := range presItems(m) {
			var u uint64
			var o bool
			var ls int64
			fmt.Sscanf(s, "%d:%t:%d", &u, &o, &ls)
			if u == dropped {
				t.Errorf("push names %d, dropped from the subscription", u)
			}
			if !o {
				t.Errorf("item %s: not online", s)
			}
			online[u] = true
		}
	}
	if frames > 2 {
		t.Errorf("%d frames for 6 changes within 0.6 s, want at most 2", frames)
	}
	// The latest state: u0 goes offline, comes back, goes offline again
	// within one window: one item, offline, the last close's time.
	conns[0].c.Close()
	conns[0] = login(t, ts, toks[0])
	time.Sleep(100 * time.Millisecond) // past the 50 ms grace after the second close
	before := time.Now()
	conns[0].c.Close()
	m, at := nextPush(t, pa, 5*time.Second)
	if at.Sub(last) < time.Second-20*time.Millisecond {
		t.Errorf("push %v after the previous one", at.Sub(last))
	}
	o, ls, ok := presItem(m, uids[0])
	if !ok || o || ls < before.UnixMilli() || len(presItems(m)) != 1 {
		t.Errorf("push %v: want only u0 offline with last_seen ≥ %d", m, before.UnixMilli())
	}
}

// The work of a change is one mark per subscriber of the changed user,
// whatever other subscriptions exist.
func TestPresenceCostPerChange(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PresenceGrace = 0 })
	x, xtok := ts.user("x")
	_, otok := ts.user("observer")
	var watchers []<-chan stampedFrame
	for i := 0; i < 3; i++ {
		w := login(t, ts, otok)
		w.request(map[string]any{"type": "presence_sub", "rid": "w", "uids": []uint64{x}})
		watchers = append(watchers, w.pushes())
	}
	// 40 connections with 1000 unrelated subscriptions each.
	unrelated := make([]uint64, 1000)
	for i := range unrelated {
		unrelated[i] = uint64(1000 + i)
	}
	for i := 0; i < 40; i++ {
		c := login(t, ts, otok)
		c.request(map[string]any{"type": "presence_sub", "rid": "u", "uids": unrelated})
	}
	if n := ts.metric("magpie_presence_subscriptions"); n != 40*1000+3 {
		t.Fatalf("subscriptions %v, want %d", n, 40*1000+3)
	}
	marks0, changes0 := ts.metric("magpie_presence_marks_total"), ts.metric("magpie_presence_changes_total")
	cx := login(t, ts, xtok)
	for _, w := range watchers {
		nextPush(t, w, 5*time.Second)
	}
	if d := ts.metric("magpie_presence_marks_total") - marks0; d != 3 {
		t.Errorf("%v marks for one change with 3 subscribers", d)
	}
	cx.c.Close()
	for _, w := range watchers {
		nextPush(t, w, 5*time.Second)
	}
	if d := ts.metric("magpie_presence_marks_total") - marks0; d != 6 {
		t.Errorf("%v marks for two changes with 3 subscribers", d)
	}
	if d := ts.metric("magpie_presence_changes_total") - changes0; d != 2 {
		t.Errorf("%v changes, want 2", d)
	}
}

// Presence state is released when nobody needs it.
func TestPresenceStateReleased(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PresenceGrace = 100 * time.Millisecond })
	_, atok := ts.user("la")
	b, btok := ts.user("lb")
	ca, cb := login(t, ts, atok), login(t, ts, btok)
	ca.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": []uint64{b, 77777}})
	if ts.metric("magpie_presence_users") != 2 {
		t.Fatalf("presence users %v, want 2", ts.metric("magpie_presence_users"))
	}
	ca.c.Close()
	cb.c.Close()
	waitFor(t, func() bool {
		return ts.metric("magpie_presence_users") == 0 && ts.metric("magpie_presence_subscriptions") == 0 &&
			ts.metric("magpie_timers_armed") == 0
	})
}

// last_seen survives a graceful restart; users online at the shutdown get
// the shutdown's time.
func TestPresenceLastSeenRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *Config) {
		c.Data = dir
		c.PresenceGrace = 50 * time.Millisecond
		c.PresenceCheckpoint = time.Hour // only the shutdown writes
	}
	ts := startServer(t, cfg)
	_, atok := ts.user("sa")
	b, btok := ts.user("sb")
	c, ctok := ts.user("sc")
	ca := login(t, ts, atok)
	ca.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": []uint64{b}})
	pa := ca.pushes()
	cb := login(t, ts, btok)
	nextPush(t, pa, 5*time.Second)
	cb.c.Close()
	m, _ := nextPush(t, pa, 5*time.Second)
	_, bSeen, _ := presItem(m, b)
	login(t, ts, ctok)
	before := time.Now().UnixMilli()
	ts.stop()
	after := time.Now().UnixMilli()

	ts2 := startServer(t, cfg)
	ca2 := login(t, ts2, atok)
	m = ca2.request(map[string]any{"type": "presence_sub", "rid": "s", "uids": []uint64{b, c}})
	if o, ls, _ := presItem(m, b); o || ls != bSeen || bSeen == 0 {
		t.Errorf("b after restart: online %v last_seen %d, want offline %d", o, ls, bSeen)
	}
	if o, ls, _ := presItem(m, c); o || ls < before || ls > after {
		t.Errorf("c (online at the shutdown) after restart: online %v last_seen %d, want offline in [%d, %d]", o, ls, before, after)
	}
}
