package storage

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// holdSSTFS blocks the creation of sstables while held: a flush cannot
// finish, so what the committer wrote stays in Pebble's memtable queue.
type holdSSTFS struct {
	vfs.FS
	mu   sync.Mutex
	held bool
	cond *sync.Cond
}

func (f *holdSSTFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	if strings.HasSuffix(name, ".sst") {
		f.mu.Lock()
		for f.held {
			f.cond.Wait()
		}
		f.mu.Unlock()
	}
	return f.FS.Create(name, cat)
}

func (f *holdSSTFS) hold(v bool) {
	f.mu.Lock()
	f.held = v
	f.mu.Unlock()
	f.cond.Broadcast()
}

// Sends that together exceed half the memtable (what Pebble commits as a
// "flushable batch", which has no seqnum) keep their cmids exact: a retry
// of one of them, before anything is flushed, is a duplicate. Fails when
// the committer stages them into one batch and prunes by a zero seqnum.
func TestLargeBatchRetryIsDup(t *testing.T) {
	dir := t.TempDir()
	ts := openT(t, dir, Options{memTable: 1 << 20})
	a, b := ts.user("a"), ts.user("b")
	for i := range 400 { // history, so that a flush records a high seqnum
		ts.sendOK(a, fmt.Sprintf("old-%d", i), b, 0, "x")
	}
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	fs := &holdSSTFS{FS: vfs.Default}
	fs.cond = sync.NewCond(&fs.mu)
	ts = openT(t, dir, Options{memTable: 1 << 20, noCommit: true, fs: fs})
	defer fs.hold(false) // before Close (cleanup) waits for the flush
	fs.hold(true)
	body := strings.Repeat("y", 10000)
	big := make([]*Send, 100)
	for i := range big {
		big[i] = &Send{From: a, CMID: fmt.Sprintf("big-%d", i), To: b, Body: body}
		if err := ts.Submit(big[i]); err != nil {
			t.Fatal(err)
		}
	}
	for len(ts.q) > 0 { // about 1 MB in all: more than half the memtable
		ts.step(<-ts.q, nil)
	}
	for _, m := range big {
		if m.Err != nil || m.Dup {
			t.Fatalf("%s: err %v dup %v", m.CMID, m.Err, m.Dup)
		}
	}
	retry := &Send{From: a, CMID: "big-0", To: b, Body: body}
	if err := ts.Submit(retry); err != nil {
		t.Fatal(err)
	}
	ts.step(<-ts.q, nil)
	if retry.Err != nil || !retry.Dup || retry.Msg.Seq != big[0].Msg.Seq {
		t.Fatalf("retry of big-0 (seq %d): err %v dup %v seq %d — stored twice", big[0].Msg.Seq, retry.Err, retry.Dup, retry.Msg.Seq)
	}
}

// One send of more than half the memtable is committed as a flushable
// batch whatever the byte cap (it is one operation); the committer then
// flushes it, and a retry is still a duplicate.
func TestHugeSendRetryIsDup(t *testing.T) {
	ts := openT(t, t.TempDir(), Options{memTable: 1 << 20, MaxBody: 1 << 20})
	a, b := ts.user("a"), ts.user("b")
	body := strings.Repeat("z", 700<<10)
	first := ts.send(&Send{From: a, CMID: "huge", To: b, Body: body})
	if first.Err != nil || first.Dup {
		t.Fatalf("first: %v dup %v", first.Err, first.Dup)
	}
	ts.sendOK(a, "after", b, 0, "x") // a later batch prunes the unflushed set
	retry := ts.send(&Send{From: a, CMID: "huge", To: b, Body: body})
	if retry.Err != nil || !retry.Dup || retry.Msg.Seq != first.Msg.Seq {
		t.Fatalf("retry (first seq %d): err %v dup %v seq %d — stored twice", first.Msg.Seq, retry.Err, retry.Dup, retry.Msg.Seq)
	}
}
