package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Populate writes a synthetic data set straight into sstables and ingests
// them into a new store: the bulk path of `magpie bench populate`
// (docs/BENCHMARKS.md, data scale). Every key is generated in key order,
// one prefix after the other, so the tables go to the bottom level without
// a compaction; 10 million messages take minutes.
//
// The data set: Users users named Prefix + the uid zero-padded (so names
// sort like uids), each with password hash Hash; Convs direct
// conversations (a, a+δ) for δ = 1…k, the smallest k that gives enough,
// in (a, δ) order (PopulatePair); Messages messages spread evenly over
// them (the first ones get one more), sent alternately by a and b, one a
// minute, each with a cmid (from, conv index, seq) and a body of BodySize
// bytes; read marks as the senders left them (each sender has read up to
// its last message). No groups. The result opens like any data dir.
type PopulateSpec struct {
	Users, Convs, Messages int
	Prefix                 string // default "p"
	Hash                   []byte
	BodySize               int   // default 60
	Start                  int64 // Unix ms of the first message; default 2025-01-01
	// FormatV1 writes format v1 (the release before the cache, df74be6),
	// for before/after measurements with the old binary. Without groups
	// the two formats differ only in the format key.
	FormatV1 bool
	// Progress, when set, is called with a line now and then.
	Progress func(string)
}

func (p *PopulateSpec) defaults() error {
	if p.Users < 2 || p.Convs < 0 || p.Messages < 0 {
		return fmt.Errorf("storage: populate: need users ≥ 2, convs ≥ 0, messages ≥ 0 (got %d, %d, %d)", p.Users, p.Convs, p.Messages)
	}
	if max := uint64(p.Users) * uint64(p.Users-1) / 2; uint64(p.Convs) > max {
		return fmt.Errorf("storage: populate: %d users have at most %d conversations", p.Users, max)
	}
	if p.Convs == 0 && p.Messages > 0 {
		return errors.New("storage: populate: messages need conversations")
	}
	if p.Prefix == "" {
		p.Prefix = "p"
	}
	if p.BodySize <= 0 {
		p.BodySize = 60
	}
	if p.Start == 0 {
		p.Start = 1735689600000
	}
	if p.Progress == nil {
		p.Progress = func(string) {}
	}
	return nil
}

// populateLayout is the shape of the conversation set: conversation j is
// (a, a+δ) in (a, δ) order with 1 ≤ δ ≤ min(k, users−a), the first convs
// of them.
type populateLayout struct {
	users, convs, k uint64
}

func newLayout(users, convs int) populateLayout {
	l := populateLayout{users: uint64(users), convs: uint64(convs), k: 1}
	for l.total(l.k) < l.convs {
		l.k++
	}
	return l
}

// total is the number of pairs with δ ≤ k.
func (l populateLayout) total(k uint64) uint64 {
	if k >= l.users {
		k = l.users - 1
	}
	return l.users*k - k*(k+1)/2
}

// index is the number of the conversation (a, a+d), or false when it is
// not in the set.
func (l populateLayout) index(a, d uint64) (uint64, bool) {
	if a < 1 || d < 1 || d > l.k || a+d > l.users {
		return 0, false
	}
	// Conversations before a's: every a' < a has min(k, users−a').
	var before uint64
	full := l.users - min(l.k, l.users) // a' ≤ full has all k
	if a-1 <= full {
		before = (a - 1) * l.k
	} else {
		// a' in (full, a): users−a' each, i.e. the sum of users−a+1 … k−1.
		hi, lo := l.users-full-1, l.users-a+1
		before = full*l.k + (hi*(hi+1)-(lo-1)*lo)/2
	}
	j := before + d - 1
	return j, j < l.convs
}

// PopulateHasConv reports whether a store populated with users users and
// convs conversations has the conversation of a and a+d. The bench uses
// it to pick users whose conversations exist.
func PopulateHasConv(users, convs int, a, d uint64) bool {
	_, ok := newLayout(users, convs).index(a, d)
	return ok
}

// PopulateName returns the name Populate gives uid.
func PopulateName(prefix string, users int, uid uint64) string {
	if prefix == "" {
		prefix = "p"
	}
	w := len(strconv.Itoa(users))
	s := strconv.FormatUint(uid, 10)
	for len(s) < w {
		s = "0" + s
	}
	return prefix + s
}

