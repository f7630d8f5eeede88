package chat

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/magpie-im/magpie/client"
)

// This file holds the pure pieces of the version 2 UI (PROTOCOL §13–§16):
// the text of group notes, presence and typing, and the parsing of the
// group commands. They take names through a func so tests need no client.

// maxListed is how many names a note lists before "and N more".
const maxListed = 10

// noteText is the transcript text of a group's membership or name change
// (a system message, §13), with uids resolved by name: "alice added bob,
// carol", "carol left; dave is now the owner".
func noteText(ev *client.GroupEvent, name func(int64) string) string {
	who := name(ev.Actor)
	switch ev.Event {
	case client.EventCreated:
		kind := "private"
		if ev.Public {
			kind = "public"
		}
		return fmt.Sprintf("%s created the %s group %s", who, kind, clean(ev.Name))
	case client.EventAdded:
		return who + " added " + nameList(ev.Members, name)
	case client.EventRemoved:
		return who + " removed " + nameList(ev.Members, name)
	case client.EventJoined:
		return who + " joined"
	case client.EventLeft:
		switch {
		case !ev.OwnerChanged:
			return who + " left"
		case ev.NewOwner == 0:
			return who + " left; the group is empty"
		}
		return fmt.Sprintf("%s left; %s is now the owner", who, name(ev.NewOwner))
	case client.EventRenamed:
		return who + " renamed the group to " + clean(ev.Name)
	}
	return fmt.Sprintf("%s changed the group (%s)", who, clean(ev.Event))
}

// nameList is "bob, carol" — at most maxListed names, then "and N more".
func nameList(uids []int64, name func(int64) string) string {
	if len(uids) == 0 {
		return "nobody"
	}
	n := min(len(uids), maxListed)
	names := make([]string, n)
	for i, uid := range uids[:n] {
		names[i] = name(uid)
	}
	s := strings.Join(names, ", ")
	if more := len(uids) - n; more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

// presenceText says whether a user is online, or when they were last
// (§16 last_seen), in the web UI's words: "online", "last seen just now",
// "last seen 5 min ago", "last seen today at 09:12", "last seen yesterday
// at 18:40", "last seen 2024-03-01"; "offline" when last_seen is unknown.
func presenceText(p client.Presence, now time.Time) string {
	if p.Online {
		return "online"
	}
	if p.LastSeen <= 0 {
		return "offline"
	}
	seen := time.UnixMilli(p.LastSeen).In(now.Location())
	d := now.Sub(seen)
	y, m, dd := now.Date()
	today := time.Date(y, m, dd, 0, 0, 0, 0, now.Location())
	switch {
	case d < time.Minute:
		return "last seen just now"
	case d < time.Hour:
		return fmt.Sprintf("last seen %d min ago", int(d/time.Minute))
	case !seen.Before(today):
		return "last seen today at " + seen.Format("15:04")
	case !seen.Before(today.AddDate(0, 0, -1)):
		return "last seen yesterday at " + seen.Format("15:04")
	}
	return "last seen " + seen.Format("2006-01-02")
}

// typingText is the status line's note about others typing in the open
// conversation: "bob is typing…", "bob and carol are typing…", "bob,
// carol and 2 more are typing…"; "" when nobody is.
func typingText(names []string) string {
	switch len(names) {
	case 0:
		return ""
	case 1:
		return names[0] + " is typing…"
	case 2:
		return names[0] + " and " + names[1] + " are typing…"
	}
	return fmt.Sprintf("%s, %s and %d more are typing…", names[0], names[1], len(names)-2)
}

// typingKey reports whether a key pressed on the line editor is typing a
// message: a printable key that leaves a line not beginning with "/" (a
// command is not a message). line and pos are the line and the cursor
// before the key, as x/term's AutoCompleteCallback gets them.
func typingKey(line string, pos int, key rune) bool {
	if !unicode.IsPrint(key) {
		return false // control keys; x/term's own key codes (arrows…) are surrogates
	}
	if pos == 0 {
		return key != '/'
	}
	return !strings.HasPrefix(line, "/")
}

// parseNames splits "bob, carol dave" or "@bob,@carol" into user names:
// separated by commas and spaces, a leading @ dropped, duplicates (without
// regard to case) and empty parts left out.
func parseNames(s string) []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }) {
		f = strings.TrimPrefix(f, "@")
		if f == "" || seen[strings.ToLower(f)] {
			continue
		}
		seen[strings.ToLower(f)] = true
		out = append(out, f)
	}
	return out
}

// createArgs is a parsed /create: [+public|+private] NAME [USER...],
// where NAME is one word or "a quoted name with spaces".
type createArgs struct {
	name   string
	public bool
	users  []string
}

func parseCreate(rest string) (createArgs, error) {
	var a createArgs
	rest = strings.TrimSpace(rest)
	for {
		switch word, tail, _ := strings.Cut(rest, " "); word {
		case "+public":
			a.public, rest = true, strings.TrimSpace(tail)
			continue
		case "+private":
			a.public, rest = false, strings.TrimSpace(tail)
			continue
		}
		break
	}
	if q, ok := strings.CutPrefix(rest, `"`); ok {
		name, tail, found := strings.Cut(q, `"`)
		if !found {
			return a, errors.New(`the group name has no closing quote: /create "Book club" bob`)
		}
		a.name, rest = name, tail
	} else {
		a.name, rest, _ = strings.Cut(rest, " ")
	}
	if err := checkGroupName(a.name); err != nil {
		return a, err
	}
	a.users = parseNames(rest)
	return a, nil
}

// checkGroupName applies PROTOCOL §4's bound on group names.
func checkGroupName(name string) error {
	if name == "" || len(name) > 64 {
		return errors.New("a group name is 1 to 64 bytes")
	}
	return nil
}

// groupRef is a group named in a command: by id ("7", "#7") or by name
// ("#Book club").
type groupRef struct {
	gid  int64
	name string
}

func parseGroupRef(s string) (groupRef, error) {
	s = strings.TrimSpace(s)
	name, hash := strings.CutPrefix(s, "#")
	if id, err := strconv.ParseInt(name, 10, 64); err == nil {
		if id <= 0 {
			return groupRef{}, fmt.Errorf("not a group id: %s", s)
		}
		return groupRef{gid: id}, nil
	}
	if !hash || name == "" {
		return groupRef{}, fmt.Errorf("not a group: %q (a group is #NAME or an id)", s)
	}
	return groupRef{name: name}, nil
}

// clean makes text from other users safe to print on a terminal: control
// characters other than newline and tab (escape sequences, carriage
// returns) become U+FFFD, so a message cannot move the cursor or rewrite
// the screen.
func clean(s string) string {
	bad := func(r rune) bool { return r != '\n' && r != '\t' && unicode.IsControl(r) }
	if strings.IndexFunc(s, bad) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if bad(r) {
			return '\uFFFD'
		}
		return r
	}, s)
}
