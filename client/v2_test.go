package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// v2rec records what the version 2 callbacks hand to the application.
type v2rec struct {
	mu       sync.Mutex
	events   []GroupEvent
	receipts []Receipt
	typing   []TypingEvent
	presence [][]Presence
	order    []string // "msg:<conv>/<seq>", "typing:…": the order of callbacks
}

func (r *v2rec) install(o *Options, base *recorder) {
	o.OnGroupEvent = func(e GroupEvent) {
		r.mu.Lock()
		r.events = append(r.events, e)
		r.mu.Unlock()
	}
	o.OnReceipt = func(rc Receipt) {
		r.mu.Lock()
		r.receipts = append(r.receipts, rc)
		r.mu.Unlock()
	}
	o.OnTyping = func(e TypingEvent) {
		r.mu.Lock()
		r.typing = append(r.typing, e)
		r.order = append(r.order, fmt.Sprintf("typing:%s/%d/%v", e.Conv, e.UID, e.Typing))
		r.mu.Unlock()
	}
	o.OnPresence = func(p []Presence) {
		r.mu.Lock()
		r.presence = append(r.presence, p)
		r.mu.Unlock()
	}
	o.OnMessage = func(m Message) {
		base.onMessage(m)
		r.mu.Lock()
		r.order = append(r.order, fmt.Sprintf("msg:%s/%d", m.Conv, m.Seq))
		r.mu.Unlock()
	}
}

func (r *v2rec) eventNames(conv string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if e.Conv == conv {
			out = append(out, e.Event)
		}
	}
	return out
}

func (r *v2rec) lastEvent() GroupEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events[len(r.events)-1]
}

func (r *v2rec) snapshot() v2rec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return v2rec{events: slices.Clone(r.events), receipts: slices.Clone(r.receipts), typing: slices.Clone(r.typing),
		presence: slices.Clone(r.presence), order: slices.Clone(r.order)}
}

func newV2Fake(t *testing.T) *fakeServer {
	fs := newFakeServer(t)
	fs.version = 2
	return fs
}

// msgs returns the messages the client handed to OnMessage in conv.
func (r *recorder) messages(conv string) []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Message
	for _, m := range r.msgs {
		if m.Conv == conv {
			out = append(out, m)
		}
	}
	return out
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
}

