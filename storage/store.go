package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

const (
	defaultQueueSize = 65536
	defaultMaxBatch  = 4096
	defaultMaxBody   = 16384
	// ctlQueueSize bounds the queue of blocking operations (everything but
	// Submit). Their callers wait for room instead of failing.
	ctlQueueSize = 1024
)

func (o *Options) ensureDefaults() error {
	var errs []error
	if o.QueueSize < 0 {
		errs = append(errs, fmt.Errorf("storage: QueueSize %d < 0", o.QueueSize))
	}
	if o.MaxBatch < 0 {
		errs = append(errs, fmt.Errorf("storage: MaxBatch %d < 0", o.MaxBatch))
	}
	if o.MaxBody < 0 {
		errs = append(errs, fmt.Errorf("storage: MaxBody %d < 0", o.MaxBody))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if o.QueueSize == 0 {
		o.QueueSize = defaultQueueSize
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = defaultMaxBatch
	}
	if o.MaxBody == 0 {
		o.MaxBody = defaultMaxBody
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

func open(dir string, o Options) (*Store, error) {
	if err := o.ensureDefaults(); err != nil {
		return nil, err
	}
	fs := o.fs
	if fs == nil {
		fs = vfs.Default
	}
	if err := checkWritable(fs, dir); err != nil {
		return nil, fmt.Errorf("storage: %s is not writable: %w", dir, err)
	}
	if !o.Fsync {
		// Pebble writes a WAL record to the file before a Sync commit
		// returns, but a NoSync commit may return while the record still sits
		// in Pebble's buffer, where kill -9 would lose it. So every commit
		// is a Sync commit and, without Fsync, the WAL's fsync is skipped:
		// a committed batch is in the OS page cache (survives a process
		// crash), not necessarily on disk.
		fs = noSyncWALFS{fs}
	}
	memTableSize := uint64(16 << 20) // measured best of 4–64 MiB (docs/bench/storage.md)
	if o.memTable != 0 {
		memTableSize = o.memTable
	}
	cache := pebble.NewCache(64 << 20)
	defer cache.Unref()
	po := &pebble.Options{
		FS:                          fs,
		Cache:                       cache,
		Logger:                      pebbleLogger{o.Logger},
		FormatMajorVersion:          pebble.FormatNewest,
		MemTableSize:                memTableSize,
		MemTableStopWritesThreshold: 4,
		L0CompactionThreshold:       4,
		L0StopWritesThreshold:       24,
	}
	for i := range po.Levels {
		// Most cmid lookups miss: a Bloom filter answers them without
		// reading data blocks.
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	s := &Store{
		o:       o,
		log:     o.Logger,
		db:      db,
		users:   make(map[uint64]*user),
		names:   make(map[string]*user),
		groups:  make(map[uint64]*group),
		convs:   make(map[convKey]*conv),
		nextUID: 1,
		nextGID: 1,
		q:       make(chan *Send, o.QueueSize),
		ctl:     make(chan *request, ctlQueueSize),
		quit:    make(chan struct{}),
		stopped: make(chan struct{}),
		seen:    newCMIDSet(o.cmidBits),
	}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: load %s: %w", dir, err)
	}
	s.c.init(s)
	if !o.noCommit {
		go s.run()
	}
	return s, nil
}

// load reads the metadata into memory (state.go).
func (s *Store) load() error {
	v, closer, err := s.db.Get(formatKey)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		if err := s.db.Set(formatKey, []byte(formatValue), pebble.Sync); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		f := string(v)
		closer.Close()
		if f != formatValue {
			return fmt.Errorf("unknown data format %q (want %q)", f, formatValue)
		}
	}

	if err := s.scan([]byte{pfxUser}, func(k, v []byte) error {
		if len(k) != 9 {
			return errCorrupt
		}
		u := &user{}
		u.UID = getU64(k[1:])
		if err := decodeUser(v, &u.User); err != nil {
			return err
		}
		u.lname = strings.ToLower(u.Name)
		s.users[u.UID] = u
		s.names[u.lname] = u
		s.byUID = append(s.byUID, u) // ascending: keys are big-endian
		s.nextUID = u.UID + 1
		return nil
	}); err != nil {
		return fmt.Errorf("users: %w", err)
	}

	if err := s.scan([]byte{pfxGroup}, func(k, v []byte) error {
		if len(k) != 9 {
			return errCorrupt
		}
		created, creator, name, err := decodeGroup(v)
		if err != nil {
			return err
		}
		g := newGroup(getU64(k[1:]), name, created, creator)
		s.groups[g.id] = g
		s.nextGID = g.id + 1
		return nil
	}); err != nil {
		return fmt.Errorf("groups: %w", err)
	}

	if err := s.scan([]byte{pfxMember}, func(k, _ []byte) error {
		if len(k) != 17 {
			return errCorrupt
		}
		g, u := s.groups[getU64(k[1:])], s.users[getU64(k[9:])]
		if g == nil || u == nil {
			return fmt.Errorf("membership %x of unknown group or user", k)
		}
		g.members[u.UID] = &mark{}
		u.joinGroup(g)
		return nil
	}); err != nil {
		return fmt.Errorf("members: %w", err)
	}
	for _, g := range s.groups {
		g.rebuildRecips()
	}

	// Conversation metadata, checked against the messages themselves: the
	// last message must exist at last_seq and nothing may follow it.
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxMsg}, UpperBound: []byte{pfxMsg + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	if err := s.scan([]byte{pfxMeta}, func(k, v []byte) error {
		if len(k) != 1+convLen {
			return errCorrupt
		}
		ck := getConv(k[1:])
		seq, ts, reads, err := decodeMeta(v, !ck.group())
		if err != nil {
			return err
		}
		c, err := s.loadConv(ck)
		if err != nil {
			return err
		}
		if !it.SeekLT(keyMsg(nil, ck, math.MaxUint64)) || !hasConvPrefix(it.Key(), ck) {
			return fmt.Errorf("conversation %s: meta says last seq %d, no message found", ck, seq)
		}
		if got := getU64(it.Key()[1+convLen:]); got != seq {
			return fmt.Errorf("conversation %s: meta says last seq %d, last message has seq %d", ck, seq, got)
		}
		mv, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		c.last.Conv, c.last.Seq = c.name, seq
		if err := decodeMsg(mv, &c.last); err != nil {
			return err
		}
		c.lastSeq, c.lastTS = seq, ts
		c.headSeq, c.headTS = seq, ts
		for i, r := range reads {
			if r > seq {
				return fmt.Errorf("conversation %s: read seq %d above last seq %d", ck, r, seq)
			}
			c.read[i].pub, c.read[i].head = r, r
		}
		return nil
	}); err != nil {
		return fmt.Errorf("conversations: %w", err)
	}
	if err := it.Error(); err != nil {
		return err
	}

	if err := s.scan([]byte{pfxRead}, func(k, v []byte) error {
		if len(k) != 9+convLen || len(v) != 8 {
			return errCorrupt
		}
		uid, ck, seq := getU64(k[1:]), getConv(k[9:]), getU64(v)
		var m *mark
		var c *conv
		if g := s.groups[ck.a]; g != nil && ck.group() {
			m, c = g.members[uid], g.conv
		}
		if m == nil {
			return fmt.Errorf("read mark of uid %d in %s: no such membership", uid, ck)
		}
		if seq > c.lastSeq {
			return fmt.Errorf("read mark of uid %d in %s: %d above last seq %d", uid, ck, seq, c.lastSeq)
		}
		m.pub, m.head = seq, seq
		return nil
	}); err != nil {
		return fmt.Errorf("read marks: %w", err)
	}

	if err := s.scan([]byte{pfxUConv}, func(k, _ []byte) error {
		if len(k) != 9+convLen {
			return errCorrupt
		}
		uid, ck := getU64(k[1:]), getConv(k[9:])
		u, c := s.users[uid], s.convs[ck]
		if u == nil || c == nil || ck.group() || (uid != ck.a && uid != ck.b) || c.lastSeq == 0 {
			return fmt.Errorf("user conversation %d %s: inconsistent", uid, ck)
		}
		u.addDirect(c)
		return nil
	}); err != nil {
		return fmt.Errorf("user conversations: %w", err)
	}

	// The cmid filter (cmidset.go): every stored (from, cmid) pair.
	if err := s.loadCMIDs(); err != nil {
		return fmt.Errorf("cmid index: %w", err)
	}

	v, closer, err = s.db.Get([]byte{pfxDemo})
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return err
	default:
		if len(v) == 8 {
			s.demoGID = getU64(v)
		}
		closer.Close()
	}
	return nil
}

// loadCMIDs adds every key of the cmid index to the cmid filter. Only keys
// are read.
func (s *Store) loadCMIDs() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pfxCMID}, UpperBound: []byte{pfxCMID + 1}})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) < 9 {
			it.Close()
			return errCorrupt
		}
		s.seen.add(s.seen.fpBytes(getU64(k[1:]), k[9:]))
	}
	s.seen.migrate(len(s.seen.old)) // finish a doubling now, while nothing waits
	if err := it.Error(); err != nil {
		it.Close()
		return err
	}
	return it.Close()
}

