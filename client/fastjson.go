package client

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// frameKeys are the JSON names of inFrame's fields. encoding/json matches
// keys case-insensitively, so a key that folds to one of them but is not
// one of the exact keys handled below sends the frame to encoding/json.
var frameKeys = func() []string {
	var keys []string
	t := reflect.TypeFor[inFrame]()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		keys = append(keys, name)
	}
	return keys
}()

// ambiguousKey reports a key that encoding/json might map onto a field.
func ambiguousKey(key []byte) bool {
	for _, c := range key {
		if c >= utf8.RuneSelf {
			return true // encoding/json folds some non-ASCII letters (K, ſ)
		}
	}
	for _, k := range frameKeys {
		if len(k) == len(key) && strings.EqualFold(k, string(key)) {
			return true
		}
	}
	return false
}

// decodeMsg is the fast path for the most frequent frame, `msg`: a flat
// JSON object of strings and integers. It fills f and reports true only for
// a well-formed flat object whose type is "msg"; anything else (nested
// values, floats, other frame types, malformed input) returns false and
// the caller decodes with encoding/json, which stays the reference. Strings
// with escapes are decoded by encoding/json too (rare in conv, kind and
// cmid; correct for bodies). The conversation id and the kind are interned,
// so a push costs two string allocations (body and cmid) instead of nine.
func decodeMsg(data []byte, f *inFrame, in *interner) bool {
	*f = inFrame{}
	p := skipWS(data, 0)
	if p >= len(data) || data[p] != '{' {
		return false
	}
	p = skipWS(data, p+1)
	isMsg := false
	if p < len(data) && data[p] == '}' {
		return false
	}
	for {
		// key
		if p >= len(data) || data[p] != '"' {
			return false
		}
		kEnd, kEsc := scanString(data, p)
		if kEnd < 0 || kEsc {
			return false
		}
		key := data[p+1 : kEnd-1]
		switch string(key) {
		case "type", "conv", "kind", "body", "cmid", "seq", "from", "ts":
		default:
			if ambiguousKey(key) {
				return false
			}
		}
		p = skipWS(data, kEnd)
		if p >= len(data) || data[p] != ':' {
			return false
		}
		p = skipWS(data, p+1)
		if p >= len(data) {
			return false
		}
		switch c := data[p]; {
		case c == '"':
			end, esc := scanString(data, p)
			if end < 0 {
				return false
			}
			raw := data[p:end]
			p = end
			switch string(key) {
			case "type":
				if esc || string(raw[1:len(raw)-1]) != "msg" {
					return false
				}
				isMsg = true
				f.Type = "msg"
			case "conv":
				s, ok := decodeStr(raw, esc, in)
				if !ok {
					return false
				}
				f.Conv = s
			case "kind":
				s, ok := decodeStr(raw, esc, in)
				if !ok {
					return false
				}
				f.Kind = s
			case "body":
				s, ok := decodeStr(raw, esc, nil)
				if !ok {
					return false
				}
				f.Body = s
			case "cmid":
				s, ok := decodeStr(raw, esc, nil)
				if !ok {
					return false
				}
				f.CMID = s
			case "seq", "from", "ts":
				return false // a string where an integer belongs
			}
		case c == '-' || c >= '0' && c <= '9':
			end := p + 1
			for end < len(data) && (data[end] >= '0' && data[end] <= '9' || data[end] == '.' || data[end] == 'e' || data[end] == 'E' || data[end] == '+' || data[end] == '-') {
				end++
			}
			num := data[p:end]
			p = end
			var dst *int64
			switch string(key) {
			case "seq":
				dst = &f.Seq
			case "from":
				dst = &f.From
			case "ts":
				dst = &f.TS
			case "type", "conv", "kind", "body", "cmid":
				return false
			default:
				if !validNumber(num) {
					return false
				}
			}
			if dst != nil {
				if !jsonInt(num) {
					return false
				}
				n, err := strconv.ParseInt(string(num), 10, 64)
				if err != nil {
					return false // floats, exponents, overflow: leave it to encoding/json
				}
				*dst = n
			}
		case c == 't' && hasPrefixAt(data, p, "true"), c == 'n' && hasPrefixAt(data, p, "null"):
			switch string(key) {
			case "type", "conv", "kind", "body", "cmid", "seq", "from", "ts":
				return false
			}
			p += 4
		case c == 'f' && hasPrefixAt(data, p, "false"):
			switch string(key) {
			case "type", "conv", "kind", "body", "cmid", "seq", "from", "ts":
				return false
			}
			p += 5
		default:
			return false // nested object or array, or garbage
		}
		p = skipWS(data, p)
		if p >= len(data) {
			return false
		}
		if data[p] == '}' {
			return isMsg && skipWS(data, p+1) == len(data)
		}
		if data[p] != ',' {
			return false
		}
		p = skipWS(data, p+1)
	}
}

func hasPrefixAt(data []byte, p int, s string) bool {
	return len(data)-p >= len(s) && string(data[p:p+len(s)]) == s
}

// validNumber checks the JSON number grammar loosely enough for skipping an
// ignored field; encoding/json would accept exactly the valid ones.
func validNumber(b []byte) bool {
	return json.Valid(b)
}

// jsonInt reports whether b is a JSON integer: -?(0|[1-9][0-9]*).
func jsonInt(b []byte) bool {
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	}
	if len(b) == 0 || (b[0] == '0' && len(b) > 1) {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func skipWS(data []byte, p int) int {
	for p < len(data) {
		switch data[p] {
		case ' ', '\t', '\n', '\r':
			p++
		default:
			return p
		}
	}
	return p
}

// scanString returns the index after the closing quote of the string
// starting at data[p] == '"', and whether it contains escapes; -1 if it is
// unterminated or holds a raw control character.
func scanString(data []byte, p int) (int, bool) {
	esc := false
	for i := p + 1; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			return i + 1, esc
		case c == '\\':
			esc = true
			i++
			if i >= len(data) {
				return -1, false
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(data) || !isHex4(data[i+1:i+5]) {
					return -1, false
				}
				i += 4
			default:
				return -1, false // not a JSON escape
			}
		case c < 0x20:
			return -1, false
		}
	}
	return -1, false
}

// decodeStr decodes a quoted JSON string token.
func decodeStr(raw []byte, esc bool, in *interner) (string, bool) {
	if esc {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	}
	b := raw[1 : len(raw)-1]
	if !utf8.Valid(b) {
		return "", false // encoding/json substitutes U+FFFD; let it
	}
	if in != nil {
		return in.get(b), true
	}
	return string(b), true
}

// interner returns one shared string per distinct short value (conversation
// ids, kinds). It belongs to one reader goroutine; it is bounded and simply
// starts over when full.
type interner struct {
	m map[string]string
}

const internMax = 4096

func (in *interner) get(b []byte) string {
	if s, ok := in.m[string(b)]; ok { // no allocation for the lookup
		return s
	}
	if in.m == nil || len(in.m) >= internMax {
		in.m = make(map[string]string)
	}
	s := string(b)
	in.m[s] = s
	return s
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
