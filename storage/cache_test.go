package storage

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestCachePinsAndBudget: pinned entries outlive every trim until they
// are unpinned; then the cache is back within its budget (INVARIANT 1).
func TestCachePinsAndBudget(t *testing.T) {
	c := newCache(cacheShards * 1000) // 1,000 bytes per shard
	c.pinGen.Store(7)
	var pinned []ckey
	for i := range 200 {
		k := headKey(convKey{uint64(i + 1), uint64(i + 2)})
		c.addPinned(k, newHead(k2conv(k), 0, 0, [2]uint64{}, Message{}), 0, 100, 7)
		pinned = append(pinned, k)
	}
	for _, k := range pinned {
		if _, _, ok := c.get(k); !ok {
			t.Fatalf("pinned %v evicted", k)
		}
	}
	// A reader's insert evicts nothing pinned, and goes itself.
	c.offer(userKey(1), &User{UID: 1}, 0, 100, immutable)
	for _, k := range pinned {
		if _, _, ok := c.get(k); !ok {
			t.Fatalf("pinned %v evicted by a reader", k)
		}
	}
	c.pinGen.Store(0)
	c.trimAll()
	for i := range c.shards {
		if s := &c.shards[i]; s.bytes > s.budget {
			t.Fatalf("shard %d holds %d bytes, budget %d", i, s.bytes, s.budget)
		}
	}
	st := c.stats()
	if st.bytes > st.budget || st.evictions == 0 || st.entries == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func k2conv(k ckey) convKey { return convKey{k.a, k.b} }

// TestCacheOfferRefusesStale: a value loaded from a snapshot older than
// the last publish of its key is not cached; a current one is, and an
// offer never replaces a cached value (INVARIANT 2).
func TestCacheOfferRefusesStale(t *testing.T) {
	c := newCache(1 << 20)
	k := headKey(convKey{1, 2})
	s, e := c.publishLock(k, 5) // generation 5 wrote k (not cached)
	s.mu.Unlock()
	if e != nil {
		t.Fatal("entry appeared")
	}
	c.offer(k, newHead(convKey{1, 2}, 1, 1, [2]uint64{}, Message{}), 0, 100, 4)
	if _, _, ok := c.get(k); ok {
		t.Fatal("a value from snapshot 4 was cached after publish 5")
	}
	if c.stats().refusals != 1 {
		t.Fatalf("refusals %d", c.stats().refusals)
	}
	cur := newHead(convKey{1, 2}, 2, 2, [2]uint64{}, Message{})
	c.offer(k, cur, 0, 100, 5)
	if v, _, ok := c.get(k); !ok || v.(*head).lastSeq != 2 {
		t.Fatal("the current value was not cached")
	}
	c.offer(k, newHead(convKey{1, 2}, 3, 3, [2]uint64{}, Message{}), 0, 100, 9)
	if v, _, _ := c.get(k); v.(*head).lastSeq != 2 {
		t.Fatal("an offer replaced a cached value")
	}
}

// auditCache compares every cached value with Pebble (the live DB, which
// is the published state when nothing is being committed): a stale insert
// (INVARIANT 2) or a head not reset after a failed commit (INVARIANT 4)
// shows up here. REQUIRES: no writes in progress.
func auditCache(t *testing.T, s *Store) {
	t.Helper()
	for i := range s.cache.shards {
		sh := &s.cache.shards[i]
		sh.mu.Lock()
		for _, m := range sh.m {
			for _, e := range m {
				if err := auditEntry(s, e.key, e); err != nil {
					sh.mu.Unlock()
					t.Fatalf("cache entry %+v: %v", e.key, err)
				}
			}
		}
		sh.mu.Unlock()
	}
}

func auditEntry(s *Store, k ckey, e *entry) error {
	db := s.db
	switch k.kind {
	case kHead:
		h := e.v.(*head)
		f, err := loadHead(db, convKey{k.a, k.b})
		if err != nil {
			return err
		}
		if h.lastSeq != f.lastSeq || h.lastTS != f.lastTS || h.pubReads != f.pubReads || h.last != f.last {
			return fmt.Errorf("cached head %d %d %v %+v, stored %d %d %v %+v", h.lastSeq, h.lastTS, h.pubReads, h.last, f.lastSeq, f.lastTS, f.pubReads, f.last)
		}
		if h.seq != h.lastSeq || h.ts != h.lastTS || h.reads != h.pubReads {
			return fmt.Errorf("head fields %d %d %v differ from published", h.seq, h.ts, h.reads)
		}
	case kGroup:
		f, err := loadGroup(db, k.a)
		if err != nil || f == nil || *f != *e.v.(*groupRec) {
			return fmt.Errorf("cached %+v, stored %+v %v", e.v, f, err)
		}
	case kMembers:
		f, err := loadMembers(db, k.a, 0)
		if err != nil || !slices.Equal(f, e.v.(*memberList).uids) {
			return fmt.Errorf("cached %v, stored %v %v", e.v.(*memberList).uids, f, err)
		}
	case kMember:
		m := e.v.(*markEnt)
		f, err := loadMark(db, k.a, k.b, -1)
		if err != nil || f.member != m.member || f.pub != m.pub || m.head != m.pub {
			return fmt.Errorf("cached %+v, stored %+v %v", m, f, err)
		}
	case kConvSet:
		f, err := loadConvSet(db, k.a, 1<<20)
		if err != nil || !slices.Equal(f, e.v.(*convSet).convs) {
			return fmt.Errorf("cached %v, stored %v %v", e.v.(*convSet).convs, f, err)
		}
	case kUser:
		f, err := loadUser(db, k.a)
		u := e.v.(*User)
		if err != nil || f == nil || f.Name != u.Name || string(f.Hash) != string(u.Hash) {
			return fmt.Errorf("cached %+v, stored %+v %v", u, f, err)
		}
	case kName:
		uid, err := loadName(db, e.v.(string))
		if err != nil || uid != e.n {
			return fmt.Errorf("cached %d, stored %d %v", e.n, uid, err)
		}
	case kCMIDs:
		// senders.go INVARIANT S: every stored cmid of the sender is in its set.
		f := e.v.(*senderFPs)
		n := 0
		err := s.scan(appendU64([]byte{pfxCMID}, k.a), func(key, _ []byte) error {
			n++
			if !f.has(s.unflushed.fp32(maphash.Bytes(s.unflushed.seed, key[9:]))) {
				return fmt.Errorf("cmid %q of %d missing from its set", key[9:], k.a)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !f.heavy && f.n > n {
			return fmt.Errorf("set holds %d fingerprints, %d cmids stored", f.n, n)
		}
	default:
		return fmt.Errorf("unknown kind")
	}
	return nil
}

// TestCacheStress runs writers (sends, read marks, joins and leaves) and
// readers that load on misses at once, with caches small enough to evict
// all the time. Each reader checks that what it sees never goes back (a
// stale value cached after a newer one was published would); at the end
// every cached value must equal Pebble's.
func TestCacheStress(t *testing.T) { forCaches(t, testCacheStress) }

func testCacheStress(t *testing.T) {
	s := newT(t)
	const users = 8
	var uids []uint64
	for i := range users {
		uids = append(uids, s.user(fmt.Sprint("u", i)))
	}
	g := s.pubGroup(uids[0], "g", uids[1:5]...)
	rounds := 200
	if testing.Short() {
		rounds = 60
	}
	var writers, readers sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			from := uids[w]
			for j := range rounds {
				m := &Send{From: from, CMID: strconv.Itoa(j), Body: "x"}
				if j%3 == 0 {
					m.Group = g
				} else {
					m.To = uids[(w+1+j)%users]
					if m.To == from {
						m.To = uids[users-1]
					}
				}
				s.send(m)
				if j%7 == 0 {
					_, _, _, _ = s.MarkRead(from, GroupConv(g), uint64(j))
				}
			}
		}()
	}
	writers.Add(1)
	go s.churn(&writers, uids[6], g, rounds/4)
	// The owner adds, renames and removes (PROTOCOL §13).
	writers.Add(1)
	go func() {
		defer writers.Done()
		for j := range rounds / 4 {
			if _, err := s.AddMembers(uids[0], g, []uint64{uids[5], uids[7]}); err != nil {
				t.Error(err)
			}
			if _, err := s.RenameGroup(uids[0], g, fmt.Sprint("g", j)); err != nil {
				t.Error(err)
			}
			if _, err := s.RemoveMembers(uids[0], g, []uint64{uids[7], uids[5]}); err != nil {
				t.Error(err)
			}
		}
	}()
	for r := range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			uid := uids[r]
			seen := map[string]ConvItem{}
			for {
				select {
				case <-stop:
					return
				default:
				}
				items := s.convsChecked(uid)
				if items == nil {
					return
				}
				for _, it := range items {
					if p, ok := seen[it.Conv]; ok && (it.LastSeq < p.LastSeq || it.ReadSeq < p.ReadSeq || it.PeerReadSeq < p.PeerReadSeq) {
						t.Errorf("uid %d %s went back: %+v after %+v", uid, it.Conv, it, p)
						return
					}
					seen[it.Conv] = it
					ms, _, err := s.History(uid, HistoryQuery{Conv: it.Conv, Limit: 5})
					if err != nil {
						t.Error(err)
						return
					}
					if n := len(ms); n > 0 && ms[n-1].Seq < it.LastSeq {
						t.Errorf("history of %s ends at %d, convs said %d", it.Conv, ms[n-1].Seq, it.LastSeq)
					}
				}
				if gi, err := s.GroupMembers(uid, g, 0, 100); err != nil || gi.Count != len(gi.Members) && !gi.More {
					t.Errorf("members %+v %v", gi, err)
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	auditCache(t, s.Store)
	if testCacheSize(t) == 1 {
		if st := s.Stats(); st.CacheEntries != 0 {
			t.Fatalf("a one-byte cache holds %d entries between operations", st.CacheEntries)
		}
	}
}

// blockSyncFS blocks the next WAL sync once armed, until released: the
// window in which Pebble already shows a committed batch to readers of the
// live DB but has not made it durable.
type blockSyncFS struct {
	vfs.FS
	armed            atomic.Bool
	entered, release chan struct{}
}

func (fs *blockSyncFS) wrap(f vfs.File, err error, name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	if err != nil || !isWAL(name, cat) {
		return f, err
	}
	return &blockSyncFile{f, fs}, nil
}

func (fs *blockSyncFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, cat)
	return fs.wrap(f, err, name, cat)
}

func (fs *blockSyncFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, cat)
	return fs.wrap(f, err, newname, cat)
}

type blockSyncFile struct {
	vfs.File
	fs *blockSyncFS
}

func (f *blockSyncFile) block() {
	if f.fs.armed.CompareAndSwap(true, false) {
		f.fs.entered <- struct{}{}
		<-f.fs.release
	}
}

func (f *blockSyncFile) Sync() error     { f.block(); return f.File.Sync() }
func (f *blockSyncFile) SyncData() error { f.block(); return f.File.SyncData() }
func (f *blockSyncFile) SyncTo(n int64) (bool, error) {
	f.block()
	return f.File.SyncTo(n)
}

// TestReadersSeeOnlyDurable holds a batch's WAL sync while Pebble already
// shows the batch in the live DB, and checks that readers missing the cache
// (a one-byte cache) do not see it until it is durable (INVARIANT 3).
func TestReadersSeeOnlyDurable(t *testing.T) {
	fs := &blockSyncFS{FS: vfs.Default, entered: make(chan struct{}), release: make(chan struct{})}
	s := openT(t, t.TempDir(), Options{Fsync: true, CacheSize: 1, fs: fs})
	a, b := s.user("a"), s.user("b")
	g := s.group(a, "g", b)
	s.sendOK(a, "1", b, 0, "durable")
	s.sendOK(a, "g1", 0, g, "durable")

	fs.armed.Store(true)
	m2 := &Send{From: a, CMID: "2", To: b, Body: "in flight"}
	m3 := &Send{From: b, CMID: "g2", Group: g, Body: "in flight"}
	done := make(chan struct{})
	m3.Tag = done
	if err := s.Submit(m2); err != nil {
		t.Fatal(err)
	}
	if err := s.Submit(m3); err != nil {
		t.Fatal(err)
	}
	<-fs.entered
	// Pebble publishes the batch to its readers before the sync returns;
	// wait until the live DB shows it (polling: Pebble has no event for
	// it).
	ck := convKey{a, b}
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, err := loadHead(s.db, ck)
		if err != nil {
			t.Fatal(err)
		}
		if h.lastSeq == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the in-flight batch never became visible in the live DB; the hazard this test checks is gone (review snap.go)")
		}
		time.Sleep(time.Millisecond)
	}
	for _, uid := range []uint64{a, b} {
		items, _, err := s.Convs(uid)
		if err != nil {
			t.Fatal(err)
		}
		// The group's first message is its "created" (PROTOCOL §13).
		durable := map[string]uint64{"d:1:2": 1, GroupConv(g): 2}
		for _, it := range items {
			if it.LastSeq != durable[it.Conv] || it.Last.Body != "durable" {
				t.Fatalf("uid %d sees %s at %d (%q) before it is durable", uid, it.Conv, it.LastSeq, it.Last.Body)
			}
		}
		for conv, n := range durable {
			if ms := s.all(uid, conv); uint64(len(ms)) != n {
				t.Fatalf("uid %d reads %d messages of %s before the last is durable", uid, len(ms), conv)
			}
		}
	}
	close(fs.release)
	<-done
	if ms := s.all(b, "d:1:2"); len(ms) != 2 || ms[1].Body != "in flight" {
		t.Fatalf("after the sync: %+v", ms)
	}
	if items, total, _ := s.Convs(a); len(items) != 2 || total != 1 {
		t.Fatalf("after the sync: %+v %d", items, total)
	}
}

