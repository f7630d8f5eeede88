package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// Tests in this file run against a real `magpie serve` child process
// (internal/testserver): the SDK's protocol is checked against the server,
// not against the in-process fake.

// demoClient connects a demo user (alice, bob, carol; password "password").
func demoClient(t *testing.T, srv *testserver.Server, user string, mod func(*Options)) (*Client, *recorder) {
	t.Helper()
	r := &recorder{}
	o := Options{
		Server:    srv.HTTPURL(),
		Username:  user,
		Password:  "password",
		Backoff:   Backoff{First: 200 * time.Millisecond, Max: 2 * time.Second},
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
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("connect %s: %v\n%s", user, err, srv.Logs())
	}
	return c, r
}

func TestRealServerBasics(t *testing.T) {
	srv := testserver.Start(t, "--demo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice, ra := demoClient(t, srv, "alice", nil)
	bob, rb := demoClient(t, srv, "bob", func(o *Options) { o.AuthFrame = true; o.Device = "laptop" })
	users, err := alice.ListUsers(ctx, UsersQuery{Prefix: "b"})
	if err != nil || len(users) != 1 || users[0].Username != "bob" {
		t.Fatalf("users: %v %v", users, err)
	}
	bobID := users[0].UID
	if bob.UID() != bobID {
		t.Fatalf("bob uid %d vs %d", bob.UID(), bobID)
	}
	conv := DirectConv(alice.UID(), bobID)
	for i := 1; i <= 5; i++ {
		s, err := alice.SendTo(ctx, bobID, fmt.Sprintf("m%d", i))
		if err != nil || s.Conv != conv || s.Seq != int64(i) {
			t.Fatalf("send %d: %+v %v", i, s, err)
		}
	}
	waitFor(t, 10*time.Second, "bob gets 5", func() bool { return len(rb.seqs(conv)) == 5 })
	if got := rb.bodies(conv); !slices.Equal(got, wantBodies("m", 1, 5)) {
		t.Fatalf("bob got %v", got)
	}
	// The sender's application gets its own messages too, in seq order.
	waitFor(t, 10*time.Second, "alice gets her own 5", func() bool { return len(ra.seqs(conv)) == 5 })
	if got := ra.bodies(conv); !slices.Equal(got, wantBodies("m", 1, 5)) {
		t.Fatalf("alice got %v", got)
	}
	list, err := bob.Convs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lobby int64
	for _, it := range list.Items {
		if it.Conv == conv && it.Unread != 5 {
			t.Errorf("unread %d", it.Unread)
		}
		if it.Name == "lobby" {
			lobby = it.Group
		}
	}
	if lobby == 0 {
		t.Fatalf("no lobby in %+v", list)
	}
	rm, err := bob.MarkRead(ctx, conv, 3)
	if err != nil || rm.Seq != 3 || rm.Unread != 2 {
		t.Fatalf("read: %+v %v", rm, err)
	}
	page, err := bob.HistoryBefore(ctx, conv, 5, 2)
	if err != nil || len(page.Messages) != 2 || page.Messages[0].Seq != 3 || !page.More {
		t.Fatalf("history before: %+v %v", page, err)
	}
	page, err = bob.HistoryLatest(ctx, conv, 2)
	if err != nil || len(page.Messages) != 2 || page.Messages[1].Seq != 5 {
		t.Fatalf("history latest: %+v %v", page, err)
	}
	// Errors are typed.
	_, err = bob.HistoryAfter(ctx, "d:0:1", 0, 10)
	if e, ok := err.(*Error); !ok || e.Code != CodeBadRequest {
		t.Fatalf("bad conv: %v", err)
	}
	_, err = bob.SendTo(ctx, bobID, "self")
	if e, ok := err.(*Error); !ok || e.Code != CodeBadRequest {
		t.Fatalf("send to self: %v", err)
	}
	// Groups. Version 2: a group joinable by id must be public, and every
	// membership change is a message too (created, joined).
	v2 := alice.ServerVersion() >= 2
	g, err := alice.CreateGroupWith(ctx, NewGroup{Name: "team", Members: []int64{bobID}, Public: v2})
	if err != nil || g.Count != 2 || len(g.Members) != 2 {
		t.Fatalf("create: %+v %v", g, err)
	}
	if _, err := alice.SendGroup(ctx, g.ID, "before carol"); err != nil {
		t.Fatal(err)
	}
	carol, rc := demoClient(t, srv, "carol", nil)
	jg, err := carol.JoinGroup(ctx, g.ID)
	if err != nil || jg.Count != 3 {
		t.Fatalf("join: %+v %v", jg, err)
	}
	if _, err := alice.SendGroup(ctx, g.ID, "after carol"); err != nil {
		t.Fatal(err)
	}
	gconv := GroupConv(g.ID)
	wantCarol, wantBob := []int64{2}, []int64{1, 2} // v1: before carol, after carol
	if v2 {
		wantCarol, wantBob = []int64{3, 4}, []int64{1, 2, 3, 4} // created, before, joined, after
	}
	waitFor(t, 10*time.Second, "group message", func() bool {
		return len(rc.seqs(gconv)) == len(wantCarol) && len(rb.seqs(gconv)) == len(wantBob)
	})
	if got := rc.seqs(gconv); !slices.Equal(got, wantCarol) || rc.bodies(gconv)[len(wantCarol)-1] != "after carol" {
		t.Fatalf("carol got %v %v", got, rc.bodies(gconv))
	}
	if got := rb.seqs(gconv); !slices.Equal(got, wantBob) {
		t.Fatalf("bob got %v", got)
	}
	mg, err := carol.GroupMembers(ctx, g.ID, 0, 10)
	if err != nil || mg.Count != 3 || len(mg.Members) != 3 {
		t.Fatalf("members: %+v %v", mg, err)
	}
	if _, err := carol.LeaveGroup(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.LeaveGroup(ctx, g.ID); err == nil {
		t.Fatal("second leave succeeded")
	} else if e, ok := err.(*Error); !ok || e.Code != CodeNotMember {
		t.Fatalf("second leave: %v", err)
	}
}

// TestRealReloginAfterExpiry: with an expired token the reconnect gets HTTP
// 401 at the handshake; a client with credentials logs in again, a client
// with only a token goes offline with ErrUnauthorized.
func TestRealReloginAfterExpiry(t *testing.T) {
	srv := testserver.Start(t, "--demo", "--token-ttl", "1s")
	withCreds, rc := demoClient(t, srv, "alice", nil)
	oldToken := withCreds.Token()
	ro := &recorder{}
	tokenOnly, err := New(Options{Token: oldToken, WSURL: srv.WSURL(), OnState: ro.onState,
		Backoff: Backoff{First: 100 * time.Millisecond, Max: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer tokenOnly.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tokenOnly.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// Open connections outlive their token (PROTOCOL §3); a restart
	// makes both clients authenticate again after it expired.
	expiry := time.Now().Add(1500 * time.Millisecond)
	waitFor(t, 5*time.Second, "token expiry", func() bool { return time.Now().After(expiry) })
	online := rc.countStates(StateOnline)
	srv.Kill()
	srv.Restart()
	waitFor(t, 20*time.Second, "re-login and online", func() bool { return rc.countStates(StateOnline) > online })
	if withCreds.Token() == oldToken {
		t.Error("token unchanged after re-login")
	}
	waitFor(t, 20*time.Second, "token-only client offline", func() bool { return ro.lastState().State == StateOffline })
	if ev := ro.lastState(); !errors.Is(ev.Err, ErrUnauthorized) {
		t.Fatalf("token-only client: %+v", ev)
	}
}

// TestRealReplacedDevice: a second connection with the same device closes
// the first with 4004, which stays offline.
func TestRealReplacedDevice(t *testing.T) {
	srv := testserver.Start(t, "--demo")
	first, r1 := demoClient(t, srv, "bob", func(o *Options) { o.Device = "phone" })
	_, r2 := demoClient(t, srv, "bob", func(o *Options) { o.Device = "phone" })
	waitFor(t, 10*time.Second, "first replaced", func() bool { return r1.lastState().State == StateOffline })
	if ev := r1.lastState(); ev.Code != CloseReplaced || !errors.Is(ev.Err, ErrReplaced) {
		t.Fatalf("first: %+v", ev)
	}
	if first.State() != StateOffline {
		t.Fatal("first not offline")
	}
	if r2.countStates(StateReconnecting) != 0 || r1.countStates(StateReconnecting) != 0 {
		t.Fatalf("reconnects: %+v / %+v", r1.states, r2.states)
	}
}

// TestRealServerV2: groups with owners and events, receipts, typing and
// presence against a real server speaking protocol version 2 (skipped
// while it announces version 1).
func TestRealServerV2(t *testing.T) {
	srv := testserver.Start(t, "--demo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	va, vb, vc := &v2rec{}, &v2rec{}, &v2rec{}
	ra, rb, rc := &recorder{}, &recorder{}, &recorder{}
	alice, _ := demoClient(t, srv, "alice", func(o *Options) { va.install(o, ra) })
	if v := alice.ServerVersion(); v < 2 {
		t.Skipf("the server announces protocol version %d; this test needs version 2", v)
	}
	bob, _ := demoClient(t, srv, "bob", func(o *Options) { vb.install(o, rb) })
	carol, _ := demoClient(t, srv, "carol", func(o *Options) { vc.install(o, rc) })
	a, b, c := alice.UID(), bob.UID(), carol.UID()

	// The demo lobby is public and alice's.
	list, err := carol.Convs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lobbyOK := false
	for _, it := range list.Items {
		if it.Name == "lobby" {
			lobbyOK = it.Public && it.Owner == a
		}
	}
	if !lobbyOK {
		t.Errorf("lobby is not public and alice's: %+v", list.Items)
	}

	// A private group: owner-only changes, events for every member.
	g, err := alice.CreateGroupWith(ctx, NewGroup{Name: "team", Members: []int64{b}})
	if err != nil || g.Public || g.Owner != a {
		t.Fatalf("create: %+v %v", g, err)
	}
	conv := GroupConv(g.ID)
	_, err = carol.JoinGroup(ctx, g.ID)
	wantCode(t, err, CodeForbidden)
	_, err = bob.RenameGroup(ctx, g.ID, "mine")
	wantCode(t, err, CodeForbidden)
	if _, err := bob.AddMembers(ctx, g.ID, []int64{c}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.RenameGroup(ctx, g.ID, "crew"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.RemoveMembers(ctx, g.ID, []int64{b}); err != nil {
		t.Fatal(err)
	}
	if gl, err := alice.LeaveGroup(ctx, g.ID); err != nil || gl.Owner != c {
		t.Fatalf("leave: %+v %v", gl, err)
	}
	all := []string{EventCreated, EventAdded, EventRenamed, EventRemoved, EventLeft}
	waitFor(t, 10*time.Second, "carol sees every change", func() bool { return slices.Equal(vc.eventNames(conv), all) })
	waitFor(t, 10*time.Second, "bob sees up to his removal", func() bool { return slices.Equal(vb.eventNames(conv), all[:4]) })
	if ev := vc.lastEvent(); !ev.OwnerChanged || ev.NewOwner != c {
		t.Errorf("left event %+v", ev)
	}
	// A client cannot forge a system message.
	_, err = bob.Send(ctx, Outgoing{To: a, Body: `{"event":"left"}`, Kind: "system"})
	wantCode(t, err, CodeBadRequest)

	// Receipts.
	dconv := DirectConv(a, b)
	if _, err := alice.SendTo(ctx, b, "read me"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "bob has it", func() bool { return len(rb.seqs(dconv)) == 1 })
	if _, err := bob.MarkRead(ctx, dconv, 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "receipt", func() bool { return len(va.snapshot().receipts) >= 1 })
	if r := va.snapshot().receipts[0]; r != (Receipt{Conv: dconv, UID: b, Seq: 1}) {
		t.Errorf("receipt %+v", r)
	}
	if rs, err := alice.Receipts(ctx, dconv); err != nil || !slices.Equal(rs, []ReadState{{UID: b, ReadSeq: 1}}) {
		t.Errorf("receipts %+v %v", rs, err)
	}

	// Typing: shown to bob, ended by alice's message.
	if err := alice.Typing(dconv); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "bob sees alice typing", func() bool { return slices.Equal(bob.Typers(dconv), []int64{a}) })
	if _, err := alice.SendTo(ctx, b, "typed"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "indicator ended by the message", func() bool { return len(rb.seqs(dconv)) == 2 && len(bob.Typers(dconv)) == 0 })

	// Presence: bob online, then offline after --presence-grace with last_seen.
	items, err := alice.SubscribePresence(ctx, []int64{b, c})
	if err != nil || len(items) != 2 || !items[0].Online || !items[1].Online {
		t.Fatalf("presence %+v %v", items, err)
	}
	bob.Close()
	waitFor(t, 20*time.Second, "bob offline", func() bool { p, _ := alice.Presence(b); return !p.Online && p.LastSeen > 0 })
}
