package chat

import (
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/client"
)

var testNames = map[int64]string{1: "alice", 2: "bob", 3: "carol", 4: "dave"}

func testName(uid int64) string {
	if n, ok := testNames[uid]; ok {
		return n
	}
	return "#" + strconv.FormatInt(uid, 10)
}

// sysMsg is a system message as a version 2 server stores it, decoded by
// the SDK's own parser, so the test follows the wire format.
func sysMsg(t *testing.T, from int64, body string) *client.GroupEvent {
	t.Helper()
	ev, ok := client.ParseGroupEvent(client.Message{Conv: "g:7", Seq: 3, From: from, Kind: "system", CMID: "sys:1", Body: body})
	if !ok {
		t.Fatalf("not a group event: %s", body)
	}
	return &ev
}

func TestNoteText(t *testing.T) {
	many := make([]int64, 0, 13)
	for i := int64(1); i <= 13; i++ {
		many = append(many, i)
	}
	for _, c := range []struct {
		from int64
		body string
		want string
	}{
		{1, `{"event":"created","name":"team","public":false,"count":3}`, "alice created the private group team"},
		{1, `{"event":"created","name":"Book club","public":true,"count":1}`, "alice created the public group Book club"},
		{1, `{"event":"added","members":[2,3]}`, "alice added bob, carol"},
		{1, `{"event":"added","members":[9]}`, "alice added #9"},
		{1, `{"event":"removed","members":[4]}`, "alice removed dave"},
		{2, `{"event":"joined"}`, "bob joined"},
		{3, `{"event":"left"}`, "carol left"},
		{3, `{"event":"left","owner":4}`, "carol left; dave is now the owner"},
		{3, `{"event":"left","owner":0}`, "carol left; the group is empty"},
		{1, `{"event":"renamed","name":"Readers"}`, "alice renamed the group to Readers"},
		{1, `{"event":"renamed","name":"a\u001b[2Jb"}`, "alice renamed the group to a\uFFFD[2Jb"},
		{2, `{"event":"archived"}`, "bob changed the group (archived)"},
	} {
		if got := noteText(sysMsg(t, c.from, c.body), testName); got != c.want {
			t.Errorf("%s: got %q, want %q", c.body, got, c.want)
		}
	}
	ev := &client.GroupEvent{Event: client.EventAdded, Actor: 1, Members: many}
	if got, want := noteText(ev, testName), "alice added alice, bob, carol, dave, #5, #6, #7, #8, #9, #10 and 3 more"; got != want {
		t.Errorf("long list: got %q, want %q", got, want)
	}
}

func TestPresenceText(t *testing.T) {
	now := time.Date(2025, 6, 10, 15, 30, 0, 0, time.Local)
	at := func(d time.Duration) int64 { return now.Add(-d).UnixMilli() }
	for _, c := range []struct {
		p    client.Presence
		want string
	}{
		{client.Presence{UID: 2, Online: true}, "online"},
		{client.Presence{UID: 2}, "offline"},
		{client.Presence{UID: 2, LastSeen: at(20 * time.Second)}, "last seen just now"},
		{client.Presence{UID: 2, LastSeen: at(-time.Minute)}, "last seen just now"}, // a clock ahead of ours
		{client.Presence{UID: 2, LastSeen: at(5*time.Minute + time.Second)}, "last seen 5 min ago"},
		{client.Presence{UID: 2, LastSeen: at(3 * time.Hour)}, "last seen today at 12:30"},
		{client.Presence{UID: 2, LastSeen: at(18 * time.Hour)}, "last seen yesterday at 21:30"},
		{client.Presence{UID: 2, LastSeen: at(50 * time.Hour)}, "last seen 2025-06-08"},
	} {
		if got := presenceText(c.p, now); got != c.want {
			t.Errorf("%+v: got %q, want %q", c.p, got, c.want)
		}
	}
}

func TestTypingText(t *testing.T) {
	for _, c := range []struct {
		names []string
		want  string
	}{
		{nil, ""},
		{[]string{"bob"}, "bob is typing…"},
		{[]string{"bob", "carol"}, "bob and carol are typing…"},
		{[]string{"bob", "carol", "dave", "eve"}, "bob, carol and 2 more are typing…"},
	} {
		if got := typingText(c.names); got != c.want {
			t.Errorf("%q: got %q, want %q", c.names, got, c.want)
		}
	}
}