// TestDedupAcrossFlushes: cmids stay idempotent whether their index entry
// is in a memtable (the unflushed set answers) or flushed (the
// sstable-only lookup finds it), across flushes at any point (unflushed.go
// INVARIANT), with the senders' fingerprint sets (senders.go INVARIANT S)
// also when fingerprints collide all the time (2 bits: nearly every new
// cmid is "maybe stored" and takes the Pebble lookup, "maybe unflushed"
// and takes the lookup in the whole DB) and when the sender has more
// cmids than a set holds.
func TestDedupAcrossFlushes(t *testing.T) {
	for _, mode := range []string{"exact", "collide64", "collide32", "heavy"} {
		t.Run(mode, func(t *testing.T) { testDedupAcrossFlushes(t, mode) })
	}
}

func testDedupAcrossFlushes(t *testing.T, mode string) {
	if mode == "heavy" {
		defer func(n int) { maxSenderCMIDs = n }(maxSenderCMIDs)
		maxSenderCMIDs = 20
	}
	s := openT(t, t.TempDir(), Options{CacheSize: 1})
	// Before the first send; the committer reads them afterwards.
	switch mode {
	case "collide64":
		s.unflushed.mask = 3
	case "collide32":
		s.unflushed.mask32 = 3
	}
	a, b := s.user("a"), s.user("b")
	var orig []Message
	const n = 300
	for i := range n {
		orig = append(orig, s.sendOK(a, "c"+strconv.Itoa(i), b, 0, "m"))
		if i%97 == 50 {
			if err := s.db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if st := s.Stats(); mode == "exact" && (st.UnflushedCMIDs == 0 || st.UnflushedCMIDs >= n) {
		t.Fatalf("unflushed cmids %d of %d after some flushes", st.UnflushedCMIDs, n)
	}
	check := func() {
		t.Helper()
		for i := n - 1; i >= 0; i-- {
			r := s.send(&Send{From: a, CMID: "c" + strconv.Itoa(i), To: b, Body: "retry"})
			if !r.Dup || r.Msg != orig[i] {
				t.Fatalf("retry of c%d: %+v", i, r)
			}
		}
	}
	check()
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	s.sendOK(a, "after-flush", b, 0, "x") // prunes the set
	if st := s.Stats(); st.UnflushedCMIDs != 1 {
		t.Fatalf("unflushed cmids %d after a flush and one send", st.UnflushedCMIDs)
	}
	check()
	if m := s.sendOK(a, "new", b, 0, "x"); m.Seq != n+2 {
		t.Fatalf("seq %d", m.Seq)
	}
}
