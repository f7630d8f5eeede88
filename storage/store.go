package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	if o.CacheSize < 0 {
		errs = append(errs, fmt.Errorf("storage: CacheSize %d < 0", o.CacheSize))
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
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// pebbleOptions are the Pebble settings of a store (and of the sstables
// the bulk loader writes).
func pebbleOptions(fs vfs.FS, o *Options) *pebble.Options {
	memTableSize := uint64(16 << 20) // measured best of 4–64 MiB (docs/bench/storage.md)
	if o.memTable != 0 {
		memTableSize = o.memTable
	}
	po := &pebble.Options{
		FS:                          fs,
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
	return po
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
	po := pebbleOptions(fs, &o)
	unflushed := newUnflushedCMIDs()
	po.EventListener = &pebble.EventListener{FlushEnd: unflushed.flushed}
	bc := pebble.NewCache(blockCacheSize)
	defer bc.Unref()
	po.Cache = bc
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	s := &Store{
		o:             o,
		log:           o.Logger,
		db:            db,
		cache:         newCache(o.CacheSize),
		unflushed:     unflushed,
		maxBatchBytes: int(po.MemTableSize / 4),
		nextUID:       1,
		nextGID:       1,
		q:             make(chan *Send, o.QueueSize),
		ctl:           make(chan *request, ctlQueueSize),
		quit:          make(chan struct{}),
		stopped:       make(chan struct{}),
	}
	if err := s.start(dir); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	s.c.init(s)
	s.newSnap(0)
	s.pubNextUID.Store(s.nextUID)
	s.pubNextGID.Store(s.nextGID)
	if !o.noCommit {
		go s.run()
	}
	return s, nil
}

// blockCacheSize is Pebble's block cache (data, index and filter blocks),
// besides the metadata cache.
const blockCacheSize = 64 << 20

// start checks (and if needed migrates) the data format and reads the
// next uid and gid from the last key of their prefix: nothing here grows
// with the history.
func (s *Store) start(dir string) error {
	var format string
	found, err := getValue(s.db, formatKey, func(v []byte) error {
		format = string(v)
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case !found:
		// A new store (Pebble refuses a directory it does not know, so
		// this is an empty one).
		if err := s.db.Set(formatKey, []byte(formatValue), pebble.Sync); err != nil {
			return err
		}
	case format == formatValueV1:
		if err := s.migrateV1(dir); err != nil {
			return fmt.Errorf("migrate from %q to %q: %w", formatValueV1, formatValue, err)
		}
	case format != formatValue:
		return fmt.Errorf("unknown data format %q (want %q)", format, formatValue)
	}
	lastUID, err := lastID(s.db, pfxUser)
	if err != nil {
		return fmt.Errorf("users: %w", err)
	}
	lastGID, err := lastID(s.db, pfxGroup)
	if err != nil {
		return fmt.Errorf("groups: %w", err)
	}
	s.nextUID, s.nextGID = lastUID+1, lastGID+1
	// Everything before the committer starts is in sstables, so the
	// unflushed-cmid set starts empty (unflushed.go INVARIANT U). Pebble
	// flushed the WAL it replayed; this flushes what was written since
	// (the format key, a migration). Nothing written: a cheap no-op.
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if _, err := getValue(s.db, []byte{pfxDemo}, func(v []byte) error {
		if len(v) == 8 {
			s.demoGID = getU64(v)
		}
		return nil
	}); err != nil {
		return err
	}
	return nil
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
		// Readers still running hold their own reference; Pebble reports
		// a snapshot left open by one as an error here.
		s.snapClosed.Store(true) // before the release: acquire stops retrying
		s.release(s.snap.Load())
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
