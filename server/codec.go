package server

// Request decoding. Every function here is pure over its arguments and
// safe from any goroutine; a request and a decoder belong to whoever holds
// them (on the loops, the loop's scratch: REQUIRES: owning event loop).

import (
	"errors"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Frame types of client requests.
const (
	tUnknown uint8 = iota
	tPing
	tAuth
	tSend
	tAck
	tRead
	tConvs
	tHistory
	tGroupCreate
	tGroupJoin
	tGroupLeave
	tGroupMembers
)

// Request types of PROTOCOL §14–§16 (receipts, typing, presence), numbered
// apart from the others.
const (
	tReceipts uint8 = 64 + iota
	tTyping
	tPresenceSub
)

// Frame types of PROTOCOL §13 (groups, version 2).
const (
	tGroupAdd uint8 = 0x20 + iota
	tGroupRemove
	tGroupRename
)

// Presence bits of request fields.
const (
	hasRID uint32 = 1 << iota
	hasCMID
	hasTo
	hasGroup
	hasBody
	hasKind
	hasConv
	hasSeq
	hasAfter
	hasBefore
	hasLimit
	hasToken
	hasDevice
	hasName
	hasMembers
	hasType
	hasPublic // PROTOCOL §13
)

// Presence bits of the fields of PROTOCOL §14–§16 requests.
const (
	hasUIDs uint32 = 1 << 28
)

// request is a decoded client frame. Byte-slice fields alias the frame
// payload or the decoder's scratch buffer: valid until the next decode.
// Numeric fields hold the value when the presence bit is set; a number
// field that is not a non-negative integer below 2^53 makes badField true.
type request struct {
	typ      uint8
	has      uint32
	badField string // first field with a wrong type or value ("" when fine)
	rid      []byte
	cmid     []byte
	body     []byte
	kind     []byte
	conv     []byte
	token    []byte
	device   []byte
	name     []byte
	to       uint64
	group    uint64
	seq      uint64
	after    uint64
	before   uint64
	limit    int64
	public   bool // group_create (PROTOCOL §13)
	members  []uint64
	uids     []uint64 // presence_sub (PROTOCOL §16)
	// scratch holds unescaped strings; reused across decodes.
	scratch []byte
}

var errSyntax = errors.New("malformed JSON")

// decodeRequest parses one client frame (a JSON object). It returns
// errSyntax when p is not a JSON object; field type errors are reported in
// r.badField so that the caller can still echo rid/cmid.
// It allocates nothing once r.scratch and r.members have grown.
func decodeRequest(p []byte, r *request) error {
	scratch, members, uids := r.scratch[:0], r.members[:0], r.uids[:0]
	*r = request{scratch: scratch, members: members, uids: uids}
	d := decoder{p: p}
	d.ws()
	if !d.eat('{') {
		return errSyntax
	}
	d.ws()
	if d.eat('}') {
		return d.end()
	}
	for {
		d.ws()
		key, ok := d.rawKey()
		if !ok {
			return errSyntax
		}
		d.ws()
		if !d.eat(':') {
			return errSyntax
		}
		d.ws()
		if err := r.field(&d, key); err != nil {
			return err
		}
		d.ws()
		if d.eat(',') {
			continue
		}
		if d.eat('}') {
			return d.end()
		}
		return errSyntax
	}
}

func (r *request) bad(name string) {
	if r.badField == "" {
		r.badField = name
	}
}

func (r *request) field(d *decoder, key []byte) error {
	switch string(key) {
	case "type":
		s, ok, err := r.str(d)
		if err != nil {
			return err
		}
		r.has |= hasType
		if !ok {
			r.bad("type")
			return nil
		}
		r.typ = typeOf(s)
	case "rid":
		return r.strField(d, &r.rid, hasRID, "rid")
	case "cmid":
		return r.strField(d, &r.cmid, hasCMID, "cmid")
	case "body":
		return r.strField(d, &r.body, hasBody, "body")
	case "kind":
		return r.strField(d, &r.kind, hasKind, "kind")
	case "conv":
		return r.strField(d, &r.conv, hasConv, "conv")
	case "token":
		return r.strField(d, &r.token, hasToken, "token")
	case "device":
		return r.strField(d, &r.device, hasDevice, "device")
	case "name":
		return r.strField(d, &r.name, hasName, "name")
	case "to":
		return r.uintField(d, &r.to, hasTo, "to")
	case "group":
		return r.uintField(d, &r.group, hasGroup, "group")
	case "seq":
		return r.uintField(d, &r.seq, hasSeq, "seq")
	case "after":
		return r.uintField(d, &r.after, hasAfter, "after")
	case "before":
		return r.uintField(d, &r.before, hasBefore, "before")
	case "limit":
		if d.null() {
			return nil
		}
		n, ok, err := d.number()
		if err != nil {
			return err
		}
		r.has |= hasLimit
		if !ok {
			r.bad("limit")
		}
		r.limit = n
	case "members":
		// Bounded by --max-message only (PROTOCOL §13): a uid takes at
		// least two bytes of the frame. group_add/group_remove check
		// their 1–1000 bound on the list as sent.
		return r.uintList(d, &r.members, hasMembers, "members", math.MaxInt)
	case "uids":
		return r.uintList(d, &r.uids, hasUIDs, "uids", maxPresenceSub)
	// PROTOCOL §13.
	case "public":
		if d.null() {
			return nil
		}
		r.has |= hasPublic
		switch {
		case d.lit("true") == nil:
			r.public = true
		case d.lit("false") == nil:
		default:
			r.bad("public")
			return d.skip()
		}
	default:
		return d.skip()
	}
	return nil
}

// maxPresenceSub bounds presence_sub's uids (PROTOCOL §16).
const maxPresenceSub = 1000

// uintList reads an array of at most most positive integers (members,
// uids) into *dst; anything else marks the field bad (the value is still
// skipped with its syntax checked). null counts as absent.
func (r *request) uintList(d *decoder, dst *[]uint64, bit uint32, name string, most int) error {
	if d.null() {
		return nil
	}
	r.has |= bit
	if !d.eat('[') {
		r.bad(name)
		return d.skip()
	}
	d.ws()
	if d.eat(']') {
		return nil
	}
	for {
		d.ws()
		n, ok, err := d.number()
		if err != nil {
			return err
		}
		if !ok || n <= 0 || len(*dst) >= most {
			r.bad(name)
		} else {
			*dst = append(*dst, uint64(n))
		}
		d.ws()
		if d.eat(',') {
			continue
		}
		if d.eat(']') {
			return nil
		}
		return errSyntax
	}
}

func (r *request) strField(d *decoder, dst *[]byte, bit uint32, name string) error {
	if d.null() {
		return nil
	}
	s, ok, err := r.str(d)
	if err != nil {
		return err
	}
	r.has |= bit
	if !ok {
		r.bad(name)
		return nil
	}
	*dst = s
	return nil
}

func (r *request) uintField(d *decoder, dst *uint64, bit uint32, name string) error {
	if d.null() {
		return nil
	}
	n, ok, err := d.number()
	if err != nil {
		return err
	}
	r.has |= bit
	if !ok || n < 0 {
		r.bad(name)
		return nil
	}
	*dst = uint64(n)
	return nil
}

// str reads a string value. ok is false (and the value skipped) when the
// value is not a string or holds an invalid escape such as a lone surrogate.
func (r *request) str(d *decoder) (s []byte, ok bool, err error) {
	if d.i >= len(d.p) || d.p[d.i] != '"' {
		return nil, false, d.skip()
	}
	d.i++
	start := d.i
	for d.i < len(d.p) {
		c := d.p[d.i]
		if c == '"' {
			s = d.p[start:d.i]
			d.i++
			return s, true, nil
		}
		if c == '\\' {
			return r.strSlow(d, start)
		}
		if c < 0x20 {
			return nil, false, errSyntax
		}
		d.i++
	}
	return nil, false, errSyntax
}

// strSlow unescapes into r.scratch. The returned slice stays valid while
// later strings are appended, because scratch only grows by append into a
// fresh region: we copy the result out of any earlier reallocation by
// slicing after the append completes.
func (r *request) strSlow(d *decoder, start int) ([]byte, bool, error) {
	off := len(r.scratch)
	buf := append(r.scratch, d.p[start:d.i]...)
	valid := true
	for d.i < len(d.p) {
		c := d.p[d.i]
		switch {
		case c == '"':
			d.i++
			r.scratch = buf
			if !valid {
				return nil, false, nil
			}
			return buf[off:len(buf):len(buf)], true, nil
		case c < 0x20:
			return nil, false, errSyntax
		case c != '\\':
			buf = append(buf, c)
			d.i++
			continue
		}
		d.i++
		if d.i >= len(d.p) {
			return nil, false, errSyntax
		}
		e := d.p[d.i]
		d.i++
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r1, ok := d.hex4()
			if !ok {
				return nil, false, errSyntax
			}
			switch {
			case utf16.IsSurrogate(r1):
				// Needs a following \uDC00-\uDFFF low surrogate.
				if r1 >= 0xDC00 || d.i+6 > len(d.p) || d.p[d.i] != '\\' || d.p[d.i+1] != 'u' {
					valid = false
					continue
				}
				d.i += 2
				r2, ok := d.hex4()
				if !ok {
					return nil, false, errSyntax
				}
				dec := utf16.DecodeRune(r1, r2)
				if dec == utf8.RuneError {
					valid = false
					continue
				}
				buf = utf8.AppendRune(buf, dec)
			default:
				buf = utf8.AppendRune(buf, r1)
			}
		default:
			return nil, false, errSyntax
		}
	}
	return nil, false, errSyntax
}

