package server_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/magpie-im/magpie/internal/testserver"
)

// TestFaultGroupChangesCrash (issue 13): a membership change and its
// system message are one atomic commit (PROTOCOL §13). Several clients
// stream group changes — the owner adds and removes two users and renames
// the group, three users join and leave the (public) group — while two
// members send messages to it; the server is killed with SIGKILL at a
// random moment and restarted on the same data dir. Then the group's
// system messages, replayed from seq 1, must give exactly its members,
// owner and name as group_members reports them (no change without its
// message, no message without its change); every change a client got its
// reply for must have its message (and at most the one request in flight
// at the kill may have one too); the messages of the senders are checked
// as in TestFaultCrashKill9 (gapless seqs, every sent one present).
func TestFaultGroupChangesCrash(t *testing.T) {
	rounds := fltCrashRounds(t)
	for _, fsync := range []bool{true, false} {
		t.Run(fmt.Sprintf("fsync=%v", fsync), func(t *testing.T) {
			fltGroupCrashTest(t, fsync, rounds)
		})
	}
}

// grpActor makes one kind of group change, one request at a time.
type grpActor struct {
	uid   uint64
	owner bool     // adds/removes others and renames; else joins and leaves
	moved []uint64 // the owner's: the users it adds and removes

	// Known after each round's verification; acked counts the requests
	// that got their group reply (each changed something).
	acked    int
	inflight bool // a request was written and not answered at the kill
	in       bool // joiner: a member; owner: moved are members
	renames  int
}

// run makes changes until the connection dies; first is called at the
// first reply.
func (a *grpActor) run(t testing.TB, srv *testserver.Server, gid uint64, round int, first func()) {
	var once sync.Once
	defer once.Do(first)
	c, err := fltDial(srv, fltToken(a.uid))
	if err != nil {
		t.Errorf("actor %d: %v", a.uid, err)
		return
	}
	defer c.c.Close()
	for k := 0; ; k++ {
		rid := fmt.Sprintf("r%d-%d", round, k)
		req := map[string]any{"rid": rid, "group": gid}
		switch {
		case a.owner && k%3 == 2:
			req["type"], req["name"] = "group_rename", fmt.Sprintf("n%d-%d", round, k)
		case a.owner && a.in:
			req["type"], req["members"] = "group_remove", a.moved
		case a.owner:
			req["type"], req["members"] = "group_add", a.moved
		case a.in:
			req["type"] = "group_leave"
		default:
			req["type"] = "group_join"
		}
		for tries := 0; ; tries++ {
			a.inflight = true
			if c.write(req) != nil {
				return // the server is gone: in flight, unknown
			}
			f, ok := grpReply(c, rid)
			if !ok {
				return
			}
			if f.str("type") == "error" && f.str("code") == "rate_limited" && tries < 100 {
				a.inflight = false
				time.Sleep(5 * time.Millisecond) // retry later (PROTOCOL §4)
				continue
			}
			if f.str("type") != "group" {
				t.Errorf("actor %d: %v: %v", a.uid, req, f)
				return
			}
			break
		}
		a.inflight = false
		a.acked++
		if req["type"] == "group_rename" {
			a.renames++
		} else {
			a.in = !a.in
		}
		once.Do(first)
	}
}

// grpReply reads frames up to the reply with rid, acking pushes; ok is
// false when the connection died first.
func grpReply(c *fltConn, rid string) (fltFrame, bool) {
	for {
		f, err := c.next(20 * time.Second)
		if err != nil {
			return nil, false
		}
		if f.str("type") == "msg" {
			_ = c.write(map[string]any{"type": "ack", "conv": f.str("conv"), "seq": f.num("seq")})
			continue
		}
		if f.str("rid") == rid {
			return f, true
		}
	}
}

func fltGroupCrashTest(t *testing.T, fsync bool, rounds int) {
	srv := fltStart(t, "", "--fsync="+strconv.FormatBool(fsync), "--send-rate", "0", "--queue", "128")
	uids := make([]uint64, 8)
	for i := range uids {
		uids[i] = fltRegister(t, srv, fmt.Sprintf("grp%d", i))
	}
	owner, s1, s2 := uids[0], uids[1], uids[2]
	setup := fltMustDial(t, srv, fltToken(owner))
	f, err := setup.request(map[string]any{"type": "group_create", "rid": "gc", "name": "crash", "public": true, "members": []uint64{s1, s2}})
	if err != nil || f.str("type") != "group" {
		t.Fatalf("group_create: %v %v", f, err)
	}
	setup.c.Close()
	gid := f.num("group")
	g := fltGroup(gid)
	actors := []*grpActor{{uid: owner, owner: true, moved: []uint64{uids[3], uids[4]}}}
	for _, u := range uids[5:] {
		actors = append(actors, &grpActor{uid: u})
	}
	senders := []*fltSender{{uid: s1, group: gid, conv: g}, {uid: s2, group: gid, conv: g}}
	led := newFltLedger(t)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	for round := 1; round <= rounds; round++ {
		var wg, ready sync.WaitGroup
		fltStartSenders(t, srv, senders, round, 16, led, &wg, &ready)
		for _, a := range actors {
			wg.Add(1)
			ready.Add(1)
			go func() {
				defer wg.Done()
				a.run(t, srv, gid, round, ready.Done)
			}()
		}
		delay := fltKillRandomly(t, srv, rng, round, &ready, &wg)
		changes := 0
		for _, a := range actors {
			changes += a.acked
		}
		t.Logf("round %d: killed %v after the first replies; %d changes acknowledged so far", round, delay.Round(time.Millisecond), changes)
		srv.Restart()
		fltVerify(t, srv, led, map[string]uint64{g: owner})
		grpVerify(t, srv, gid, owner, []uint64{owner, s1, s2}, actors)
		if t.Failed() {
			t.FailNow()
		}
	}
}

