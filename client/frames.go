package client

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Message is one stored message (the MSG object of PROTOCOL §4).
type Message struct {
	Conv string `json:"conv"` // "d:a:b" or "g:gid"
	Seq  int64  `json:"seq"`  // gapless per conversation, from 1
	From int64  `json:"from"` // sender uid, bound by the server
	TS   int64  `json:"ts"`   // store time, Unix milliseconds
	Kind string `json:"kind"` // "text" unless the sender chose another
	Body string `json:"body"`
	CMID string `json:"cmid"` // the sender's idempotency key

	// Event is the decoded body of a system message (kind "system", cmid
	// "sys:…") from a version 2 server: a group's membership or name
	// change (PROTOCOL §13). Nil for every other message, and for every
	// message from a version 1 server, where any client could send kind
	// "system". Body always keeps the text as stored.
	Event *GroupEvent `json:"-"`
}

// inFrame is every server frame decoded into one struct; unknown fields are
// ignored and absent ones stay zero.
type inFrame struct {
	Type    string `json:"type"`
	RID     string `json:"rid"`
	CMID    string `json:"cmid"`
	Conv    string `json:"conv"`
	Seq     int64  `json:"seq"`
	From    int64  `json:"from"`
	TS      int64  `json:"ts"`
	Kind    string `json:"kind"`
	Body    string `json:"body"`
	Code    string `json:"code"`
	Message string `json:"message"`

	// welcome
	Version       int   `json:"version"`
	UID           int64 `json:"uid"`
	HeartbeatMS   int64 `json:"heartbeat_ms"`
	IdleTimeoutMS int64 `json:"idle_timeout_ms"`
	AckTimeoutMS  int64 `json:"ack_timeout_ms"`
	SendRate      int   `json:"send_rate"`
	MaxBody       int   `json:"max_body"`
	ServerTime    int64 `json:"server_time"`
	// Extensions (docs/PROTOCOL.md): absent from older servers.
	AckDelayMS  *int64 `json:"ack_delay_ms"`
	MaxInflight int    `json:"max_inflight"`

	// convs, presence, receipts: each has its own item shape, decoded by
	// the handler of the frame type (convItems, presenceItems, readItems).
	Items       json.RawMessage `json:"items"`
	TotalUnread int64           `json:"total_unread"`
	Unread      int64           `json:"unread"`

	// history
	Messages []Message `json:"messages"`
	More     bool      `json:"more"`

	// group
	Group   int64   `json:"group"`
	Name    string  `json:"name"`
	Count   int     `json:"count"`
	Members []int64 `json:"members"`
	Public  bool    `json:"public"` // version 2
	Owner   int64   `json:"owner"`  // version 2
}

func (f *inFrame) message() Message {
	return Message{Conv: f.Conv, Seq: f.Seq, From: f.From, TS: f.TS, Kind: f.Kind, Body: f.Body, CMID: f.CMID}
}

func (f *inFrame) err() *Error { return &Error{Code: f.Code, Message: f.Message} }

// convItems decodes the items of a `convs` frame.
func (f *inFrame) convItems() ([]Conv, error) {
	var items []Conv
	if len(f.Items) == 0 || string(f.Items) == "null" {
		return nil, nil
	}
	if err := json.Unmarshal(f.Items, &items); err != nil {
		return nil, fmt.Errorf("magpie: bad convs items: %w", err)
	}
	return items, nil
}

type sendFrame struct {
	Type  string `json:"type"`
	CMID  string `json:"cmid"`
	To    int64  `json:"to,omitempty"`
	Group int64  `json:"group,omitempty"`
	Body  string `json:"body"`
	Kind  string `json:"kind,omitempty"`
}

type historyFrame struct {
	Type   string `json:"type"`
	RID    string `json:"rid"`
	Conv   string `json:"conv"`
	After  *int64 `json:"after,omitempty"`
	Before *int64 `json:"before,omitempty"`
	Limit  int    `json:"limit,omitempty"`
}

type reqFrame struct {
	Type    string  `json:"type"`
	RID     string  `json:"rid,omitempty"`
	Conv    string  `json:"conv,omitempty"`
	Seq     int64   `json:"seq,omitempty"`
	Group   int64   `json:"group,omitempty"`
	Name    string  `json:"name,omitempty"`
	Members []int64 `json:"members,omitempty"`
	Public  bool    `json:"public,omitempty"`
	After   *int64  `json:"after,omitempty"`
	Limit   int     `json:"limit,omitempty"`
	Token   string  `json:"token,omitempty"`
	Device  string  `json:"device,omitempty"`
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("magpie: encoding a frame: " + err.Error()) // only plain structs: cannot fail
	}
	return b
}

var pingFrame = []byte(`{"type":"ping"}`)

// appendAck appends {"type":"ack","conv":…,"seq":…} without reflection: acks
// are the client's most frequent frame.
func appendAck(b []byte, conv string, seq int64) []byte {
	b = append(b, `{"type":"ack","conv":`...)
	b = appendJSONString(b, conv)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string. Conversation ids are ASCII,
// but anything else is escaped correctly too.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