func typeOf(s []byte) uint8 {
	switch string(s) {
	case "ping":
		return tPing
	case "auth":
		return tAuth
	case "send":
		return tSend
	case "ack":
		return tAck
	case "read":
		return tRead
	case "convs":
		return tConvs
	case "history":
		return tHistory
	case "group_create":
		return tGroupCreate
	case "group_join":
		return tGroupJoin
	case "group_leave":
		return tGroupLeave
	case "group_members":
		return tGroupMembers
	// PROTOCOL §13.
	case "group_add":
		return tGroupAdd
	case "group_remove":
		return tGroupRemove
	case "group_rename":
		return tGroupRename
	}
	return typeOfV2(s)
}

// typeOfV2 returns the type of a PROTOCOL §14–§16 request, or tUnknown.
func typeOfV2(s []byte) uint8 {
	switch string(s) {
	case "receipts":
		return tReceipts
	case "typing":
		return tTyping
	case "presence_sub":
		return tPresenceSub
	}
	return tUnknown
}

// decoder is a minimal JSON scanner over one object.
type decoder struct {
	p []byte
	i int
}

func (d *decoder) ws() {
	for d.i < len(d.p) {
		switch d.p[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *decoder) eat(c byte) bool {
	if d.i < len(d.p) && d.p[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *decoder) end() error {
	d.ws()
	if d.i != len(d.p) {
		return errSyntax
	}
	return nil
}

func (d *decoder) null() bool {
	if len(d.p)-d.i >= 4 && string(d.p[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

// rawKey reads an object key. Keys with escapes never match a known field
// and are returned raw (still skipped correctly).
func (d *decoder) rawKey() ([]byte, bool) {
	if !d.eat('"') {
		return nil, false
	}
	start := d.i
	if !d.skipStringBody() {
		return nil, false
	}
	return d.p[start : d.i-1], true
}

// skipStringBody skips a string after its opening quote, through the
// closing quote, checking escapes. It reports false on bad syntax.
func (d *decoder) skipStringBody() bool {
	for d.i < len(d.p) {
		switch c := d.p[d.i]; {
		case c == '"':
			d.i++
			return true
		case c == '\\':
			d.i++
			if d.i >= len(d.p) {
				return false
			}
			switch d.p[d.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				d.i++
			case 'u':
				d.i++
				if _, ok := d.hex4(); !ok {
					return false
				}
			default:
				return false
			}
		case c < 0x20:
			return false
		default:
			d.i++
		}
	}
	return false
}

func (d *decoder) hex4() (rune, bool) {
	if d.i+4 > len(d.p) {
		return 0, false
	}
	var r rune
	for _, c := range d.p[d.i : d.i+4] {
		r <<= 4
		switch {
		case '0' <= c && c <= '9':
			r |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			r |= rune(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	d.i += 4
	return r, true
}

const maxSafeInt = 1<<53 - 1

// number reads a JSON value expected to be an integer. ok is false (value
// skipped) for other types, fractions, exponents, or magnitudes ≥ 2^53.
func (d *decoder) number() (n int64, ok bool, err error) {
	start := d.i
	if d.i < len(d.p) && d.p[d.i] == '-' {
		d.i++
	}
	digits := d.i
	for d.i < len(d.p) && d.p[d.i] >= '0' && d.p[d.i] <= '9' {
		d.i++
	}
	if d.i == digits {
		d.i = start
		return 0, false, d.skip()
	}
	if d.i < len(d.p) && (d.p[d.i] == '.' || d.p[d.i] == 'e' || d.p[d.i] == 'E') {
		d.i = start
		return 0, false, d.skip()
	}
	lit := d.p[start:d.i]
	if len(lit) > 1 && lit[0] == '0' || len(lit) > 2 && lit[0] == '-' && lit[1] == '0' {
		return 0, false, errSyntax // leading zeros are not JSON
	}
	if d.i-digits > 16 {
		return 0, false, nil
	}
	v, perr := strconv.ParseInt(string(lit), 10, 64)
	if perr != nil || v > maxSafeInt || v < -maxSafeInt {
		return 0, false, nil
	}
	return v, true, nil
}

// skip skips one JSON value of any type, checking its syntax.
func (d *decoder) skip() error {
	return d.skipDepth(0)
}

func (d *decoder) skipDepth(depth int) error {
	if depth > 32 {
		return errSyntax
	}
	d.ws()
	if d.i >= len(d.p) {
		return errSyntax
	}
	switch c := d.p[d.i]; {
	case c == '"':
		d.i++
		if !d.skipStringBody() {
			return errSyntax
		}
		return nil
	case c == '{' || c == '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		d.i++
		d.ws()
		if d.eat(closer) {
			return nil
		}
		for {
			if c == '{' {
				d.ws()
				if _, ok := d.rawKey(); !ok {
					return errSyntax
				}
				d.ws()
				if !d.eat(':') {
					return errSyntax
				}
			}
			if err := d.skipDepth(depth + 1); err != nil {
				return err
			}
			d.ws()
			if d.eat(',') {
				continue
			}
			if d.eat(closer) {
				return nil
			}
			return errSyntax
		}
	case c == 't':
		return d.lit("true")
	case c == 'f':
		return d.lit("false")
	case c == 'n':
		return d.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		if c == '-' {
			d.i++
		}
		start := d.i
		for d.i < len(d.p) && d.p[d.i] >= '0' && d.p[d.i] <= '9' {
			d.i++
		}
		if d.i == start || d.p[start] == '0' && d.i-start > 1 {
			return errSyntax // no digits, or a leading zero
		}
		if d.eat('.') {
			s := d.i
			for d.i < len(d.p) && d.p[d.i] >= '0' && d.p[d.i] <= '9' {
				d.i++
			}
			if d.i == s {
				return errSyntax
			}
		}
		if d.eat('e') || d.eat('E') {
			if !d.eat('+') {
				d.eat('-')
			}
			s := d.i
			for d.i < len(d.p) && d.p[d.i] >= '0' && d.p[d.i] <= '9' {
				d.i++
			}
			if d.i == s {
				return errSyntax
			}
		}
		return nil
	}
	return errSyntax
}

func (d *decoder) lit(s string) error {
	if len(d.p)-d.i >= len(s) && string(d.p[d.i:d.i+len(s)]) == s {
		d.i += len(s)
		return nil
	}
	return errSyntax
}