// grpVerify replays group gid's system messages (it was created by owner
// with members initial) and checks them against group_members, and each
// actor's messages against the requests it got replies for. It then
// settles what was unknown at the crash.
func grpVerify(t *testing.T, srv *testserver.Server, gid, owner uint64, initial []uint64, actors []*grpActor) {
	t.Helper()
	c := fltMustDial(t, srv, fltToken(owner))
	defer c.c.Close()
	msgs, err := c.history(fltGroup(gid))
	if err != nil {
		t.Fatal(err)
	}
	members := map[uint64]bool{}
	for _, u := range initial {
		members[u] = true
	}
	curOwner, name := uint64(0), ""
	byActor := map[uint64]int{}
	systems := 0
	for _, m := range msgs {
		if m.Kind != "system" {
			continue
		}
		systems++
		var ev struct {
			Event   string   `json:"event"`
			Members []uint64 `json:"members"`
			Owner   *uint64  `json:"owner"`
			Name    string   `json:"name"`
			Count   int      `json:"count"`
		}
		if err := json.Unmarshal([]byte(m.Body), &ev); err != nil {
			t.Fatalf("seq %d: body %q: %v", m.Seq, m.Body, err)
		}
		if ev.Event != "created" {
			byActor[m.From]++
		}
		switch ev.Event {
		case "created":
			if m.Seq != 1 || ev.Count != len(initial) || m.From != owner {
				t.Fatalf("created %+v", m)
			}
			curOwner, name = m.From, ev.Name
		case "added", "removed":
			if len(ev.Members) == 0 || !slices.IsSorted(ev.Members) {
				t.Fatalf("seq %d: %s", m.Seq, m.Body)
			}
			for _, u := range ev.Members {
				if members[u] == (ev.Event == "added") {
					t.Fatalf("seq %d: %s, but %d's membership is %v", m.Seq, m.Body, u, members[u])
				}
				members[u] = ev.Event == "added"
			}
		case "joined":
			if members[m.From] {
				t.Fatalf("seq %d: member %d joins", m.Seq, m.From)
			}
			members[m.From] = true
		case "left":
			if !members[m.From] || ev.Owner != nil {
				t.Fatalf("seq %d: %d leaves: %s (the owner never leaves here)", m.Seq, m.From, m.Body)
			}
			members[m.From] = false
		case "renamed":
			name = ev.Name
		default:
			t.Fatalf("seq %d: %s", m.Seq, m.Body)
		}
	}
	var want []uint64
	for u, in := range members {
		if in {
			want = append(want, u)
		}
	}
	slices.Sort(want)
	f, err := c.request(map[string]any{"type": "group_members", "rid": "gm", "group": gid, "limit": 10000})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, x := range f["members"].([]any) {
		got = append(got, uint64(x.(float64)))
	}
	if !slices.Equal(got, want) || f.num("count") != uint64(len(want)) || f.num("owner") != curOwner || f.str("name") != name {
		t.Errorf("group_members: members %v count %d owner %d name %q; the system messages say %v owner %d name %q",
			got, f.num("count"), f.num("owner"), f.str("name"), want, curOwner, name)
	}
	for _, a := range actors {
		n := byActor[a.uid]
		extra := n - a.acked
		if extra < 0 || extra > 1 || extra == 1 && !a.inflight {
			t.Errorf("actor %d: %d system messages, %d changes acknowledged (a request in flight at the kill: %v)", a.uid, n, a.acked, a.inflight)
		}
		// Settle: the request in flight at the kill either happened or not.
		a.acked, a.inflight = n, false
		if a.owner {
			a.in = members[a.moved[0]]
			if members[a.moved[0]] != members[a.moved[1]] {
				t.Errorf("the owner moves %v together; members %v", a.moved, want)
			}
		} else {
			a.in = members[a.uid]
		}
	}
	t.Logf("group %d: %d system messages replayed, %d members", gid, systems, len(want))
}
