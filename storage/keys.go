package storage

import (
	"encoding/binary"
	"errors"
	"strconv"
)

// Key layout (docs/STORAGE.md is the reference; keep the two in sync).
//
// Every key starts with one prefix byte. Numbers inside keys are 8-byte
// big-endian, so byte order is numeric order and a prefix scan of one
// conversation's messages returns them in seq order. A conversation inside a
// key is 16 bytes, a then b as in ParseConv: a direct conversation is
// (a, b) with 0 < a < b, a group is (gid, 0). Values are described at their
// encoders below.
const (
	pfxFormat   = 0x00 // 0x00 "magpie" → format string; 0x00 "migrate" → migration progress
	pfxUser     = 'u'  // u uid → user record
	pfxName     = 'n'  // n lower(name) → uid
	pfxGroup    = 'g'  // g gid → group record (v2: with owner, public, count)
	pfxMember   = 'M'  // M gid uid → empty (group → members)
	pfxUGroup   = 'G'  // G uid gid → empty (user → groups)
	pfxMeta     = 'v'  // v conv → last seq, last ts [, read seqs of a and b]
	pfxMsg      = 'm'  // m conv seq → message record
	pfxCMID     = 'c'  // c from cmid → conv, seq (idempotency index)
	pfxRead     = 'r'  // r uid conv → read seq (group conversations)
	pfxUConv    = 'x'  // x uid conv → empty (the user's direct conversations)
	pfxDemo     = 'D'  // D → gid of the demo lobby
	pfxLastSeen = 'L'  // L uid → last seen (PROTOCOL §16); L 0 run → a run's last checkpoint (presence.go)
)

var (
	formatKey = []byte("\x00magpie")
	// migrateKey holds the highest gid whose group record a v1 → v2
	// migration has rewritten (migrate.go); it exists only while one is
	// under way.
	migrateKey = []byte("\x00migrate")
)

const (
	formatValue   = "magpie storage v2"
	formatValueV1 = "magpie storage v1"
)

// convKey identifies a conversation in memory and in keys: a direct
// conversation is {a, b} with 0 < a < b; a group is {gid, 0}.
type convKey struct{ a, b uint64 }

func (k convKey) group() bool { return k.b == 0 }

func (k convKey) String() string {
	if k.group() {
		return GroupConv(k.a)
	}
	return DirectConv(k.a, k.b)
}

func directKey(x, y uint64) convKey {
	if x > y {
		x, y = y, x
	}
	return convKey{x, y}
}

const convLen = 16

func putConv(dst []byte, k convKey) {
	binary.BigEndian.PutUint64(dst, k.a)
	binary.BigEndian.PutUint64(dst[8:], k.b)
}

func getConv(src []byte) convKey {
	return convKey{binary.BigEndian.Uint64(src), binary.BigEndian.Uint64(src[8:])}
}

// appendU64 appends v big-endian.
func appendU64(dst []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(dst, v) }

func keyUser(dst []byte, uid uint64) []byte {
	return appendU64(append(dst, pfxUser), uid)
}

func keyName(dst []byte, lname string) []byte {
	return append(append(dst, pfxName), lname...)
}

func keyGroup(dst []byte, gid uint64) []byte {
	return appendU64(append(dst, pfxGroup), gid)
}

func keyMember(dst []byte, gid, uid uint64) []byte {
	return appendU64(appendU64(append(dst, pfxMember), gid), uid)
}

func keyUGroup(dst []byte, uid, gid uint64) []byte {
	return appendU64(appendU64(append(dst, pfxUGroup), uid), gid)
}

func keyConv(dst []byte, pfx byte, k convKey) []byte {
	return appendU64(appendU64(append(dst, pfx), k.a), k.b)
}

// msgKeyLen is the length of a message key: prefix, conversation, seq.
const msgKeyLen = 1 + convLen + 8

func putMsgKey(dst []byte, k convKey, seq uint64) {
	dst[0] = pfxMsg
	putConv(dst[1:], k)
	binary.BigEndian.PutUint64(dst[1+convLen:], seq)
}

func keyMsg(dst []byte, k convKey, seq uint64) []byte {
	return appendU64(keyConv(dst, pfxMsg, k), seq)
}