// loadConv returns the conversation of ck, creating a direct one.
func (s *Store) loadConv(ck convKey) (*conv, error) {
	if ck.group() {
		g := s.groups[ck.a]
		if g == nil {
			return nil, fmt.Errorf("conversation %s: unknown group", ck)
		}
		return g.conv, nil
	}
	if s.users[ck.a] == nil || s.users[ck.b] == nil || ck.a >= ck.b {
		return nil, fmt.Errorf("conversation %s: unknown user", ck)
	}
	c := newDirect(ck)
	s.convs[ck] = c
	return c, nil
}

func hasConvPrefix(k []byte, ck convKey) bool {
	return len(k) == msgKeyLen && k[0] == pfxMsg && getConv(k[1:]) == ck
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

func newGroup(gid uint64, name string, created int64, creator uint64) *group {
	g := &group{id: gid, name: name, created: created, creator: creator, members: make(map[uint64]*mark)}
	g.conv = &conv{key: convKey{gid, 0}, name: GroupConv(gid), grp: g}
	g.recips = []uint64{}
	return g
}

func newDirect(ck convKey) *conv {
	return &conv{key: ck, name: DirectConv(ck.a, ck.b), recips: []uint64{ck.a, ck.b}}
}

func (u *user) joinGroup(g *group) {
	if u.groups == nil {
		u.groups = make(map[uint64]*group)
	}
	u.groups[g.id] = g
}

func (u *user) addDirect(c *conv) {
	if u.directs == nil {
		u.directs = make(map[uint64]*conv)
	}
	peer := c.key.a
	if peer == u.UID {
		peer = c.key.b
	}
	u.directs[peer] = c
}

// nowMs is the clock of stored timestamps.
func (s *Store) nowMs() int64 {
	if s.o.clock != nil {
		return s.o.clock()
	}
	return time.Now().UnixMilli()
}

func getU64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

func sortU64(s []uint64) { slices.Sort(s) }

func (s *Store) close() error {
	s.closeOnce.Do(func() {
		s.qmu.Lock()
		s.closed = true
		s.qmu.Unlock()
		close(s.quit)
		if !s.o.noCommit {
			<-s.stopped
		}
		if s.broken.Load() {
			// Pebble's commit pipeline failed (pebbleLogger.Fatalf); closing
			// the DB could block on it. The WAL holds everything committed.
			s.closeErr = errBroken
			return
		}
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

var errBroken = errors.New("storage: a commit failed; the store accepts no more writes (restart to recover from the WAL)")

// pebbleLogger routes Pebble's logging to slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// pebbleFatal is the panic value of Fatalf. Pebble calls Fatalf when its
// commit pipeline fails (and on corruption) and expects it not to return:
// returning would make the failed commit look successful. The committer
// recovers this panic around its commits (see commitBatch); anywhere else it
// crashes the process, like Pebble's default logger.
type pebbleFatal struct{ msg string }

func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "component", "pebble", "fatal", true)
	panic(pebbleFatal{msg})
}

// noSyncWALFS skips fsync on WAL files (Options.Fsync false).
type noSyncWALFS struct{ vfs.FS }

func isWAL(name string, cat vfs.DiskWriteCategory) bool {
	return cat == "pebble-wal" || strings.HasSuffix(name, ".log")
}

func (fs noSyncWALFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, cat)
	if err != nil || !isWAL(name, cat) {
		return f, err
	}
	return noSyncFile{f}, nil
}

func (fs noSyncWALFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, cat)
	if err != nil || !isWAL(newname, cat) {
		return f, err
	}
	return noSyncFile{f}, nil
}

type noSyncFile struct{ vfs.File }

func (noSyncFile) Sync() error                             { return nil }
func (noSyncFile) SyncData() error                         { return nil }
func (noSyncFile) SyncTo(int64) (fullSync bool, err error) { return true, nil }

// checkWritable creates dir and a file in it. pebble.Open flushes the
// replayed WAL to a new table; when the directory refuses new files (EPERM
// on an immutable directory, for example) Pebble retries that flush
// forever, logging each attempt, and Open never returns. So a directory
// that cannot take a new file is an error before Pebble sees it.
func checkWritable(fs vfs.FS, dir string) error {
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	name := fs.PathJoin(dir, "write-probe.tmp")
	f, err := fs.Create(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	err = f.Close()
	if rerr := fs.Remove(name); err == nil {
		err = rerr
	}
	return err
}