// each calls fn for the conversations of uid in conversation order (the
// ones where it is b, then the ones where it is a).
func (l populateLayout) each(uid uint64, fn func(j, a, b uint64)) {
	for d := l.k; d >= 1; d-- {
		if uid > d {
			if j, ok := l.index(uid-d, d); ok {
				fn(j, uid-d, uid)
			}
		}
	}
	for d := uint64(1); d <= l.k; d++ {
		if j, ok := l.index(uid, d); ok {
			fn(j, uid, uid+d)
		}
	}
}

func (l populateLayout) msgs(j uint64, messages uint64) uint64 {
	n := messages / l.convs
	if j < messages%l.convs {
		n++
	}
	return n
}

// populateTS is the ts of message seq of conversation j: one a minute
// from a per-conversation start within 30 days.
func populateTS(start int64, j, seq uint64) int64 {
	off := (j * 0x9e3779b97f4a7c15 >> 20) % (30 * 24 * 3600 * 1000)
	return start + int64(off) + int64(seq)*60000
}

func populateCMID(dst []byte, j, seq uint64) []byte {
	dst = append(dst, 'p')
	dst = appendHex(dst, j, 10)
	return appendHex(dst, seq, 6)
}

func appendHex(dst []byte, v uint64, width int) []byte {
	const digits = "0123456789abcdef"
	for i := width - 1; i >= 0; i-- {
		dst = append(dst, digits[(v>>(4*uint(i)))&15])
	}
	return dst
}

// Populate creates the store in dir (which must not hold one) from spec.
func Populate(dir string, spec PopulateSpec) error {
	if err := spec.defaults(); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "CURRENT")); err == nil {
		return fmt.Errorf("storage: populate: %s already holds a store", dir)
	}
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		return fmt.Errorf("storage: populate: %s is not empty", dir)
	}
	t0 := time.Now()
	o := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	_ = o.ensureDefaults()
	po := pebbleOptions(vfs.Default, &o)
	po.EnsureDefaults()
	db, err := pebble.Open(dir, po)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "populate-tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		db.Close()
		return err
	}
	w := &bulkWriter{dir: tmp, opts: po.MakeWriterOptions(6, db.TableFormat()), limit: 128 << 20}
	err = spec.write(w)
	if err == nil {
		err = w.finish()
	}
	if err == nil {
		spec.Progress(fmt.Sprintf("ingesting %d tables (%.0f MB)", len(w.paths), float64(w.bytes)/1e6))
		err = db.Ingest(context.Background(), w.paths)
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	os.RemoveAll(tmp)
	if err == nil {
		spec.Progress(fmt.Sprintf("populated in %v", time.Since(t0).Round(time.Millisecond)))
	}
	return err
}

// bulkWriter writes keys in ascending order into sstables of about limit
// bytes.
type bulkWriter struct {
	dir   string
	opts  sstable.WriterOptions
	limit uint64
	w     *sstable.Writer
	n     int
	paths []string
	bytes uint64
}

func (b *bulkWriter) set(k, v []byte) error {
	if b.w == nil {
		p := filepath.Join(b.dir, fmt.Sprintf("%06d.sst", b.n))
		b.n++
		f, err := vfs.Default.Create(p, vfs.WriteCategoryUnspecified)
		if err != nil {
			return err
		}
		b.w = sstable.NewWriter(objstorageprovider.NewFileWritable(f), b.opts)
		b.paths = append(b.paths, p)
	}
	if err := b.w.Set(k, v); err != nil {
		return err
	}
	if b.w.Raw().EstimatedSize() >= b.limit {
		return b.closeTable()
	}
	return nil
}

func (b *bulkWriter) closeTable() error {
	if b.w == nil {
		return nil
	}
	b.bytes += b.w.Raw().EstimatedSize()
	err := b.w.Close()
	b.w = nil
	return err
}

func (b *bulkWriter) finish() error { return b.closeTable() }

