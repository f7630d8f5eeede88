package server

// Frame encoding. Every function here is pure over its arguments and safe
// from any goroutine; a frameBuf belongs to whoever holds it (the loop's
// reply scratch: REQUIRES: owning event loop).

import (
	"strconv"
	"unicode/utf8"

	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wsproto"
)

// frameBuf builds one server text frame: the JSON payload is appended after
// a reserved header gap, and finish() writes the header just before it, so
// a frame is built with one buffer and written with one call.
type frameBuf struct {
	b []byte
}

const hdrGap = wsproto.MaxHeaderSize

// start resets the buffer for a new frame and returns it for appending.
func (f *frameBuf) start() []byte {
	if cap(f.b) < hdrGap+256 {
		f.b = make([]byte, hdrGap, 4096)
	}
	return f.b[:hdrGap]
}

// finish frames payload (which must be the result of appending to start())
// and returns the whole frame; valid until the next start.
func (f *frameBuf) finish(payload []byte) []byte {
	f.b = payload[:0]
	n := len(payload) - hdrGap
	var hdr [wsproto.MaxHeaderSize]byte
	h := wsproto.PutHeader(&hdr, wsproto.OpText, n)
	copy(payload[hdrGap-h:hdrGap], hdr[:h])
	return payload[hdrGap-h:]
}

// textFrame returns a fresh, independently owned frame for payload.
func textFrame(payload []byte) []byte {
	return wsproto.AppendFrame(make([]byte, 0, len(payload)+wsproto.MaxHeaderSize), wsproto.OpText, payload)
}

const hexDigits = "0123456789abcdef"

// appendStr appends s as a JSON string. s must be valid UTF-8 (every string
// Magpie emits came from a validated frame or from the store).
func appendStr(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == '\u2028' || r == '\u2029' || r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				if r == utf8.RuneError {
					dst = append(dst, `\ufffd`...)
				} else {
					dst = append(dst, `\u202`...)
					dst = append(dst, hexDigits[r&0xF])
				}
				i += size
				start = i
				continue
			}
			i += size
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendBytesStr(dst, s []byte) []byte {
	// Converting in the call does not allocate: appendStr does not retain s.
	return appendStr(dst, string(s))
}

func appendUint(dst []byte, v uint64) []byte { return strconv.AppendUint(dst, v, 10) }

func appendKeyUint(dst []byte, key string, v uint64) []byte {
	dst = append(dst, key...)
	return strconv.AppendUint(dst, v, 10)
}

// appendRID appends `,"rid":"…"` when rid is set.
func appendRID(dst, rid []byte) []byte {
	if len(rid) == 0 {
		return dst
	}
	dst = append(dst, `,"rid":`...)
	return appendBytesStr(dst, rid)
}

// appendMsgFields appends the fields of MSG without braces.
func appendMsgFields(dst []byte, m *storage.Message) []byte {
	dst = append(dst, `"conv":`...)
	dst = appendStr(dst, m.Conv)
	dst = appendKeyUint(dst, `,"seq":`, m.Seq)
	dst = appendKeyUint(dst, `,"from":`, m.From)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, m.TS, 10)
	dst = append(dst, `,"kind":`...)
	kind := m.Kind
	if kind == "" {
		kind = "text"
	}
	dst = appendStr(dst, kind)
	dst = append(dst, `,"body":`...)
	dst = appendStr(dst, m.Body)
	dst = append(dst, `,"cmid":`...)
	return appendStr(dst, m.CMID)
}

// encodeMsgFrame returns the complete `msg` frame for m, encoded once per
// message and shared read-only by every recipient.
func encodeMsgFrame(m *storage.Message) []byte {
	p := make([]byte, hdrGap, hdrGap+96+len(m.Body)+len(m.Conv)+len(m.CMID)+len(m.Kind))
	p = append(p, `{"type":"msg",`...)
	p = appendMsgFields(p, m)
	p = append(p, '}')
	var fb frameBuf
	return fb.finish(p)
}

func appendSent(dst, rid []byte, m *storage.Message) []byte {
	dst = append(dst, `{"type":"sent"`...)
	dst = appendRID(dst, rid)
	dst = append(dst, `,"cmid":`...)
	dst = appendStr(dst, m.CMID)
	dst = append(dst, `,"conv":`...)
	dst = appendStr(dst, m.Conv)
	dst = appendKeyUint(dst, `,"seq":`, m.Seq)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, m.TS, 10)
	return append(dst, '}')
}

func appendError(dst []byte, rid []byte, cmid string, code storage.Code, msg string) []byte {
	dst = append(dst, `{"type":"error"`...)
	dst = appendRID(dst, rid)
	if cmid != "" {
		dst = append(dst, `,"cmid":`...)
		dst = appendStr(dst, cmid)
	}
	dst = append(dst, `,"code":`...)
	dst = appendStr(dst, string(code))
	dst = append(dst, `,"message":`...)
	dst = appendStr(dst, msg)
	return append(dst, '}')
}

func appendPong(dst, rid []byte) []byte {
	dst = append(dst, `{"type":"pong"`...)
	dst = appendRID(dst, rid)
	return append(dst, '}')
}

func appendRead(dst, rid []byte, conv string, seq, unread, total uint64) []byte {
	dst = append(dst, `{"type":"read"`...)
	dst = appendRID(dst, rid)
	dst = append(dst, `,"conv":`...)
	dst = appendStr(dst, conv)
	dst = appendKeyUint(dst, `,"seq":`, seq)
	dst = appendKeyUint(dst, `,"unread":`, unread)
	dst = appendKeyUint(dst, `,"total_unread":`, total)
	return append(dst, '}')
}

