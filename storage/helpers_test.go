package storage

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// tstore is a Store under test whose OnSent answers each Send through its
// Tag (a chan struct{}), so a test can wait for exactly its own sends.
type tstore struct {
	*Store
	t   testing.TB
	dir string
	o   Options

	mu      sync.Mutex
	batches [][]Send // copies of every OnSent batch
}

// cacheModes are the cache sizes the rule tests run with (forCaches): the
// default; one byte, so that every entry is evicted as soon as it is
// unpinned, i.e. between any two operations (and lists are never cached:
// large groups are read from Pebble per batch); and 8 KiB, which keeps a
// few entries and evicts the rest.
var cacheModes = []struct {
	name string
	size int64
}{{"default", 0}, {"tiny", 1}, {"small", 8 << 10}}

// forCaches runs fn once per cache mode, as subtests named cache=MODE;
// every store openT opens inside gets that mode's cache size.
func forCaches(t *testing.T, fn func(t *testing.T)) {
	for _, m := range cacheModes {
		t.Run("cache="+m.name, fn)
	}
}

func testCacheSize(t testing.TB) int64 {
	for _, m := range cacheModes {
		if strings.Contains(t.Name(), "/cache="+m.name) {
			return m.size
		}
	}
	return 0
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openT(t testing.TB, dir string, o Options) *tstore {
	t.Helper()
	ts := &tstore{t: t, dir: dir, o: o}
	user := o.OnSent
	o.OnSent = func(batch []*Send) {
		cp := make([]Send, len(batch))
		for i, m := range batch {
			cp[i] = *m
		}
		ts.mu.Lock()
		ts.batches = append(ts.batches, cp)
		ts.mu.Unlock()
		if user != nil {
			user(batch)
		}
		for _, m := range batch {
			if ch, ok := m.Tag.(chan struct{}); ok {
				close(ch)
			}
		}
	}
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	if o.CacheSize == 0 {
		o.CacheSize = testCacheSize(t)
		ts.o.CacheSize = o.CacheSize
	}
	s, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ts.Store = s
	t.Cleanup(func() { _ = s.Close() })
	return ts
}

func newT(t testing.TB) *tstore {
	return openT(t, t.TempDir(), Options{})
}

// reopen closes the store and opens the same directory again.
func (ts *tstore) reopen() *tstore {
	ts.t.Helper()
	if err := ts.Close(); err != nil {
		ts.t.Fatalf("Close: %v", err)
	}
	return openT(ts.t, ts.dir, ts.o)
}

// send submits m and waits for its result.
func (ts *tstore) send(m *Send) *Send {
	ts.t.Helper()
	done := make(chan struct{})
	m.Tag = done
	if err := ts.Submit(m); err != nil {
		ts.t.Fatalf("Submit: %v", err)
	}
	<-done
	return m
}

// sendOK sends and requires success (a new message).
func (ts *tstore) sendOK(from uint64, cmid string, to, group uint64, body string) Message {
	ts.t.Helper()
	m := ts.send(&Send{From: from, CMID: cmid, To: to, Group: group, Body: body})
	if m.Err != nil || m.Dup {
		ts.t.Fatalf("send %s: err %v dup %v", cmid, m.Err, m.Dup)
	}
	return m.Msg
}

func (ts *tstore) user(name string) uint64 {
	ts.t.Helper()
	uid, err := ts.CreateUser(name, []byte("hash-"+name))
	if err != nil {
		ts.t.Fatalf("CreateUser %s: %v", name, err)
	}
	return uid
}

func (ts *tstore) group(creator uint64, name string, members ...uint64) uint64 {
	ts.t.Helper()
	gi, err := ts.CreateGroup(creator, name, members)
	if err != nil {
		ts.t.Fatalf("CreateGroup %s: %v", name, err)
	}
	return gi.ID
}

// lastSystem returns (a copy of) the last system message OnSent got.
func (ts *tstore) lastSystem() Send {
	ts.t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for i := len(ts.batches) - 1; i >= 0; i-- {
		b := ts.batches[i]
		for j := len(b) - 1; j >= 0; j-- {
			if b[j].Kind == KindSystem {
				return b[j]
			}
		}
	}
	ts.t.Fatal("no system message was handed to OnSent")
	return Send{}
}

// systems returns (copies of) every system message OnSent got, in order.
func (ts *tstore) systems() []Send {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var out []Send
	for _, b := range ts.batches {
		for _, m := range b {
			if m.Kind == KindSystem {
				out = append(out, m)
			}
		}
	}
	return out
}

// pubGroup creates a public group (PROTOCOL §13: anyone may join it).
func (ts *tstore) pubGroup(creator uint64, name string, members ...uint64) uint64 {
	ts.t.Helper()
	gi, err := ts.CreateGroupWith(creator, name, members, true)
	if err != nil {
		ts.t.Fatalf("CreateGroupWith %s: %v", name, err)
	}
	return gi.ID
}

// all returns the whole history of conv.
func (ts *tstore) all(uid uint64, conv string) []Message {
	ts.t.Helper()
	var out []Message
	var after uint64
	for {
		ms, more, err := ts.History(uid, HistoryQuery{Conv: conv, After: after, HasAfter: true, Limit: 200})
		if err != nil {
			ts.t.Fatalf("History %s: %v", conv, err)
		}
		out = append(out, ms...)
		if !more {
			return out
		}
		after = ms[len(ms)-1].Seq
	}
}

func codeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if err == nil {
		return ""
	}
	return Code(fmt.Sprintf("non-storage error: %v", err))
}