func keyCMID(dst []byte, from uint64, cmid string) []byte {
	return append(appendU64(append(dst, pfxCMID), from), cmid...)
}

// keyUserConv builds pfx uid conv (read marks and the user's direct
// conversations share this shape).
func keyUserConv(dst []byte, pfx byte, uid uint64, k convKey) []byte {
	dst = appendU64(append(dst, pfx), uid)
	dst = appendU64(dst, k.a)
	return appendU64(dst, k.b)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// Message value: uvarint from, varint ts, uvarint len(kind), kind,
// uvarint len(cmid), cmid, body (the rest).
func msgValueLen(m *Message) int {
	return uvarintLen(m.From) + varintLen(m.TS) + uvarintLen(uint64(len(m.Kind))) + len(m.Kind) +
		uvarintLen(uint64(len(m.CMID))) + len(m.CMID) + len(m.Body)
}

func putMsgValue(dst []byte, m *Message) {
	n := binary.PutUvarint(dst, m.From)
	n += binary.PutVarint(dst[n:], m.TS)
	n += binary.PutUvarint(dst[n:], uint64(len(m.Kind)))
	n += copy(dst[n:], m.Kind)
	n += binary.PutUvarint(dst[n:], uint64(len(m.CMID)))
	n += copy(dst[n:], m.CMID)
	copy(dst[n:], m.Body)
}

var errCorrupt = errors.New("storage: corrupt record")

func decodeMsg(v []byte, m *Message) error {
	from, n := binary.Uvarint(v)
	if n <= 0 {
		return errCorrupt
	}
	v = v[n:]
	ts, n := binary.Varint(v)
	if n <= 0 {
		return errCorrupt
	}
	v = v[n:]
	kind, v, ok := getString(v)
	if !ok {
		return errCorrupt
	}
	cmid, v, ok := getBytes(v)
	if !ok {
		return errCorrupt
	}
	m.From, m.TS = from, ts
	if string(kind) == "text" {
		m.Kind = "text" // no allocation for the common kind
	} else {
		m.Kind = string(kind)
	}
	m.CMID = string(cmid)
	m.Body = string(v)
	return nil
}

func getBytes(v []byte) (s, rest []byte, ok bool) {
	l, n := binary.Uvarint(v)
	if n <= 0 || uint64(len(v)-n) < l {
		return nil, nil, false
	}
	return v[n : n+int(l)], v[n+int(l):], true
}

func getString(v []byte) (s, rest []byte, ok bool) { return getBytes(v) }

func appendBytes(dst, b []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(b))), b...)
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func varintLen(v int64) int {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}

// User value: uvarint len(name), name, hash (the rest).
func encodeUser(dst []byte, u *User) []byte {
	return append(appendString(dst, u.Name), u.Hash...)
}

func decodeUser(v []byte, u *User) error {
	name, rest, ok := getString(v)
	if !ok {
		return errCorrupt
	}
	u.Name = string(name)
	u.Hash = append([]byte(nil), rest...)
	return nil
}

// Group value (v2): uvarint flags (bit 0: public), varint created (Unix
// ms), uvarint creator, uvarint owner (0: none), uvarint count (members),
// name (the rest).
func encodeGroup(dst []byte, g *groupRec) []byte {
	var flags uint64
	if g.public {
		flags |= 1
	}
	dst = binary.AppendUvarint(dst, flags)
	dst = binary.AppendVarint(dst, g.created)
	dst = binary.AppendUvarint(dst, g.creator)
	dst = binary.AppendUvarint(dst, g.owner)
	dst = binary.AppendUvarint(dst, g.count)
	return append(dst, g.name...)
}

func decodeGroup(gid uint64, v []byte) (*groupRec, error) {
	g := &groupRec{id: gid}
	flags, n := binary.Uvarint(v)
	if n <= 0 || flags > 1 {
		return nil, errCorrupt
	}
	g.public = flags&1 != 0
	v = v[n:]
	if g.created, n = binary.Varint(v); n <= 0 {
		return nil, errCorrupt
	}
	v = v[n:]
	for _, f := range []*uint64{&g.creator, &g.owner, &g.count} {
		if *f, n = binary.Uvarint(v); n <= 0 {
			return nil, errCorrupt
		}
		v = v[n:]
	}
	g.name = string(v)
	return g, nil
}