func TestTypingKey(t *testing.T) {
	const keyUp = 0xd800 + 1 // x/term's key codes for arrows and the like are surrogates
	for _, c := range []struct {
		line string
		pos  int
		key  rune
		want bool
	}{
		{"", 0, 'h', true},
		{"hel", 3, 'l', true},
		{"", 0, ' ', true},
		{"", 0, 'é', true},
		{"", 0, '/', false},      // a command begins
		{"/open", 5, ' ', false}, // a command goes on
		{"/open", 0, 'x', true},  // the line no longer begins with "/"
		{"hi", 1, '/', true},
		{"hi", 2, '\t', false},
		{"hi", 2, 0x7f, false},
		{"hi", 2, 3, false}, // Ctrl-C
		{"hi", 2, keyUp, false},
	} {
		if got := typingKey(c.line, c.pos, c.key); got != c.want {
			t.Errorf("typingKey(%q, %d, %q) = %v, want %v", c.line, c.pos, c.key, got, c.want)
		}
	}
}

func TestParseNames(t *testing.T) {
	for in, want := range map[string][]string{
		"bob":                {"bob"},
		"bob,carol":          {"bob", "carol"},
		"bob, carol  dave":   {"bob", "carol", "dave"},
		"@bob,@carol, Bob,,": {"bob", "carol"},
		"  ":                 nil,
	} {
		if got := parseNames(in); !slices.Equal(got, want) {
			t.Errorf("parseNames(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCreate(t *testing.T) {
	for _, c := range []struct {
		in   string
		want createArgs
		err  string
	}{
		{in: "team bob carol", want: createArgs{name: "team", users: []string{"bob", "carol"}}},
		{in: "team", want: createArgs{name: "team"}},
		{in: "+public club bob,carol", want: createArgs{name: "club", public: true, users: []string{"bob", "carol"}}},
		{in: `+public "Book club" bob`, want: createArgs{name: "Book club", public: true, users: []string{"bob"}}},
		{in: `+public +private x`, want: createArgs{name: "x"}},
		{in: `"Book club`, err: "no closing quote"},
		{in: "", err: "1 to 64 bytes"},
		{in: "+public", err: "1 to 64 bytes"},
		{in: `""`, err: "1 to 64 bytes"},
		{in: strings.Repeat("x", 65), err: "1 to 64 bytes"},
	} {
		got, err := parseCreate(c.in)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("parseCreate(%q): error %v, want one saying %q", c.in, err, c.err)
			}
		case err != nil:
			t.Errorf("parseCreate(%q): %v", c.in, err)
		case got.name != c.want.name || got.public != c.want.public || !slices.Equal(got.users, c.want.users):
			t.Errorf("parseCreate(%q) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestParseGroupRef(t *testing.T) {
	for _, c := range []struct {
		in   string
		want groupRef
		bad  bool
	}{
		{in: "7", want: groupRef{gid: 7}},
		{in: "#7", want: groupRef{gid: 7}},
		{in: "#Book club", want: groupRef{name: "Book club"}},
		{in: " #lobby ", want: groupRef{name: "lobby"}},
		{in: "lobby", bad: true}, // a name needs its #: a bare word could be a typo of an id
		{in: "#", bad: true},
		{in: "0", bad: true},
		{in: "#-3", bad: true},
	} {
		got, err := parseGroupRef(c.in)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("parseGroupRef(%q) = %+v, %v", c.in, got, err)
		}
	}
}

func TestCleanAndShorten(t *testing.T) {
	if got := clean("hi\x1b[2J\rthere\n\tok\u009b"); got != "hi\uFFFD[2J\uFFFDthere\n\tok\uFFFD" {
		t.Errorf("clean: %q", got)
	}
	if got := shorten("ab€cd", 3); got != "ab…" { // € is 3 bytes: not cut in half
		t.Errorf("shorten: %q", got)
	}
	if got := shorten("abc", 3); got != "abc" {
		t.Errorf("shorten: %q", got)
	}
}

// TestStatusLine checks the status line's read mark and typing note from
// the events that drive them: convs, the user's own message, a receipt, a
// typing start and its end.
func TestStatusLine(t *testing.T) {
	u := &ui{me: 1, v2: true, names: testNames, groups: map[int64]string{7: "team"}, convs: map[string]*convState{},
		gmeta: map[int64]groupMeta{}, typers: map[string][]int64{}}
	u.state.State = client.StateOnline
	dm := client.DirectConv(1, 2)
	u.open, u.openPeer = dm, 2
	prompt := func() string {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.promptLocked()
	}
	want := func(p string) {
		t.Helper()
		if got := prompt(); got != p {
			t.Fatalf("status line %q, want %q", got, p)
		}
	}
	want("[online] @bob> ") // nothing of alice's yet
	u.mu.Lock()
	u.convsLocked(client.ConvList{Items: []client.Conv{{Conv: dm, Peer: 2, LastSeq: 4, ReadSeq: 4, PeerReadSeq: 3,
		Last: &client.Message{Conv: dm, Seq: 4, From: 1, TS: 1}}}}, 0)
	u.mu.Unlock()
	want("[online] @bob ✓> ")
	u.onReceipt(client.Receipt{Conv: dm, UID: 2, Seq: 4})
	want("[online] @bob ✓✓> ")
	u.onReceipt(client.Receipt{Conv: "g:7", UID: 2, Seq: 9}) // groups: no mark
	u.onTyping(client.TypingEvent{Conv: dm, UID: 2, Typing: true})
	want("[online] @bob ✓✓, bob is typing…> ")
	u.onTyping(client.TypingEvent{Conv: "g:7", UID: 3, Typing: true}) // not the open conversation
	want("[online] @bob ✓✓, bob is typing…> ")
	u.onTyping(client.TypingEvent{Conv: dm, UID: 2, Typing: false}) // expired, or bob's message came
	want("[online] @bob ✓✓> ")

	// A version 1 server tells nothing of the peer's reads: no mark.
	u.v2 = false
	want("[online] @bob> ")
	u.v2 = true

	// In a group: several typists, no read mark; group receipts change nothing.
	u.open, u.openPeer, u.openGID = "g:7", 0, 7
	u.onTyping(client.TypingEvent{Conv: "g:7", UID: 2, Typing: true})
	want("[online] #team, bob and carol are typing…> ")
}

// TestGroupEvents checks what the notes do besides printing: the group's
// name follows a rename, the owner follows the owner's leaving, and a
// group the user left or was removed from stops counting unread and is
// closed if open.
func TestGroupEvents(t *testing.T) {
	c, err := client.New(client.Options{Server: "http://127.0.0.1:1", Username: "carol", Password: "password"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Never connected: the marks of what is shown fail quietly to io.Discard.
	u := &ui{c: c, out: io.Discard, me: 3, v2: true, names: testNames, groups: map[int64]string{7: "old"},
		convs: map[string]*convState{}, gmeta: map[int64]groupMeta{}, typers: map[string][]int64{}}
	u.state.State = client.StateOnline
	n := int64(0)
	deliver := func(from int64, body string) {
		n++
		u.onMessage(client.Message{Conv: "g:7", Seq: n, From: from, TS: 1, Kind: "system", CMID: "sys:" + strconv.FormatInt(n, 10),
			Body: body, Event: sysMsg(t, from, body)})
	}
	deliver(1, `{"event":"created","name":"team","public":true,"count":3}`)
	if u.groups[7] != "team" || u.gmeta[7] != (groupMeta{owner: 1, public: true}) {
		t.Fatalf("after created: name %q, meta %+v", u.groups[7], u.gmeta[7])
	}
	deliver(1, `{"event":"renamed","name":"Readers"}`)
	deliver(1, `{"event":"left","owner":2}`)
	u.mu.Lock()
	if u.groups[7] != "Readers" || u.gmeta[7].owner != 2 || u.unreadLocked("g:7") != 3 {
		t.Fatalf("after renamed and left: name %q, meta %+v, unread %d", u.groups[7], u.gmeta[7], u.unreadLocked("g:7"))
	}
	u.open, u.openGID = "g:7", 7
	u.mu.Unlock()
	deliver(2, `{"event":"removed","members":[3]}`)
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.unreadLocked("g:7") != 0 || u.open != "" {
		t.Fatalf("a group the user was removed from: %d unread, open %q", u.unreadLocked("g:7"), u.open)
	}
	if p := u.promptLocked(); p != "[online] -> " {
		t.Fatalf("status line %q", p)
	}
}

// TestConvsForgetsGroupsLeft: every group the user is in is in `convs`
// (PROTOCOL §4), so one missing was left meanwhile (removed while
// offline) — unless a message of it arrived after the request went out,
// which says more recently that the user is in it.
func TestConvsForgetsGroupsLeft(t *testing.T) {
	u := &ui{me: 1, v2: true, names: testNames, groups: map[int64]string{7: "team", 8: "club"}, convs: map[string]*convState{},
		gmeta: map[int64]groupMeta{}, typers: map[string][]int64{}}
	u.convs["g:7"] = &convState{last: 5, read: 2}
	u.convs["g:8"] = &convState{last: 5, read: 2, epoch: 4} // a message came after the request (epoch 3)
	u.open, u.openGID = "g:7", 7
	u.convsLocked(client.ConvList{Items: []client.Conv{{Conv: "d:1:2", Peer: 2, LastSeq: 1, ReadSeq: 1}}}, 3)
	if u.unreadLocked("g:7") != 0 || u.open != "" {
		t.Errorf("a group no longer listed: %d unread, open %q", u.unreadLocked("g:7"), u.open)
	}
	if u.unreadLocked("g:8") != 3 {
		t.Errorf("a group with a message newer than the request: %d unread, want 3", u.unreadLocked("g:8"))
	}
	u.convsLocked(client.ConvList{Items: []client.Conv{{Conv: "g:7", Group: 7, Name: "team", LastSeq: 6, ReadSeq: 2}}}, 4)
	if u.unreadLocked("g:7") != 4 {
		t.Errorf("a group listed again: %d unread, want 4", u.unreadLocked("g:7"))
	}
}
