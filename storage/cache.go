package storage

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// The metadata cache: Pebble is the source of truth, and the hot part of
// the metadata (conversation heads, group records and member lists,
// memberships with read marks, users' conversation sets, users and names)
// is kept here, loaded on demand and evicted least recently used, within
// one budget in bytes (Options.CacheSize). docs/STORAGE.md, "The cache",
// has the design; state.go the values.
//
// # Who writes what
//
// The committer goroutine is the only writer of Pebble and of the
// published fields of cached values. Readers (History, Convs, …) read
// values under the shard lock and, on a miss, load from the current
// read snapshot (snap.go) and offer what they loaded to the cache.
//
// # Invariants (tested in cache_test.go)
//
// INVARIANT 1 (pins): every cache key whose value the committer's unit of
// work (a batch or a barrier) reads or changes has an entry, pinned, from
// before the unit is committed until it is published. A pinned entry is
// never evicted. A key the unit changes without needing its value (a
// user's conversation set, a member list) gets a placeholder entry (v ==
// nil), which readers treat as a miss and which blocks their inserts; the
// unit drops it when it publishes (or fails). So the committer's head
// fields stay with the entry while they differ from the published ones,
// and no reader can cache a value of a key while a unit is changing it.
//
// INVARIANT 2 (no stale inserts): publishing a unit of work with
// generation g stamps every key it wrote with g (touched[slot(key)] = g)
// and updates the key's entry if it is cached, both under the key's shard
// lock. A reader that loaded a value from a snapshot of generation s
// inserts it only if the key is not cached and touched[slot(key)] ≤ s,
// checked under the same lock. So a value inserted by a reader is the
// current published one: a later publish of that key either comes after
// the insert (and updates the entry) or before it (and the insert is
// refused). Slots are shared by many keys: a collision only refuses an
// insert, it never admits a stale one.
//
// INVARIANT 3 (durable only): readers load metadata only from snapshots
// taken after a commit (snap.go), never from the live DB, which may show a
// batch whose WAL sync has not finished. (Messages are read from the live
// DB, clamped to the published last_seq, which only durable batches move:
// read.go.) The committer may read the live DB: it
// is the only writer and every batch it committed is durable when Commit
// returns.
//
// INVARIANT 4 (head == published): an unpinned entry's committer-only
// fields equal its published ones (a failed commit resets them).
//
// INVARIANT 5 (monotonic reads): the committer takes the snapshot of a
// unit before it publishes the unit to the cache. A reader that saw a
// unit's effect in the cache therefore finds that unit's snapshot (or a
// later one) current when its next read starts; and by INVARIANT 1 a key
// being changed is cached (pinned) until the change is published, so no
// reader mixes a newer snapshot's value of it with an older cached one. A
// read that starts after another one ended never shows older state.

const (
	cacheShards = 16
	// touchedSlots per shard (8 bytes each).
	touchedSlots = 4096
	// entryOverhead approximates what an entry costs beyond its value: the
	// entry struct and its map slot.
	entryOverhead = 160
)

// ckind is the kind of a cache entry; it selects the meaning of ckey's
// fields and the type of entry.v.
type ckind uint8

const (
	kHead    ckind = iota + 1 // conversation head; a, b = convKey; v *head
	kGroup                    // group record; a = gid; v *groupRec
	kMembers                  // whole member list; a = gid; v *memberList
	kMember                   // membership and read mark; a = gid, b = uid; v *markEnt
	kConvSet                  // a user's conversations; a = uid; v *convSet
	kUser                     // user record; a = uid; v *User
	kName                     // lower-case name; a = its 64-bit hash; v the name (string); n = uid
	kCMIDs                    // a sender's cmid fingerprints (committer only); a = uid; v *senderFPs
	kindCount
)

type ckey struct {
	kind ckind
	a, b uint64
}