// write generates every key in key order.
func (p *PopulateSpec) write(w *bulkWriter) error {
	l := newLayout(p.Users, p.Convs)
	users, msgs := uint64(p.Users), uint64(p.Messages)
	var k, v []byte
	format := formatValue
	if p.FormatV1 {
		format = formatValueV1
	}
	if err := w.set(formatKey, []byte(format)); err != nil {
		return err
	}
	// c from cmid → conv, seq: per sender, its conversations in order, its
	// seqs in each (a sends the odd ones, b the even ones).
	p.Progress("writing the cmid index")
	for uid := uint64(1); uid <= users; uid++ {
		var err error
		l.each(uid, func(j, a, b uint64) {
			n := l.msgs(j, msgs)
			first := uint64(1)
			if uid == b {
				first = 2
			}
			for seq := first; seq <= n && err == nil; seq += 2 {
				k = populateCMID(appendU64(append(k[:0], pfxCMID), uid), j, seq)
				v = v[:0]
				v = appendU64(appendU64(appendU64(v, a), b), seq)
				err = w.set(k, v)
			}
		})
		if err != nil {
			return err
		}
	}
	// m conv seq → message.
	p.Progress("writing the messages")
	body := populateText(p.BodySize)
	var j uint64
	for a := uint64(1); a < users && j < l.convs; a++ {
		for d := uint64(1); d <= l.k && a+d <= users && j < l.convs; d++ {
			ck := convKey{a, a + d}
			n := l.msgs(j, msgs)
			for seq := uint64(1); seq <= n; seq++ {
				from := ck.a
				if seq%2 == 0 {
					from = ck.b
				}
				off := int((j*131 + seq*17) % uint64(len(body)-p.BodySize+1))
				var cm [17]byte
				m := Message{From: from, TS: populateTS(p.Start, j, seq), Kind: "text",
					CMID: string(populateCMID(cm[:0], j, seq)), Body: body[off : off+p.BodySize]}
				k = keyMsg(k[:0], ck, seq)
				v = slices.Grow(v[:0], msgValueLen(&m))[:msgValueLen(&m)]
				putMsgValue(v, &m)
				if err := w.set(k, v); err != nil {
					return err
				}
			}
			j++
			if j%1000000 == 0 {
				p.Progress(fmt.Sprintf("messages of %d conversations", j))
			}
		}
	}
	// n lower(name) → uid; names sort like uids.
	p.Progress("writing the users")
	for uid := uint64(1); uid <= users; uid++ {
		k = keyName(k[:0], PopulateName(p.Prefix, p.Users, uid))
		if err := w.set(k, appendU64(v[:0], uid)); err != nil {
			return err
		}
	}
	// u uid → user.
	for uid := uint64(1); uid <= users; uid++ {
		u := User{Name: PopulateName(p.Prefix, p.Users, uid), Hash: p.Hash}
		if err := w.set(keyUser(k[:0], uid), encodeUser(v[:0], &u)); err != nil {
			return err
		}
	}
	// v conv → last seq, ts, read marks.
	p.Progress("writing the conversation heads")
	j = 0
	for a := uint64(1); a < users && j < l.convs; a++ {
		for d := uint64(1); d <= l.k && a+d <= users && j < l.convs; d++ {
			ck := convKey{a, a + d}
			n := l.msgs(j, msgs)
			j++
			if n == 0 {
				continue
			}
			var reads [2]uint64
			if n%2 == 1 {
				reads = [2]uint64{n, n - 1}
			} else {
				reads = [2]uint64{n - 1, n}
			}
			k = keyConv(k[:0], pfxMeta, ck)
			v = slices.Grow(v[:0], 32)[:32]
			encodeMeta(v, n, populateTS(p.Start, j-1, n), reads)
			if err := w.set(k, v); err != nil {
				return err
			}
		}
	}
	// x uid conv → empty, for conversations with messages.
	p.Progress("writing the users' conversations")
	for uid := uint64(1); uid <= users; uid++ {
		var err error
		l.each(uid, func(j, a, b uint64) {
			if err == nil && l.msgs(j, msgs) > 0 {
				err = w.set(keyUserConv(k[:0], pfxUConv, uid, convKey{a, b}), nil)
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// populateText is a deterministic text to cut message bodies from.
func populateText(size int) string {
	words := []string{"the", "quick", "message", "arrives", "before", "lunch", "and", "nobody", "reads", "it",
		"until", "tomorrow", "morning", "when", "coffee", "helps", "a", "little", "bit", "more"}
	b := make([]byte, 0, 4096+size)
	x := uint64(12345)
	for len(b) < 4096+size {
		x = x*6364136223846793005 + 1442695040888963407
		b = append(b, words[x>>59%uint64(len(words))]...)
		b = append(b, ' ')
	}
	return string(b)
}
