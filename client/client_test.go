package client

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// recorder collects what a Client hands to the application.
type recorder struct {
	mu     sync.Mutex
	msgs   []Message
	states []StateEvent
}

func (r *recorder) onMessage(m Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func (r *recorder) onState(e StateEvent) {
	r.mu.Lock()
	r.states = append(r.states, e)
	r.mu.Unlock()
}

func (r *recorder) bodies(conv string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b []string
	for _, m := range r.msgs {
		if m.Conv == conv {
			b = append(b, m.Body)
		}
	}
	return b
}

func (r *recorder) seqs(conv string) []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []int64
	for _, m := range r.msgs {
		if m.Conv == conv {
			s = append(s, m.Seq)
		}
	}
	return s
}

func (r *recorder) countStates(st State) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.states {
		if e.State == st {
			n++
		}
	}
	return n
}

func (r *recorder) lastState() StateEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return StateEvent{}
	}
	return r.states[len(r.states)-1]
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func fastBackoff() Backoff {
	return Backoff{First: 20 * time.Millisecond, Max: 100 * time.Millisecond}
}

func newTestClient(t *testing.T, fs *fakeServer, uid int64, mod func(*Options)) (*Client, *recorder) {
	t.Helper()
	r := &recorder{}
	o := Options{
		Server:    fs.url(),
		Username:  fmt.Sprintf("u%d", uid),
		Password:  "password",
		Backoff:   fastBackoff(),
		OnMessage: r.onMessage,
		OnState:   r.onState,
	}
	if mod != nil {
		mod(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("connect u%d: %v", uid, err)
	}
	return c, r
}

func sendN(t *testing.T, c *Client, to int64, n int, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 1; i <= n; i++ {
		if _, err := c.SendTo(ctx, to, fmt.Sprintf("%s%d", prefix, i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
}

func wantBodies(prefix string, from, to int) []string {
	var b []string
	for i := from; i <= to; i++ {
		b = append(b, fmt.Sprintf("%s%d", prefix, i))
	}
	return b
}

func TestSendReceiveAck(t *testing.T) {
	fs := newFakeServer(t)
	a, _ := newTestClient(t, fs, 1, nil)
	_, rb := newTestClient(t, fs, 2, nil)
	ctx := context.Background()
	s, err := a.SendTo(ctx, 2, "hello")
	if err != nil || s.Conv != "d:1:2" || s.Seq != 1 {
		t.Fatalf("send: %+v %v", s, err)
	}
	sendN(t, a, 2, 9, "m")
	waitFor(t, 5*time.Second, "10 messages", func() bool { return len(rb.seqs("d:1:2")) == 10 })
	if got := rb.seqs("d:1:2"); !slices.Equal(got, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
		t.Fatalf("seqs %v", got)
	}
	waitFor(t, 5*time.Second, "ack of 10", func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		return fs.acks["d:1:2"] == 10
	})
	if a.UID() != 1 {
		t.Fatalf("uid %d", a.UID())
	}
}

func TestGapFilledBeforeLaterSeqs(t *testing.T) {
	fs := newFakeServer(t)
	fs.dropPush = func(m Message) bool { return m.Seq == 2 || m.Seq == 5 || m.Seq == 6 }
	fs.dupPush = true
	a, _ := newTestClient(t, fs, 1, nil)
	_, rb := newTestClient(t, fs, 2, nil)
	sendN(t, a, 2, 8, "m")
	waitFor(t, 5*time.Second, "8 messages", func() bool { return len(rb.seqs("d:1:2")) >= 8 })
	if got := rb.bodies("d:1:2"); !slices.Equal(got, wantBodies("m", 1, 8)) {
		t.Fatalf("bodies %v", got)
	}
}

func TestStartPolicies(t *testing.T) {
	fs := newFakeServer(t)
	fs.store(1, 2, "old1")
	fs.store(1, 2, "old2")
	fs.store(1, 3, "other")
	_, latest := newTestClient(t, fs, 2, nil)
	_, begin := newTestClient(t, fs, 2, func(o *Options) { o.Start = StartBeginning })
	_, pos := newTestClient(t, fs, 2, func(o *Options) { o.Positions = map[string]int64{"d:1:2": 1} })
	waitFor(t, 5*time.Second, "history from the beginning", func() bool { return len(begin.seqs("d:1:2")) == 2 })
	waitFor(t, 5*time.Second, "history after position", func() bool { return len(pos.seqs("d:1:2")) == 1 })
	a, _ := newTestClient(t, fs, 1, nil)
	sendN(t, a, 2, 1, "new")
	waitFor(t, 5*time.Second, "live message", func() bool {
		return len(latest.seqs("d:1:2")) == 1 && len(begin.seqs("d:1:2")) == 3 && len(pos.seqs("d:1:2")) == 2
	})
	if got := latest.bodies("d:1:2"); !slices.Equal(got, []string{"new1"}) {
		t.Errorf("StartLatest got %v", got)
	}
	if got := begin.bodies("d:1:2"); !slices.Equal(got, []string{"old1", "old2", "new1"}) {
		t.Errorf("StartBeginning got %v", got)
	}
	if got := pos.bodies("d:1:2"); !slices.Equal(got, []string{"old2", "new1"}) {
		t.Errorf("Positions got %v", got)
	}
}

func TestReconnectCatchUp(t *testing.T) {
	fs := newFakeServer(t)
	a, _ := newTestClient(t, fs, 1, nil)
	b, rb := newTestClient(t, fs, 2, nil)
	sendN(t, a, 2, 3, "m")
	waitFor(t, 5*time.Second, "3 messages", func() bool { return len(rb.seqs("d:1:2")) == 3 })
	// Drop B's push path: messages 4..250 are stored while B misses them.
	fs.mu.Lock()
	fs.dropPush = func(m Message) bool { return true }
	fs.mu.Unlock()
	sendN(t, a, 2, 247, "x")
	fs.mu.Lock()
	fs.dropPush = nil
	fs.mu.Unlock()
	online := rb.countStates(StateOnline)
	fs.closeAll(0) // TCP drop, no close frame
	waitFor(t, 5*time.Second, "reconnect", func() bool { return rb.countStates(StateOnline) > online })
	waitFor(t, 5*time.Second, "catch-up", func() bool { return len(rb.seqs("d:1:2")) == 250 })
	want := append(wantBodies("m", 1, 3), wantBodies("x", 1, 247)...)
	if got := rb.bodies("d:1:2"); !slices.Equal(got, want) {
		t.Fatalf("bodies after catch-up: %d, first %v", len(got), got[:5])
	}
	var sawCode bool
	rb.mu.Lock()
	for _, e := range rb.states {
		if e.State == StateReconnecting && e.Code == CloseAbnormal {
			sawCode = true
		}
	}
	rb.mu.Unlock()
	if !sawCode {
		t.Errorf("no reconnecting event with code 1006: %+v", rb.states)
	}
	if pos := b.Positions(); pos["d:1:2"] != 250 {
		t.Errorf("positions %v", pos)
	}
}

func TestSendSurvivesReconnect(t *testing.T) {
	fs := newFakeServer(t)
	fs.mu.Lock()
	fs.hbMS = 60000
	fs.mu.Unlock()
	a, ra := newTestClient(t, fs, 1, nil)
	// Take A's connections away, send while offline, then let it back.
	fs.mu.Lock()
	fs.refuse401 = false
	fs.mu.Unlock()
	online := ra.countStates(StateOnline)
	fs.closeAll(1001)
	done := make(chan error, 1)
	go func() {
		_, err := a.SendTo(context.Background(), 2, "while away")
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "online again", func() bool { return ra.countStates(StateOnline) > online })
	fs.mu.Lock()
	n := len(fs.msgs["d:1:2"])
	fs.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d messages stored", n)
	}
}

func TestNoReconnectAfter4004(t *testing.T) {
	fs := newFakeServer(t)
	c, r := newTestClient(t, fs, 1, nil)
	fs.closeAll(CloseReplaced)
	waitFor(t, 5*time.Second, "offline", func() bool { return r.lastState().State == StateOffline })
	ev := r.lastState()
	if ev.Code != CloseReplaced || !errors.Is(ev.Err, ErrReplaced) {
		t.Fatalf("offline event %+v", ev)
	}
	fs.mu.Lock()
	dials := fs.dials
	fs.mu.Unlock()
	if dials != 1 {
		t.Fatalf("%d dials after 4004", dials)
	}
	if _, err := c.SendTo(context.Background(), 2, "x"); !errors.Is(err, ErrReplaced) {
		t.Fatalf("send after 4004: %v", err)
	}
	// Connect again is allowed.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRelogin(t *testing.T) {
	fs := newFakeServer(t)
	c, r := newTestClient(t, fs, 1, nil)
	online := r.countStates(StateOnline)
	fs.closeAll(CloseUnauthorized)
	waitFor(t, 5*time.Second, "online after re-login", func() bool { return r.countStates(StateOnline) > online })
	// Wrong password: the login is refused, the client goes offline.
	bad, err := New(Options{Server: fs.url(), Username: "u1", Password: "wrong", Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Connect(context.Background()); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("connect with a wrong password: %v", err)
	}
	var ae *Error
	if err := bad.Connect(context.Background()); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("connect with a wrong password: %v, want the HTTP error inside", err)
	}
	// Token-only client: 401 at handshake → offline with ErrUnauthorized.
	fs.mu.Lock()
	fs.refuse401 = true
	fs.mu.Unlock()
	r2 := &recorder{}
	c2, err := New(Options{Token: "t9", WSURL: "ws" + fs.url()[4:] + "/ws", OnState: r2.onState, Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Connect(context.Background()); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("connect: %v", err)
	}
	_ = c
}

func TestDeadPeer(t *testing.T) {
	fs := newFakeServer(t)
	fs.hbMS = 200
	var mu sync.Mutex
	mute := false
	proxyAddr := startProxy(t, fs.srv.Listener.Addr().String(), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return mute
	})
	c, r := newTestClient(t, fs, 1, func(o *Options) {
		o.WSURL = "ws://" + proxyAddr + "/ws"
		o.HandshakeTimeout = 300 * time.Millisecond // a dial into the black hole gives up soon
	})
	_ = c
	// Idle for a few heartbeats: pings keep it alive.
	time.Sleep(700 * time.Millisecond) // letting heartbeats run is the point here
	if n := r.countStates(StateReconnecting); n != 0 {
		t.Fatalf("reconnected while healthy: %+v", r.states)
	}
	mu.Lock()
	mute = true
	mu.Unlock()
	start := time.Now()
	waitFor(t, 2*time.Second, "dead peer detected", func() bool { return r.countStates(StateReconnecting) > 0 })
	took := time.Since(start)
	ev := r.lastState()
	var ce *CloseError
	if !errors.As(ev.Err, &ce) || !ce.DeadPeer {
		t.Fatalf("reconnect reason %+v", ev)
	}
	if took > 300*time.Millisecond+100*time.Millisecond {
		t.Errorf("detected after %v, want ≤ heartbeat + grace (300ms) + slack", took)
	}
	mu.Lock()
	mute = false
	mu.Unlock()
	waitFor(t, 5*time.Second, "online after dead peer", func() bool { return r.countStates(StateOnline) >= 2 })
}

func TestCloseNoLeaks(t *testing.T) {
	base := runtime.NumGoroutine()
	fs := newFakeServer(t)
	for i := 0; i < 5; i++ {
		r := &recorder{}
		c, err := Dial(context.Background(), Options{Server: fs.url(), Username: "u1", Password: "password", OnMessage: r.onMessage})
		if err != nil {
			t.Fatal(err)
		}
		go c.Send(context.Background(), Outgoing{To: 2, Body: "x"})
		c.Close()
		c.Close()
		if _, err := c.SendTo(context.Background(), 2, "y"); !errors.Is(err, ErrClosed) {
			t.Fatalf("send after close: %v", err)
		}
	}
	fs.close()
	waitFor(t, 5*time.Second, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= base+2 })
}

func TestRateCloseWaitsBackoffCap(t *testing.T) {
	fs := newFakeServer(t)
	_, r := newTestClient(t, fs, 1, func(o *Options) { o.Backoff = Backoff{First: 10 * time.Millisecond, Max: 150 * time.Millisecond} })
	online := r.countStates(StateOnline)
	fs.closeAll(CloseRateExceeded)
	waitFor(t, 5*time.Second, "reconnecting", func() bool { return r.countStates(StateReconnecting) > 0 })
	if ev := r.lastState(); ev.Code != CloseRateExceeded || ev.Delay != 150*time.Millisecond {
		t.Fatalf("after 4029: %+v, want the backoff cap", ev)
	}
	waitFor(t, 5*time.Second, "online", func() bool { return r.countStates(StateOnline) > online })
}

// TestRetryNow: RetryNow ends an hour-long backoff wait at once, and is
// refused while online.
func TestRetryNow(t *testing.T) {
	fs := newFakeServer(t)
	c, r := newTestClient(t, fs, 1, func(o *Options) {
		o.Backoff = Backoff{First: time.Hour, Max: time.Hour, Rand: func() float64 { return 0.5 }}
	})
	if c.RetryNow() {
		t.Fatal("RetryNow while online reported true")
	}
	online := r.countStates(StateOnline)
	fs.closeAll(CloseGoingAway)
	waitFor(t, 5*time.Second, "reconnecting", func() bool { return r.countStates(StateReconnecting) > 0 })
	if ev := r.lastState(); ev.Delay != 30*time.Minute {
		t.Fatalf("after 1001: %+v, want a 30 min wait", ev)
	}
	if !c.RetryNow() {
		t.Fatal("RetryNow while reconnecting reported false")
	}
	waitFor(t, 5*time.Second, "online at once", func() bool { return r.countStates(StateOnline) > online })
}

func TestRequestsSurviveReconnect(t *testing.T) {
	fs := newFakeServer(t)
	fs.store(1, 2, "x")
	c, r := newTestClient(t, fs, 1, func(o *Options) {
		o.Backoff = Backoff{First: 200 * time.Millisecond, Max: 200 * time.Millisecond, Rand: func() float64 { return 0.99 }}
	})
	online := r.countStates(StateOnline)
	fs.closeAll(1001)
	waitFor(t, 5*time.Second, "reconnecting", func() bool { return c.State() == StateReconnecting })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := c.Convs(ctx) // issued while offline, answered after the reconnect
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("convs: %+v %v", list, err)
	}
	if r.countStates(StateOnline) <= online {
		t.Fatal("answered without reconnecting?")
	}
	page, err := c.HistoryAfter(ctx, "d:1:2", 0, 10)
	if err != nil || len(page.Messages) != 1 || page.Messages[0].Body != "x" {
		t.Fatalf("history: %+v %v", page, err)
	}
}

// TestCloseWhileHandlerSends: Close must not deadlock when a callback is
// blocked in Send (here: the server never answers, it is gone).
func TestCloseWhileHandlerSends(t *testing.T) {
	fs := newFakeServer(t)
	inHandler := make(chan struct{})
	var once sync.Once
	var c *Client
	var sendErr error
	c, _ = newTestClient(t, fs, 2, func(o *Options) {
		o.OnMessage = func(m Message) {
			once.Do(func() {
				fs.mu.Lock()
				fs.dropSends = true
				fs.mu.Unlock()
				close(inHandler)
				_, sendErr = c.SendTo(context.Background(), 1, "echo")
			})
		}
	})
	a, _ := newTestClient(t, fs, 1, nil)
	sendN(t, a, 2, 1, "m")
	<-inHandler
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		// Not t.Fatal: the cleanup's Close would hang as well.
		panic("Close deadlocked with a handler blocked in Send")
	}
	if !errors.Is(sendErr, ErrClosed) {
		t.Fatalf("blocked Send returned %v, want ErrClosed", sendErr)
	}
}