func headKey(ck convKey) ckey           { return ckey{kind: kHead, a: ck.a, b: ck.b} }
func groupKey(gid uint64) ckey          { return ckey{kind: kGroup, a: gid} }
func membersKey(gid uint64) ckey        { return ckey{kind: kMembers, a: gid} }
func memberKey(gid, uid uint64) ckey    { return ckey{kind: kMember, a: gid, b: uid} }
func convSetKey(uid uint64) ckey        { return ckey{kind: kConvSet, a: uid} }
func userKey(uid uint64) ckey           { return ckey{kind: kUser, a: uid} }
func nameKey(h uint64) ckey             { return ckey{kind: kName, a: h} }
func (c *cache) hash(k ckey) uint64     { return maphash.Comparable(c.seed, k) }
func (c *cache) shard(h uint64) *cshard { return &c.shards[h>>60%cacheShards] }
func touchedSlot(h uint64) int          { return int(h & (touchedSlots - 1)) }

// entry is one cached value (v nil: a placeholder, see INVARIANT 1).
// Every field but v's committer-only fields is guarded by its shard's mu.
type entry struct {
	key        ckey
	h          uint64 // hash of key
	prev, next *entry // LRU list; root.next is the most recent
	ref        bool   // used since it was last moved to the front (second chance)
	size       int64
	pin        uint64 // generation of the unit of work that pinned it
	n          uint64 // kName: the uid
	v          any
}

type cshard struct {
	mu sync.Mutex
	// m holds the entries by kind (index ckind), keyed by (a, b): a key
	// without padding hashes fast.
	m       [kindCount]map[pair]*entry
	n       int // entries
	root    entry
	bytes   int64
	budget  int64
	touched *[touchedSlots]uint64
	// Counters, under mu (summed by stats).
	hits, misses uint64
	_            [64]byte
}

// pair is a cache key without its kind.
type pair struct{ a, b uint64 }

func (s *cshard) get(k ckey) *entry    { return s.m[k.kind][pair{k.a, k.b}] }
func (s *cshard) put(k ckey, e *entry) { s.m[k.kind][pair{k.a, k.b}] = e }
func (s *cshard) delete(k ckey)        { delete(s.m[k.kind], pair{k.a, k.b}) }

// cache is the sharded LRU. Its zero value is not usable: see newCache.
type cache struct {
	seed   maphash.Seed // names
	salt   uint64
	shards [cacheShards]cshard
	// pinGen is the generation of the committer's unit of work in
	// preparation (0 between units): entries with pin == pinGen are
	// pinned.
	pinGen atomic.Uint64
	// maxList is the largest list value (member list, conversation set)
	// that may be cached, in bytes: half a shard.
	maxList int64

	// over is set when a shard is left over its budget because pinned
	// entries could not be evicted; trimAll clears it.
	over atomic.Bool

	bytes                                      atomic.Int64
	entries                                    atomic.Int64
	hits, misses, evictions, inserts, refusals atomic.Uint64
}

func newCache(budget int64) *cache {
	c := &cache{seed: maphash.MakeSeed()}
	c.salt = maphash.Comparable(c.seed, 0)
	per := max(budget/cacheShards, 1)
	for i := range c.shards {
		s := &c.shards[i]
		for i := range s.m {
			s.m[i] = make(map[pair]*entry)
		}
		s.touched = new([touchedSlots]uint64)
		s.root.next, s.root.prev = &s.root, &s.root
		s.budget = per
	}
	c.maxList = per / 2
	return c
}

