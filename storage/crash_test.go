package storage

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The crash test runs TestCrashChild in a child process (the test binary
// re-executed with crashEnv set). The child sends from several goroutines
// and prints every OnSent result; the parent SIGKILLs it after a random
// number of reports, reopens the directory and checks that every reported
// message is there exactly once, unchanged, with gapless seqs. Several
// rounds on one directory check that seqs continue after each crash.
// Meanwhile the group's members change (the owner adds and removes, other
// users join and leave: PROTOCOL §13), and the parent checks that the
// group's system messages, replayed from seq 1, give exactly its members
// and owner: no change without its message, no message without its
// change.

const (
	crashEnv      = "MAGPIE_STORAGE_CRASH_DIR"
	crashFsyncEnv = "MAGPIE_STORAGE_CRASH_FSYNC"
	crashRoundEnv = "MAGPIE_STORAGE_CRASH_ROUND"
	crashUsers    = 6
	crashSenders  = 8
	// Users crashUsers+1 … crashUsers+crashChurn are not senders: the
	// owner (uid 1) adds and removes the first half, the rest join and
	// leave the (public) group themselves.
	crashChurn = 4
)

func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("only run as the child of TestCrashRecovery")
	}
	round := os.Getenv(crashRoundEnv)
	var out sync.Mutex
	s, err := Open(dir, Options{
		Fsync:  os.Getenv(crashFsyncEnv) == "1",
		Logger: quietLogger(),
		OnSent: func(batch []*Send) {
			var buf bytes.Buffer
			for _, m := range batch {
				if m.Err == nil {
					fmt.Fprintf(&buf, "SENT %d %s %s %d %d %t\n", m.From, m.CMID, m.Msg.Conv, m.Msg.Seq, m.Msg.TS, m.Dup)
				}
			}
			out.Lock()
			os.Stdout.Write(buf.Bytes()) // one write per batch, before the senders hear of it
			out.Unlock()
			for _, m := range batch {
				if ch, ok := m.Tag.(chan struct{}); ok { // nil for a system message
					ch <- struct{}{}
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := uint64(1)
	deadline := time.Now().Add(60 * time.Second) // the parent kills us long before
	var wg sync.WaitGroup
	for i := range crashSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			window := make(chan struct{}, 64)
			for range 64 {
				window <- struct{}{}
			}
			from := uint64(i%crashUsers + 1)
			for j := 0; time.Now().Before(deadline); j++ {
				<-window
				m := &Send{From: from, CMID: fmt.Sprintf("r%s-s%d-%d", round, i, j), Body: fmt.Sprintf("body %s %d %d", round, i, j), Tag: window}
				if j%50 == 49 {
					m.CMID = fmt.Sprintf("r%s-s%d-%d", round, i, j-20) // a retry: Dup
				}
				if j%3 == 0 {
					m.Group = g
				} else {
					m.To = uint64((i+j)%crashUsers + 1)
					if m.To == from {
						m.To = from%crashUsers + 1
					}
				}
				if err := s.Submit(m); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := range crashChurn {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid := uint64(crashUsers + 1 + i)
			for j := 0; time.Now().Before(deadline); j++ {
				var err error
				switch {
				case i < crashChurn/2 && j%2 == 0:
					_, err = s.AddMembers(1, g, []uint64{uid, uid + 1})
				case i < crashChurn/2:
					_, err = s.RemoveMembers(1, g, []uint64{uid})
				case j%2 == 0:
					_, err = s.JoinGroup(uid, g)
				default:
					_, err = s.LeaveGroup(uid, g)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	s.Close()
}

type reported struct {
	from      uint64
	cmid      string
	conv      string
	seq       uint64
	ts        int64
	dup       bool
	round     int
	lineInRun int
}

func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for _, fsync := range []bool{true, false} {
		t.Run(fmt.Sprintf("fsync=%v", fsync), func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, Options{Fsync: fsync})
			var uids []uint64
			for i := range crashUsers + crashChurn {
				uids = append(uids, s.user(fmt.Sprintf("u%d", i)))
			}
			s.pubGroup(uids[0], "crash", uids[1:crashUsers]...)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			all := map[string]reported{} // "from cmid" → first report
			for round := range 3 {
				reps := runCrashChild(t, dir, fsync, round)
				for _, r := range reps {
					key := fmt.Sprintf("%d %s", r.from, r.cmid)
					if prev, ok := all[key]; ok {
						if prev.conv != r.conv || prev.seq != r.seq || prev.ts != r.ts {
							t.Fatalf("cmid %s reported twice differently: %+v and %+v", key, prev, r)
						}
						if !r.dup {
							t.Fatalf("cmid %s stored twice: %+v and %+v", key, prev, r)
						}
						continue
					}
					if r.dup {
						t.Fatalf("dup of a cmid never reported: %+v", r)
					}
					all[key] = r
				}
				s = openT(t, dir, Options{Fsync: fsync})
				verifyCrash(t, s, all)
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func runCrashChild(t *testing.T, dir string, fsync bool, round int) []reported {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir, crashRoundEnv+"="+strconv.Itoa(round), crashFsyncEnv+"="+map[bool]string{true: "1", false: "0"}[fsync])
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killAfter := 1 + rand.IntN(3000)
	var reps []reported
	r := bufio.NewReader(stdout)
	killed := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break // a fragment without '\n' was cut by the kill: never reported
		}
		if !strings.HasPrefix(line, "SENT ") {
			continue
		}
		var rep reported
		var dup string
		if _, err := fmt.Sscanf(line, "SENT %d %s %s %d %d %s", &rep.from, &rep.cmid, &rep.conv, &rep.seq, &rep.ts, &dup); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		rep.dup, rep.round, rep.lineInRun = dup == "true", round, len(reps)
		reps = append(reps, rep)
		if len(reps) == killAfter && !killed {
			// Lines already in the pipe are read on: they were reported too.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended before the kill after %d reports: %v\n%s", len(reps), err, stderr.String())
	}
	t.Logf("round %d: killed after %d reports, %d read in total", round, killAfter, len(reps))
	return reps
}

func verifyCrash(t *testing.T, s *tstore, all map[string]reported) {
	t.Helper()
	convs := map[string]bool{GroupConv(1): true}
	for a := uint64(1); a <= crashUsers; a++ {
		for b := a + 1; b <= crashUsers; b++ {
			convs[DirectConv(a, b)] = true
		}
	}
	stored := map[string]Message{}
	for conv := range convs {
		_, a, b, _ := ParseConv(conv)
		reader := a
		if b != 0 {
			reader = b
		}
		hist := s.all(reader, conv) // readRange fails on any gap
		for i, m := range hist {
			if m.Seq != uint64(i+1) {
				t.Fatalf("%s: history[%d] has seq %d", conv, i, m.Seq)
			}
			key := fmt.Sprintf("%d %s", m.From, m.CMID)
			if prev, ok := stored[key]; ok {
				t.Fatalf("cmid %s stored twice: %+v and %+v", key, prev, m)
			}
			stored[key] = m
		}
	}
	for key, r := range all {
		m, ok := stored[key]
		if !ok {
			t.Fatalf("reported message lost: %+v", r)
		}
		if m.Conv != r.conv || m.Seq != r.seq || m.TS != r.ts {
			t.Fatalf("reported %+v, stored %+v", r, m)
		}
	}
	checkGroupReplay(t, s, 1, 1, crashUsers)
	// Reported cmids are still deduplicated.
	n := 0
	for key, r := range all {
		if n++; n > 20 {
			break
		}
		m := s.send(&Send{From: r.from, CMID: r.cmid, To: r.from%crashUsers + 1, Body: "retry after crash"})
		if m.Err != nil || !m.Dup || m.Msg.Conv != r.conv || m.Msg.Seq != r.seq || m.Msg.TS != r.ts {
			t.Fatalf("retry of %s: %+v", key, m)
		}
	}
	t.Logf("verified %d reported of %d stored messages", len(all), len(stored))
}

// checkGroupReplay replays group gid's system messages from seq 1 (it was
// created by owner with members 1…n) and checks that they give exactly
// its members and owner now (PROTOCOL §13: every membership change is a
// message in the same commit).
func checkGroupReplay(t *testing.T, s *tstore, gid, owner uint64, n int) {
	t.Helper()
	members := map[uint64]bool{}
	for uid := uint64(1); uid <= uint64(n); uid++ {
		members[uid] = true
	}
	curOwner := uint64(0)
	changes := 0
	for _, m := range s.all(owner, GroupConv(gid)) {
		if m.Kind != KindSystem {
			continue
		}
		if !strings.HasPrefix(m.CMID, SystemCMIDPrefix) {
			t.Fatalf("system message with cmid %q", m.CMID)
		}
		changes++
		var ev struct {
			Event   string   `json:"event"`
			Members []uint64 `json:"members"`
			Owner   *uint64  `json:"owner"`
			Count   int      `json:"count"`
		}
		if err := json.Unmarshal([]byte(m.Body), &ev); err != nil {
			t.Fatalf("seq %d: body %q: %v", m.Seq, m.Body, err)
		}
		switch ev.Event {
		case "created":
			if m.Seq != 1 || ev.Count != n {
				t.Fatalf("created %+v", m)
			}
			curOwner = m.From
		case "added":
			for _, u := range ev.Members {
				if members[u] {
					t.Fatalf("seq %d adds member %d", m.Seq, u)
				}
				members[u] = true
			}
		case "removed":
			for _, u := range ev.Members {
				if !members[u] {
					t.Fatalf("seq %d removes non-member %d", m.Seq, u)
				}
				delete(members, u)
			}
		case "joined":
			if members[m.From] {
				t.Fatalf("seq %d: member %d joins", m.Seq, m.From)
			}
			if len(members) == 0 {
				curOwner = m.From
			}
			members[m.From] = true
		case "left":
			if !members[m.From] {
				t.Fatalf("seq %d: non-member %d leaves", m.Seq, m.From)
			}
			delete(members, m.From)
			if (ev.Owner != nil) != (m.From == curOwner) {
				t.Fatalf("seq %d: %q by %d, owner %d", m.Seq, m.Body, m.From, curOwner)
			}
			if ev.Owner != nil {
				curOwner = *ev.Owner
			}
		default:
			t.Fatalf("seq %d: unexpected event %q", m.Seq, m.Body)
		}
	}
	gi, err := s.GroupMembers(owner, gid, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var want []uint64
	for u := range members {
		want = append(want, u)
	}
	slices.Sort(want)
	if !slices.Equal(gi.Members, want) || gi.Count != len(want) || gi.Owner != curOwner {
		t.Fatalf("group %d: members %v count %d owner %d; its messages say %v owner %d", gid, gi.Members, gi.Count, gi.Owner, want, curOwner)
	}
	t.Logf("group %d: %d system messages replayed", gid, changes)
}