func appendConvs(dst, rid []byte, items []storage.ConvItem, total uint64) []byte {
	dst = append(dst, `{"type":"convs"`...)
	dst = appendRID(dst, rid)
	dst = append(dst, `,"items":[`...)
	for i := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendConvItem(dst, &items[i])
	}
	dst = append(dst, ']')
	dst = appendKeyUint(dst, `,"total_unread":`, total)
	return append(dst, '}')
}

// appendConvItem encodes one item of a convs reply.
func appendConvItem(dst []byte, it *storage.ConvItem) []byte {
	dst = append(dst, `{"conv":`...)
	dst = appendStr(dst, it.Conv)
	if it.Group != 0 {
		dst = appendKeyUint(dst, `,"group":`, it.Group)
		dst = append(dst, `,"name":`...)
		dst = appendStr(dst, it.Name)
		dst = appendGroupV2(dst, it.Public, it.Owner)
	} else {
		dst = appendKeyUint(dst, `,"peer":`, it.Peer)
		dst = appendKeyUint(dst, `,"peer_read_seq":`, it.PeerReadSeq) // PROTOCOL §14
	}
	dst = appendKeyUint(dst, `,"last_seq":`, it.LastSeq)
	dst = appendKeyUint(dst, `,"read_seq":`, it.ReadSeq)
	dst = appendKeyUint(dst, `,"unread":`, it.Unread)
	if it.Last != nil {
		dst = append(dst, `,"last":{`...)
		dst = appendMsgFields(dst, it.Last)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func appendHistory(dst, rid []byte, conv string, msgs []storage.Message, more bool) []byte {
	dst = append(dst, `{"type":"history"`...)
	dst = appendRID(dst, rid)
	dst = append(dst, `,"conv":`...)
	dst = appendStr(dst, conv)
	dst = append(dst, `,"messages":[`...)
	for i := range msgs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '{')
		dst = appendMsgFields(dst, &msgs[i])
		dst = append(dst, '}')
	}
	dst = append(dst, `],"more":`...)
	dst = strconv.AppendBool(dst, more)
	return append(dst, '}')
}

func appendGroup(dst, rid []byte, g *storage.GroupInfo, list bool) []byte {
	dst = append(dst, `{"type":"group"`...)
	dst = appendRID(dst, rid)
	dst = appendKeyUint(dst, `,"group":`, g.ID)
	dst = append(dst, `,"name":`...)
	dst = appendStr(dst, g.Name)
	dst = appendKeyUint(dst, `,"count":`, uint64(g.Count))
	dst = appendGroupV2(dst, g.Public, g.Owner)
	if list {
		dst = append(dst, `,"members":[`...)
		for i, u := range g.Members {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendUint(dst, u)
		}
		dst = append(dst, `],"more":`...)
		dst = strconv.AppendBool(dst, g.More)
	}
	return append(dst, '}')
}

// Frames of PROTOCOL §14–§16: receipts, typing, presence.

// appendReceipt appends a receipt push: uid read conv up to seq.
func appendReceipt(dst []byte, conv string, uid, seq uint64) []byte {
	dst = append(dst, `{"type":"receipt","conv":`...)
	dst = appendStr(dst, conv)
	dst = appendKeyUint(dst, `,"uid":`, uid)
	dst = appendKeyUint(dst, `,"seq":`, seq)
	return append(dst, '}')
}

// appendReceipts appends the reply to a receipts request.
func appendReceipts(dst, rid []byte, conv string, items []storage.ReadState) []byte {
	dst = append(dst, `{"type":"receipts"`...)
	dst = appendRID(dst, rid)
	dst = append(dst, `,"conv":`...)
	dst = appendStr(dst, conv)
	dst = append(dst, `,"items":[`...)
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendKeyUint(dst, `{"uid":`, it.UID)
		dst = appendKeyUint(dst, `,"read_seq":`, it.ReadSeq)
		dst = append(dst, '}')
	}
	return append(dst, `]}`...)
}

// appendTyping appends a forwarded typing frame.
func appendTyping(dst []byte, conv string, uid uint64) []byte {
	dst = append(dst, `{"type":"typing","conv":`...)
	dst = appendStr(dst, conv)
	dst = appendKeyUint(dst, `,"uid":`, uid)
	return append(dst, '}')
}

// presenceItem is one user's state in a presence frame.
type presenceItem struct {
	uid      uint64
	online   bool
	lastSeen int64 // Unix ms; 0 while online or when not known
}

// appendPresence appends a presence frame: the reply to presence_sub (with
// its rid, when it had one) or a push (rid nil).
func appendPresence(dst, rid []byte, items []presenceItem) []byte {
	dst = append(dst, `{"type":"presence"`...)
	dst = appendRID(dst, rid)
	dst = append(dst, `,"items":[`...)
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendKeyUint(dst, `{"uid":`, it.uid)
		dst = append(dst, `,"online":`...)
		dst = strconv.AppendBool(dst, it.online)
		dst = append(dst, `,"last_seen":`...)
		dst = strconv.AppendInt(dst, max(it.lastSeen, 0), 10)
		dst = append(dst, '}')
	}
	return append(dst, `]}`...)
}

// appendGroupV2 appends the fields every group reply and every group item
// of convs carry (PROTOCOL §13).
func appendGroupV2(dst []byte, public bool, owner uint64) []byte {
	dst = append(dst, `,"public":`...)
	dst = strconv.AppendBool(dst, public)
	return appendKeyUint(dst, `,"owner":`, owner)
}