// TestGroupLifecycleEvents: create, add, rename, remove, leave on a version
// 2 server. Every change reaches every member as a system message whose
// Event is decoded, through OnMessage and OnGroupEvent, in seq order; the
// group replies carry public and owner; the owner-only calls are refused
// to others.
func TestGroupLifecycleEvents(t *testing.T) {
	fs := newV2Fake(t)
	recs := map[int64]*recorder{}
	evs := map[int64]*v2rec{}
	clients := map[int64]*Client{}
	for _, uid := range []int64{1, 2, 3} {
		v := &v2rec{}
		r := &recorder{}
		c, _ := newTestClient(t, fs, uid, func(o *Options) { v.install(o, r) })
		clients[uid], recs[uid], evs[uid] = c, r, v
	}
	a, b, cc := clients[1], clients[2], clients[3]
	ctx := ctx10(t)
	if v := a.ServerVersion(); v != 2 {
		t.Fatalf("ServerVersion %d", v)
	}

	g, err := a.CreateGroupWith(ctx, NewGroup{Name: "team", Members: []int64{2}})
	if err != nil {
		t.Fatal(err)
	}
	if g.Public || g.Owner != 1 || g.Count != 2 || !slices.Equal(g.Members, []int64{1, 2}) {
		t.Fatalf("create reply %+v", g)
	}
	conv := GroupConv(g.ID)
	for _, uid := range []int64{1, 2} {
		waitFor(t, 5*time.Second, fmt.Sprintf("u%d gets created", uid), func() bool { return len(evs[uid].eventNames(conv)) == 1 })
	}
	ev := evs[2].lastEvent()
	if ev.Event != EventCreated || ev.Name != "team" || ev.Public || ev.Count != 2 || ev.Actor != 1 || ev.Seq != 1 || ev.Group != g.ID {
		t.Fatalf("created event %+v", ev)
	}
	if m := recs[2].messages(conv); len(m) != 1 || m[0].Event == nil || m[0].Event.Event != EventCreated || m[0].Kind != "system" || !strings.HasPrefix(m[0].Body, "{") {
		t.Fatalf("created message %+v", m)
	}

	// A private group cannot be joined; a non-owner can add but not remove or rename.
	_, err = cc.JoinGroup(ctx, g.ID)
	wantCode(t, err, CodeForbidden)
	g2, err := b.AddMembers(ctx, g.ID, []int64{3, 3})
	if err != nil || g2.Count != 3 || g2.Owner != 1 {
		t.Fatalf("add: %+v %v", g2, err)
	}
	_, err = b.RemoveMembers(ctx, g.ID, []int64{3})
	wantCode(t, err, CodeForbidden)
	_, err = b.RenameGroup(ctx, g.ID, "mine")
	wantCode(t, err, CodeForbidden)
	if _, err := a.AddMembers(ctx, g.ID, nil); err == nil {
		t.Fatal("AddMembers with no uids was sent")
	}

	if g3, err := a.RenameGroup(ctx, g.ID, "crew"); err != nil || g3.Name != "crew" {
		t.Fatalf("rename: %+v %v", g3, err)
	}
	if _, err := a.RemoveMembers(ctx, g.ID, []int64{2}); err != nil {
		t.Fatal(err)
	}
	if g4, err := a.LeaveGroup(ctx, g.ID); err != nil || g4.Owner != 3 || g4.Count != 1 {
		t.Fatalf("leave: %+v %v", g4, err)
	}

	all := []string{EventCreated, EventAdded, EventRenamed, EventRemoved, EventLeft}
	waitFor(t, 5*time.Second, "the owner sees every change", func() bool { return slices.Equal(evs[1].eventNames(conv), all) })
	// Bob: everything up to his removal, which names him; nothing after.
	waitFor(t, 5*time.Second, "bob sees his removal", func() bool {
		return slices.Equal(evs[2].eventNames(conv), all[:4])
	})
	// Carol was added after the group started: she gets its whole history
	// (a conversation that appears after the first catch-up starts at 0).
	waitFor(t, 5*time.Second, "carol sees everything", func() bool { return slices.Equal(evs[3].eventNames(conv), all) })

	snap := evs[3].snapshot()
	added, removed, left := snap.events[1], snap.events[3], snap.events[4]
	if !slices.Equal(added.Members, []int64{3}) || !added.Affects(3) || added.Affects(2) || added.Actor != 2 {
		t.Errorf("added %+v", added)
	}
	if snap.events[2].Name != "crew" {
		t.Errorf("renamed %+v", snap.events[2])
	}
	if !slices.Equal(removed.Members, []int64{2}) || !removed.Affects(2) {
		t.Errorf("removed %+v", removed)
	}
	if !left.OwnerChanged || left.NewOwner != 3 || !left.Affects(1) || left.Actor != 1 {
		t.Errorf("left %+v", left)
	}
	if got := recs[3].seqs(conv); !slices.Equal(got, []int64{1, 2, 3, 4, 5}) {
		t.Errorf("carol's seqs %v", got)
	}
	// History pages decode events too.
	page, err := cc.HistoryLatest(ctx, conv, 10)
	if err != nil || len(page.Messages) != 5 || page.Messages[4].Event == nil || !page.Messages[4].Event.OwnerChanged {
		t.Fatalf("history %+v %v", page, err)
	}
	// So does the last message in convs, and group items carry owner and public.
	list, err := cc.Convs(ctx)
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("convs %+v %v", list, err)
	}
	if it := list.Items[0]; it.Owner != 3 || it.Public || it.Name != "crew" || it.Last == nil || it.Last.Event == nil || it.Last.Event.Event != EventLeft {
		t.Errorf("convs item %+v", it)
	}
}