// decodeGroupV1 reads a group value of format v1: varint created (Unix ms),
// uvarint creator, name (the rest). Read only by the migration.
func decodeGroupV1(v []byte) (created int64, creator uint64, name string, err error) {
	created, n := binary.Varint(v)
	if n <= 0 {
		return 0, 0, "", errCorrupt
	}
	v = v[n:]
	creator, n = binary.Uvarint(v)
	if n <= 0 {
		return 0, 0, "", errCorrupt
	}
	return created, creator, string(v[n:]), nil
}

// encodeMeta fills v (16 bytes for a group, 32 for a direct conversation).
func encodeMeta(v []byte, seq uint64, ts int64, reads [2]uint64) {
	putU64(v, seq)
	putU64(v[8:], uint64(ts))
	if len(v) == 32 {
		putU64(v[16:], reads[0])
		putU64(v[24:], reads[1])
	}
}

// Meta value: last seq, last ts (Unix ms), and for a direct conversation
// the read seqs of a and b; each 8 bytes BE. Keeping a direct
// conversation's read marks here saves a key per message (the sender's
// read mark moves with every send).
func decodeMeta(v []byte, direct bool) (seq uint64, ts int64, reads [2]uint64, err error) {
	want := 16
	if direct {
		want = 32
	}
	if len(v) != want {
		return 0, 0, reads, errCorrupt
	}
	if direct {
		reads = [2]uint64{binary.BigEndian.Uint64(v[16:]), binary.BigEndian.Uint64(v[24:])}
	}
	return binary.BigEndian.Uint64(v), int64(binary.BigEndian.Uint64(v[8:])), reads, nil
}

// CMID value: conversation (16 bytes), seq (8 bytes BE).
func decodeCMIDValue(v []byte) (convKey, uint64, error) {
	if len(v) != convLen+8 {
		return convKey{}, 0, errCorrupt
	}
	return getConv(v), binary.BigEndian.Uint64(v[convLen:]), nil
}

// ParseConv parses a conversation id; ok is false when it is malformed.
// For "d:a:b", a < b; for "g:gid", a = gid, b = 0. Well-formed means
// decimal without sign or leading zeros, 0 < a < b, gid > 0, and every
// number fits in a uint64 (PROTOCOL §5).
func ParseConv(conv string) (group bool, a, b uint64, ok bool) {
	if len(conv) < 3 || conv[1] != ':' {
		return false, 0, 0, false
	}
	switch conv[0] {
	case 'g':
		gid, ok := parseID(conv[2:])
		if !ok {
			return false, 0, 0, false
		}
		return true, gid, 0, true
	case 'd':
		rest := conv[2:]
		i := 0
		for i < len(rest) && rest[i] != ':' {
			i++
		}
		if i == len(rest) {
			return false, 0, 0, false
		}
		a, ok1 := parseID(rest[:i])
		b, ok2 := parseID(rest[i+1:])
		if !ok1 || !ok2 || a >= b {
			return false, 0, 0, false
		}
		return false, a, b, true
	}
	return false, 0, 0, false
}

// parseID parses a positive decimal without sign or leading zeros.
func parseID(s string) (uint64, bool) {
	if s == "" || s[0] == '0' || len(s) > 20 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

func parseConvKey(conv string) (convKey, bool) {
	_, a, b, ok := ParseConv(conv)
	return convKey{a, b}, ok
}

// DirectConv returns "d:min:max".
func DirectConv(x, y uint64) string {
	if x > y {
		x, y = y, x
	}
	buf := make([]byte, 0, 44)
	buf = append(buf, 'd', ':')
	buf = strconv.AppendUint(buf, x, 10)
	buf = append(buf, ':')
	buf = strconv.AppendUint(buf, y, 10)
	return string(buf)
}

// GroupConv returns "g:gid".
func GroupConv(gid uint64) string {
	buf := make([]byte, 0, 22)
	buf = append(buf, 'g', ':')
	buf = strconv.AppendUint(buf, gid, 10)
	return string(buf)
}
