package client

import (
	"encoding/json"
	"strings"
)

// Events of group system messages (PROTOCOL §13).
const (
	EventCreated = "created" // Name, Public, Count
	EventAdded   = "added"   // Members: the new members
	EventJoined  = "joined"  // Actor joined a public group
	EventLeft    = "left"    // Actor left; OwnerChanged/NewOwner when the owner left
	EventRemoved = "removed" // Members: the former members
	EventRenamed = "renamed" // Name: the new name
)

// GroupEvent is a group's membership or name change, decoded from the
// system message a version 2 server stores for it (PROTOCOL §13). It
// reaches the application twice: as Message.Event of the message handed to
// Options.OnMessage, and through Options.OnGroupEvent right after it.
//
// Event may be a name this SDK does not know (a later protocol version):
// then only Event and the position fields are set, and the message's Body
// holds the text as stored. Applications ignore events they do not know.
type GroupEvent struct {
	Conv  string // "g:<gid>"
	Group int64
	Seq   int64 // the system message's seq
	TS    int64 // its store time, Unix milliseconds
	Actor int64 // who made the change: the message's From

	Event   string  // EventCreated, EventAdded, … or an unknown name
	Name    string  // created, renamed
	Public  bool    // created
	Count   int     // created: members after the creation
	Members []int64 // added (new members), removed (former members); ascending
	// OwnerChanged is set by a "left" event of the owner: NewOwner (0 when
	// the group is now empty) took over.
	OwnerChanged bool
	NewOwner     int64
}

// Affects reports whether uid is the user the event puts into or takes out
// of the group: named in added or removed, or the actor of joined or left.
func (e *GroupEvent) Affects(uid int64) bool {
	switch e.Event {
	case EventAdded, EventRemoved:
		for _, m := range e.Members {
			if m == uid {
				return true
			}
		}
	case EventJoined, EventLeft:
		return e.Actor == uid
	}
	return false
}

// IsSystem reports whether m has the shape of a server-made system message:
// kind "system" and a cmid beginning with "sys:". Only a version 2 server
// guarantees that no client sent it; the Client decodes Event only there.
func IsSystem(m Message) bool {
	return m.Kind == "system" && strings.HasPrefix(m.CMID, "sys:")
}

// ParseGroupEvent decodes a system message of a group conversation. ok is
// false for any other message and for a body that is not a JSON object
// with a string "event". It does not know which server the message came
// from: messages a Client hands out carry Event already, decoded only for
// version 2 servers.
func ParseGroupEvent(m Message) (ev GroupEvent, ok bool) {
	if p := decodeGroupEvent(&m); p != nil {
		return *p, true
	}
	return GroupEvent{}, false
}

// decodeGroupEvent returns m's event, or nil. It costs a string compare
// for ordinary messages.
func decodeGroupEvent(m *Message) *GroupEvent {
	if !IsSystem(*m) {
		return nil
	}
	_, _, gid, ok := ParseConv(m.Conv)
	if !ok || gid == 0 {
		return nil
	}
	var b struct {
		Event   *string `json:"event"`
		Name    string  `json:"name"`
		Public  bool    `json:"public"`
		Count   int     `json:"count"`
		Members []int64 `json:"members"`
		Owner   *int64  `json:"owner"`
	}
	if err := json.Unmarshal([]byte(m.Body), &b); err != nil || b.Event == nil || *b.Event == "" {
		return nil
	}
	ev := &GroupEvent{Conv: m.Conv, Group: gid, Seq: m.Seq, TS: m.TS, Actor: m.From, Event: *b.Event}
	switch ev.Event {
	case EventCreated:
		ev.Name, ev.Public, ev.Count = b.Name, b.Public, b.Count
	case EventAdded, EventRemoved:
		ev.Members = b.Members
	case EventRenamed:
		ev.Name = b.Name
	case EventLeft:
		if b.Owner != nil {
			ev.OwnerChanged, ev.NewOwner = true, *b.Owner
		}
	}
	return ev
}