// TestJoinPublicGroupDeliversOwnJoin: joining a public group delivers the
// join's own system message and what follows, not the history before it.
func TestJoinPublicGroupDeliversOwnJoin(t *testing.T) {
	fs := newV2Fake(t)
	a, _ := newTestClient(t, fs, 1, nil)
	v := &v2rec{}
	rc := &recorder{}
	c, _ := newTestClient(t, fs, 3, func(o *Options) { v.install(o, rc) })
	ctx := ctx10(t)
	g, err := a.CreateGroupWith(ctx, NewGroup{Name: "lobby", Public: true})
	if err != nil || !g.Public {
		t.Fatalf("create public: %+v %v", g, err)
	}
	for i := 0; i < 3; i++ {
		if _, err := a.SendGroup(ctx, g.ID, fmt.Sprintf("before %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	j, err := c.JoinGroup(ctx, g.ID)
	if err != nil || !j.Public || j.Owner != 1 || j.Count != 2 {
		t.Fatalf("join: %+v %v", j, err)
	}
	if _, err := a.SendGroup(ctx, g.ID, "after"); err != nil {
		t.Fatal(err)
	}
	conv := GroupConv(g.ID)
	waitFor(t, 5*time.Second, "join and after", func() bool { return len(rc.seqs(conv)) == 2 })
	if got := rc.seqs(conv); !slices.Equal(got, []int64{5, 6}) {
		t.Fatalf("joiner got seqs %v, want the join (5) and after (6)", got)
	}
	if got := v.eventNames(conv); !slices.Equal(got, []string{EventJoined}) {
		t.Fatalf("joiner's events %v", got)
	}
	// Joining again stores nothing and changes no position.
	if _, err := c.JoinGroup(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
}

// TestSystemEventsDecodedOnlyFromV2: the same system-shaped message is a
// group event from a version 2 server and plain text from version 1 (where
// any client may send kind "system"); unknown events pass untouched.
func TestSystemEventsDecodedOnlyFromV2(t *testing.T) {
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			fs := newFakeServer(t)
			fs.version = version
			v := &v2rec{}
			r := &recorder{}
			newTestClient(t, fs, 2, func(o *Options) { v.install(o, r); o.Start = StartBeginning })
			push := func(seq int64, body string) {
				fs.pushTo(2, map[string]any{"type": "msg", "conv": "g:9", "seq": seq, "from": 1, "ts": 5, "kind": "system", "body": body, "cmid": fmt.Sprintf("sys:%d", seq)})
			}
			fs.mu.Lock()
			fs.msgs["g:9"] = nil
			fs.mu.Unlock()
			push(1, `{"event":"renamed","name":"x"}`)
			push(2, `{"event":"archived","until":7}`)
			push(3, `not json`)
			waitFor(t, 5*time.Second, "three messages", func() bool { return len(r.seqs("g:9")) == 3 })
			ms := r.messages("g:9")
			if ms[1].Body != `{"event":"archived","until":7}` || ms[2].Body != "not json" {
				t.Fatalf("bodies changed: %+v", ms)
			}
			if version == 1 {
				for _, m := range ms {
					if m.Event != nil {
						t.Fatalf("v1 message decoded as an event: %+v", m)
					}
				}
				if n := len(v.snapshot().events); n != 0 {
					t.Fatalf("%d group events from a v1 server", n)
				}
				return
			}
			if ms[0].Event == nil || ms[0].Event.Name != "x" || ms[1].Event == nil || ms[1].Event.Event != "archived" || ms[2].Event != nil {
				t.Fatalf("events %+v %+v %+v", ms[0].Event, ms[1].Event, ms[2].Event)
			}
			waitFor(t, 5*time.Second, "two group events", func() bool { return len(v.eventNames("g:9")) == 2 })
			// A user's message that only looks like a system message is text.
			if _, ok := ParseGroupEvent(Message{Conv: "g:9", Kind: "text", Body: `{"event":"left"}`, CMID: "sys:1"}); ok {
				t.Fatal("kind text parsed as a group event")
			}
			if _, ok := ParseGroupEvent(Message{Conv: "g:9", Kind: "system", Body: `{"event":"left"}`, CMID: "c-1"}); ok {
				t.Fatal("a cmid without sys: parsed as a group event")
			}
		})
	}
}

// TestReceipts: a read by the peer reaches the sender as OnReceipt; the
// peer's read seq is in convs and in the receipts reply.
func TestReceipts(t *testing.T) {
	fs := newV2Fake(t)
	v := &v2rec{}
	a, _ := newTestClient(t, fs, 1, func(o *Options) { v.install(o, &recorder{}) })
	b, rb := newTestClient(t, fs, 2, nil)
	ctx := ctx10(t)
	sendN(t, a, 2, 3, "m")
	waitFor(t, 5*time.Second, "b has 3", func() bool { return len(rb.seqs("d:1:2")) == 3 })
	if _, err := b.MarkRead(ctx, "d:1:2", 2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "receipt", func() bool { return len(v.snapshot().receipts) == 1 })
	if got := v.snapshot().receipts[0]; got != (Receipt{Conv: "d:1:2", UID: 2, Seq: 2}) {
		t.Fatalf("receipt %+v", got)
	}
	list, err := a.Convs(ctx)
	if err != nil || len(list.Items) != 1 || list.Items[0].PeerReadSeq != 2 || list.Items[0].Peer != 2 {
		t.Fatalf("convs %+v %v", list, err)
	}
	rs, err := a.Receipts(ctx, "d:1:2")
	if err != nil || !slices.Equal(rs, []ReadState{{UID: 2, ReadSeq: 2}}) {
		t.Fatalf("receipts %+v %v", rs, err)
	}
	// Reading again at the same seq grows nothing: no second receipt.
	if _, err := b.MarkRead(ctx, "d:1:2", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := b.MarkRead(ctx, "d:1:2", 3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "second receipt", func() bool { return len(v.snapshot().receipts) == 2 })
	if got := v.snapshot().receipts; got[1].Seq != 3 {
		t.Fatalf("receipts %+v", got)
	}
}

// TestTypingThrottleAndIndicator: Typing sends at most one frame per
// interval per conversation — the first call at once, the calls inside the
// interval as one frame at its end, dropped by a Send; the receiver's
// indicator starts on the first frame, ends on a message from the typist
// (before that message is delivered) and otherwise expires.
func TestTypingThrottleAndIndicator(t *testing.T) {
	fs := newV2Fake(t)
	a, _ := newTestClient(t, fs, 1, func(o *Options) { o.TypingInterval = 300 * time.Millisecond })
	v := &v2rec{}
	rb := &recorder{}
	b, _ := newTestClient(t, fs, 2, func(o *Options) { v.install(o, rb) })
	framesFor := func(conv string) []time.Time {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		var at []time.Time
		for _, ty := range fs.v2.typings {
			if ty.conv == conv {
				at = append(at, ty.at)
			}
		}
		return at
	}
	start := time.Now()
	for i := 0; i < 20; i++ {
		if err := a.Typing("d:1:2"); err != nil {
			t.Fatal(err)
		}
	}
	loop := time.Since(start)
	if err := a.Typing("d:1:3"); err != nil { // another conversation has its own interval
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "first frames", func() bool { return len(framesFor("d:1:2")) >= 1 && len(framesFor("d:1:3")) == 1 })
	waitFor(t, 5*time.Second, "indicator on", func() bool { return slices.Equal(b.Typers("d:1:2"), []int64{1}) })
	if n := len(framesFor("d:1:2")); loop < 250*time.Millisecond && n != 1 {
		t.Fatalf("20 calls within %v sent %d frames at once, want 1", loop, n)
	}
	// The 19 calls inside the interval become one frame at its end.
	waitFor(t, 5*time.Second, "the frame due at the interval's end", func() bool { return len(framesFor("d:1:2")) == 2 })
	if at := framesFor("d:1:2"); at[1].Sub(at[0]) < 250*time.Millisecond {
		t.Fatalf("two typing frames %v apart, interval 300ms", at[1].Sub(at[0]))
	}

	// A message from the typist ends the indicator, before it is delivered.
	sendN(t, a, 2, 1, "done")
	waitFor(t, 5*time.Second, "message", func() bool { return len(rb.seqs("d:1:2")) == 1 })
	if ty := b.Typers("d:1:2"); len(ty) != 0 {
		t.Fatalf("typers after the message %v", ty)
	}
	order := v.snapshot().order
	if !slices.Equal(order, []string{"typing:d:1:2/1/true", "typing:d:1:2/1/false", "msg:d:1:2/1"}) {
		t.Fatalf("callback order %v", order)
	}

	// A Send drops the frame due at the interval's end.
	waitFor(t, 5*time.Second, "a frame goes out", func() bool {
		a.Typing("d:1:2")
		return len(framesFor("d:1:2")) == 3
	})
	a.Typing("d:1:2") // inside the interval: a frame is due
	a.mu.Lock()
	due := a.typing.trail["d:1:2"] != nil
	a.mu.Unlock()
	if !due {
		t.Fatal("no frame due after a call inside the interval")
	}
	sendN(t, a, 2, 1, "sent")
	a.mu.Lock()
	due = a.typing.trail["d:1:2"] != nil
	a.mu.Unlock()
	if due {
		t.Fatal("the frame due is still pending after a Send")
	}

	// Without a message, the indicator expires by itself.
	b.mu.Lock()
	b.typing.ttl = 300 * time.Millisecond
	b.mu.Unlock()
	a.mu.Lock()
	clear(a.typing.sent) // let the next call go out at once: one frame, none due after it
	a.mu.Unlock()
	if err := a.Typing("d:1:2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "another frame", func() bool { return len(framesFor("d:1:2")) == 4 })
	waitFor(t, 5*time.Second, "indicator on and expired", func() bool {
		s := v.snapshot().typing
		// Events: on, off (message), on, off ("sent"), on, off (expired).
		return len(s) == 6 && s[4].Typing && !s[5].Typing && len(b.Typers("d:1:2")) == 0
	})
	// Typing from oneself (another device) is not an indicator.
	fs.pushTo(2, map[string]any{"type": "typing", "conv": "d:1:2", "uid": 2})
	fs.pushTo(2, map[string]any{"type": "typing", "conv": "g:4", "uid": 7})
	waitFor(t, 5*time.Second, "other typist", func() bool { return len(b.Typers("g:4")) == 1 })
	if ty := b.Typers("d:1:2"); len(ty) != 0 {
		t.Fatalf("own typing shown: %v", ty)
	}

	if err := a.Typing("x:1"); err == nil {
		t.Fatal("malformed conv accepted")
	}
}

// TestV2CallsOnV1Server: a version 1 server is accepted; the calls that
// need version 2 say so instead of sending frames it does not know.
func TestV2CallsOnV1Server(t *testing.T) {
	fs := newFakeServer(t)
	a, _ := newTestClient(t, fs, 1, nil)
	if v := a.ServerVersion(); v != 1 {
		t.Fatalf("ServerVersion %d", v)
	}
	if err := a.Typing("d:1:2"); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("Typing on v1: %v", err)
	}
	if _, err := a.SubscribePresence(ctx10(t), []int64{2}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("SubscribePresence on v1: %v", err)
	}
	fs.mu.Lock()
	n := len(fs.v2.frames)
	fs.mu.Unlock()
	if n != 0 {
		t.Fatalf("v2 frames sent to a v1 server: %v", fs.v2.frames)
	}
	sendN(t, a, 2, 1, "still works")
}

// TestPresenceSubscribeAndResubscribe: the reply and pushes update the
// state and reach OnPresence; after a reconnect the client subscribes
// again by itself, once; an empty list unsubscribes.
func TestPresenceSubscribeAndResubscribe(t *testing.T) {
	fs := newV2Fake(t)
	v := &v2rec{}
	var blockDial atomic.Bool
	a, ra := newTestClient(t, fs, 1, func(o *Options) {
		v.install(o, &recorder{})
		o.Backoff = Backoff{First: 20 * time.Millisecond, Max: 20 * time.Millisecond}
		o.NetDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if blockDial.Load() {
				return nil, errors.New("test: dial blocked")
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	})
	b, _ := newTestClient(t, fs, 2, nil)
	ctx := ctx10(t)
	if _, err := a.SubscribePresence(ctx, make([]int64, 1001)); err == nil {
		t.Fatal("1001 uids accepted")
	}
	if _, err := a.SubscribePresence(ctx, []int64{2, 0}); err == nil {
		t.Fatal("uid 0 accepted")
	}
	items, err := a.SubscribePresence(ctx, []int64{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || !items[0].Online || items[0].UID != 2 || items[1].Online || items[1].UID != 3 {
		t.Fatalf("reply %+v", items)
	}
	if p, ok := a.Presence(2); !ok || !p.Online {
		t.Fatalf("Presence(2) %+v %v", p, ok)
	}
	waitFor(t, 5*time.Second, "OnPresence for the reply", func() bool { return len(v.snapshot().presence) == 1 })

	// Bob goes away: a push says offline with last_seen.
	b.Close()
	waitFor(t, 5*time.Second, "bob offline", func() bool { p, _ := a.Presence(2); return !p.Online && p.LastSeen > 0 })
	// The state is updated before OnPresence runs (callbacks are
	// delivered in order on their own goroutine): wait for the callback.
	waitFor(t, 5*time.Second, "OnPresence for the push", func() bool { return len(v.snapshot().presence) >= 2 })
	snap := v.snapshot().presence
	if last := snap[len(snap)-1]; len(last) != 1 || last[0].UID != 2 || last[0].Online {
		t.Fatalf("push %+v", last)
	}

	// Reconnect: exactly one presence_sub with the same list, sent by the
	// client itself; a SubscribePresence made while offline is answered by it.
	subs := func() int {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		n := 0
		for _, f := range fs.v2.frames {
			if f == "presence_sub" {
				n++
			}
		}
		return n
	}
	online := ra.countStates(StateOnline)
	blockDial.Store(true)
	fs.closeAll(1001)
	waitFor(t, 5*time.Second, "reconnecting", func() bool { return a.State() == StateReconnecting })
	done := make(chan []Presence, 1)
	go func() {
		items, err := a.SubscribePresence(ctx, []int64{3, 2})
		if err != nil {
			t.Error(err)
		}
		done <- items
	}()
	waitFor(t, 5*time.Second, "the call waits", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.presence.waiters) == 1
	})
	blockDial.Store(false)
	waitFor(t, 5*time.Second, "online again", func() bool { return ra.countStates(StateOnline) > online })
	got := <-done
	if len(got) != 2 || got[0].UID != 3 || got[1].UID != 2 {
		t.Fatalf("offline subscribe answered %+v", got)
	}
	waitFor(t, 5*time.Second, "resubscribed", func() bool { return subs() >= 2 })
	if n := subs(); n != 2 {
		t.Fatalf("%d presence_sub frames, want 2 (the first and one after the reconnect)", n)
	}

	// A second reconnect re-subscribes without any call.
	online = ra.countStates(StateOnline)
	before := len(v.snapshot().presence)
	fs.closeAll(0)
	waitFor(t, 5*time.Second, "online again", func() bool { return ra.countStates(StateOnline) > online })
	waitFor(t, 5*time.Second, "resubscribed by itself", func() bool { return subs() == 3 && len(v.snapshot().presence) > before })
	fs.mu.Lock()
	var list []int64
	for c, uids := range fs.v2.subs {
		if c.uid == 1 {
			list = uids
		}
	}
	fs.mu.Unlock()
	if !slices.Equal(list, []int64{3, 2}) {
		t.Fatalf("server holds subscription %v", list)
	}

	// Unsubscribe: the list is empty on the server and the state forgotten.
	if _, err := a.SubscribePresence(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Presence(2); ok {
		t.Fatal("state kept after unsubscribing")
	}
	fs.mu.Lock()
	for c, uids := range fs.v2.subs {
		if c.uid == 1 && len(uids) != 0 {
			t.Errorf("server still holds %v", uids)
		}
	}
	fs.mu.Unlock()
	// A push that crosses the unsubscribe is not reported.
	n := len(v.snapshot().presence)
	fs.pushTo(1, map[string]any{"type": "presence", "items": []any{map[string]any{"uid": 2, "online": true, "last_seen": 0}}})
	sendN(t, a, 2, 1, "sync") // a round trip: the push was handled before the sent
	if got := len(v.snapshot().presence); got != n {
		t.Fatalf("unsubscribed push reported")
	}
	if _, ok := a.Presence(2); ok {
		t.Fatal("unsubscribed push recorded")
	}
}