func wantCode(t testing.TB, what string, err error, want Code) {
	t.Helper()
	if got := codeOf(err); got != want {
		t.Fatalf("%s: got code %q (%v), want %q", what, got, err, want)
	}
}

func seqs(ms []Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

// churn makes uid join and leave group g n times (membership churn beside
// other writers), then calls wg.Done.
func (ts *tstore) churn(wg *sync.WaitGroup, uid, g uint64, n int) {
	defer wg.Done()
	for range n {
		if _, err := ts.JoinGroup(uid, g); err != nil {
			ts.t.Error(err)
		}
		if _, err := ts.LeaveGroup(uid, g); err != nil {
			ts.t.Error(err)
		}
	}
}

// convsChecked calls Convs and checks what every reply must hold
// (read_seq ≤ last_seq, unread = last_seq − read_seq, total = the sum); it
// returns nil after reporting an error.
func (ts *tstore) convsChecked(uid uint64) []ConvItem {
	items, total, err := ts.Convs(uid)
	if err != nil {
		ts.t.Error(err)
		return nil
	}
	var sum uint64
	for _, it := range items {
		sum += it.Unread
		if it.ReadSeq > it.LastSeq || it.Unread != it.LastSeq-it.ReadSeq {
			ts.t.Errorf("item %+v", it)
		}
	}
	if sum != total {
		ts.t.Errorf("total %d, sum %d", total, sum)
	}
	if items == nil {
		items = []ConvItem{}
	}
	return items
}

// loadConvSet reads uid's conversation set, or returns nil (and no error)
// when it holds more than max conversations.
func loadConvSet(r pebble.Reader, uid uint64, max int) ([]convKey, error) {
	var cs []convKey
	over := false
	err := scanConvs(r, uid, func(ck convKey) bool {
		if len(cs) >= max {
			over = true
			return false
		}
		cs = append(cs, ck)
		return true
	})
	if err != nil || over {
		return nil, err
	}
	slices.SortFunc(cs, cmpConv)
	if cs == nil {
		cs = []convKey{}
	}
	return cs, nil
}

// scan calls fn for every key with prefix p, in key order. k and v are
// valid only during the call.
func (s *Store) scan(p []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		if err := fn(it.Key(), v); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Error(); err != nil {
		it.Close()
		return err
	}
	return it.Close()
}