func (s *cshard) unlink(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (s *cshard) pushFront(e *entry) {
	e.next, e.prev = s.root.next, &s.root
	e.next.prev, s.root.next = e, e
}

func (s *cshard) touch(e *entry) {
	if s.root.next != e {
		s.unlink(e)
		s.pushFront(e)
	}
}

// lookupLocked returns k's entry, marked recently used, or nil. REQUIRES:
// s.mu held.
func (c *cache) lookupLocked(s *cshard, k ckey) *entry {
	e := s.get(k)
	if e == nil {
		s.misses++
		return nil
	}
	s.hits++
	e.ref = true
	return e
}

// newEntry allocates an entry for v. The mutable values the committer
// looks up all the time (heads, memberships, cmid sets) are copied into
// the same allocation as their entry: one memory access less per lookup.
func newEntry(v any) *entry {
	switch x := v.(type) {
	case *head:
		return boxed(x)
	case *markEnt:
		return boxed(x)
	case *senderFPs:
		return boxed(x)
	}
	return &entry{v: v}
}

// boxed allocates an entry and a copy of *x together; the entry's v
// points at the copy.
func boxed[T any](x *T) *entry {
	b := &struct {
		e entry
		v T
	}{v: *x}
	b.e.v = &b.v
	return &b.e
}

// addLocked inserts a new entry. REQUIRES: s.mu held, k absent.
func (c *cache) addLocked(s *cshard, k ckey, v any, n uint64, size int64, pin uint64) *entry {
	e := newEntry(v)
	e.key, e.h, e.n, e.size, e.pin = k, c.hash(k), n, size+entryOverhead, pin
	s.put(k, e)
	s.n++
	s.pushFront(e)
	s.bytes += e.size
	c.bytes.Add(e.size)
	c.entries.Add(1)
	c.inserts.Add(1)
	c.trimLocked(s)
	return e
}

// resizeLocked changes e's size to size (+ overhead). REQUIRES: s.mu held.
func (c *cache) resizeLocked(s *cshard, e *entry, size int64) {
	d := size + entryOverhead - e.size
	e.size += d
	s.bytes += d
	c.bytes.Add(d)
	if d > 0 {
		c.trimLocked(s)
	}
}

// removeLocked drops e. REQUIRES: s.mu held.
func (c *cache) removeLocked(s *cshard, e *entry) {
	s.delete(e.key)
	s.n--
	s.unlink(e)
	s.bytes -= e.size
	c.bytes.Add(-e.size)
	c.entries.Add(-1)
}

// trimLocked evicts the least recently used unpinned entries (LRU with a
// second chance: a hit only marks an entry, eviction moves marked ones to
// the front instead of evicting them) until the shard
// is within its budget. When only pinned entries are left it stops and
// sets over, so that trimAll finishes the job once they are unpinned.
// REQUIRES: s.mu held.
func (c *cache) trimLocked(s *cshard) {
	pg := c.pinGen.Load()
	skipped, limit := 0, 2*s.n // every entry twice: once to clear its mark
	for s.bytes > s.budget {
		e := s.root.prev
		if e == &s.root || skipped >= limit {
			c.over.Store(true)
			return
		}
		if pg != 0 && e.pin == pg || e.ref {
			// Pinned (INVARIANT 1), or used since it was last moved
			// (second chance): keep it, look further.
			e.ref = false
			s.unlink(e)
			s.pushFront(e)
			skipped++
			continue
		}
		c.removeLocked(s, e)
		c.evictions.Add(1)
	}
}

// trimAll trims the shards left over their budget by pinned entries,
// after the committer unpinned them.
func (c *cache) trimAll() {
	if !c.over.Swap(false) {
		return
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		c.trimLocked(s)
		s.mu.Unlock()
	}
}

// offer is a reader's insert of a value loaded from a snapshot of
// generation snapGen (INVARIANT 2): it is inserted only if k is not cached
// and no publish since snapGen may have written k. The reader goes on with
// the value it loaded either way (it is durable and consistent with its
// snapshot).
func (c *cache) offer(k ckey, v any, n uint64, size int64, snapGen uint64) {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.get(k); e != nil {
		return
	}
	if s.touched[touchedSlot(h)] > snapGen {
		c.refusals.Add(1)
		return
	}
	c.addLocked(s, k, v, n, size, 0)
}

// cstats is the cache part of Stats.
type cstats struct {
	bytes, budget, entries                     int64
	hits, misses, evictions, inserts, refusals uint64
}

func (c *cache) stats() cstats {
	st := cstats{
		bytes: c.bytes.Load(), budget: c.shards[0].budget * cacheShards, entries: c.entries.Load(),
		evictions: c.evictions.Load(), inserts: c.inserts.Load(), refusals: c.refusals.Load(),
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		st.hits += s.hits
		st.misses += s.misses
		s.mu.Unlock()
	}
	return st
}

// The committer's side. The committer reads and writes the committer-only
// fields of the values it gets without locks; it changes published fields
// only inside publishLock/unlock.

// placeholder pins k's entry for gen, adding an empty one (v nil) if k is
// not cached (INVARIANT 1). It reports whether it added one.
func (c *cache) placeholder(k ckey, gen uint64) bool {
	_, added := c.pinOrAdd(k, nil, 0, 0, gen)
	if added {
		c.inserts.Add(^uint64(0)) // not a value
	}
	return added
}

// resize sets the size of k's entry, if cached, to size (committer: its
// own values grew).
func (c *cache) resize(k ckey, size int64) {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	if e := s.get(k); e != nil {
		c.resizeLocked(s, e, size)
	}
	s.mu.Unlock()
}

// dropPlaceholder removes k's entry if it is still a placeholder.
func (c *cache) dropPlaceholder(k ckey) {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	if e := s.get(k); e != nil && e.v == nil {
		c.removeLocked(s, e)
	}
	s.mu.Unlock()
}

// pinned returns k's entry pinned for the unit of work gen, or nil.
func (c *cache) pinned(k ckey, gen uint64) *entry {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	e := c.lookupLocked(s, k)
	if e != nil {
		e.pin = gen
	}
	s.mu.Unlock()
	return e
}

// addPinned inserts v (loaded by the committer from the live DB, which is
// the published state) pinned for gen, and returns k's entry: an entry a
// reader inserted meanwhile holds the same published value and wins.
func (c *cache) addPinned(k ckey, v any, n uint64, size int64, gen uint64) *entry {
	e, _ := c.pinOrAdd(k, v, n, size, gen)
	return e
}

// pinOrAdd pins k's entry for gen, adding one for v if k is not cached.
func (c *cache) pinOrAdd(k ckey, v any, n uint64, size int64, gen uint64) (*entry, bool) {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.get(k); e != nil {
		e.pin = gen
		s.touch(e)
		return e, false
	}
	return c.addLocked(s, k, v, n, size, gen), true
}

// publishLock stamps k as published at gen (INVARIANT 2) and returns its
// entry, or nil, with the shard locked: the caller updates the entry and
// calls s.mu.Unlock.
func (c *cache) publishLock(k ckey, gen uint64) (*cshard, *entry) {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	s.touched[touchedSlot(h)] = gen
	return s, s.get(k)
}

// publishEntry is publishLock for an entry the committer holds pinned
// (so it is still cached): no lookup. The caller unlocks.
func (c *cache) publishEntry(e *entry, gen uint64) *cshard {
	s := c.shard(e.h)
	s.mu.Lock()
	s.touched[touchedSlot(e.h)] = gen
	return s
}

// view calls fn with k's entry under its shard lock if it holds a value,
// and reports whether it did. For readers copying published fields.
func (c *cache) view(k ckey, fn func(e *entry)) bool {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	e := c.lookupLocked(s, k)
	ok := e != nil && e.v != nil
	if ok {
		fn(e)
	}
	s.mu.Unlock()
	return ok
}

// get returns k's value and n (immutable values only: groups, lists,
// users, names), or ok false (also for a placeholder).
func (c *cache) get(k ckey) (v any, n uint64, ok bool) {
	h := c.hash(k)
	s := c.shard(h)
	s.mu.Lock()
	e := c.lookupLocked(s, k)
	if e != nil && e.v != nil {
		v, n, ok = e.v, e.n, true
	}
	s.mu.Unlock()
	return v, n, ok
}
