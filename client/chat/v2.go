package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/magpie-im/magpie/client"
)

// This file is the version 2 part of the terminal client (PROTOCOL
// §13–§16): group notes and the group commands, read marks, typing and
// presence. On a version 1 server none of it sends anything new: the SDK
// decodes no system messages there, the status line shows no read marks,
// typing and presence are not asked for, and the group commands that v1
// does not know come back as bad_request, shown as such.

// groupEventLocked applies a group's system message (already printed) to
// what the UI knows of the group: its name, owner and visibility, and
// whether the user is still in it.
func (u *ui) groupEventLocked(cs *convState, ev *client.GroupEvent) {
	meta := u.gmeta[ev.Group]
	switch ev.Event {
	case client.EventCreated:
		meta = groupMeta{owner: ev.Actor, public: ev.Public}
	case client.EventRenamed:
		u.groups[ev.Group] = ev.Name
	case client.EventLeft:
		if ev.OwnerChanged {
			meta.owner = ev.NewOwner
		}
	}
	u.gmeta[ev.Group] = meta
	gone := ev.Affects(u.me) && (ev.Event == client.EventLeft || ev.Event == client.EventRemoved)
	cs.left = gone // any other message of the group is pushed to members only
	if gone && u.open == ev.Conv {
		u.open, u.openPeer, u.openGID = "", 0, 0
	}
}

// readMarkLocked is the status line's read mark for a direct conversation
// (§14): ✓ while the peer has not read the user's last message there, ✓✓
// once they have. Empty in groups, before the user's first message, and
// on a version 1 server, which does not tell.
func (u *ui) readMarkLocked(conv string) string {
	cs := u.convs[conv]
	if _, _, gid, _ := client.ParseConv(conv); !u.v2 || gid != 0 || cs == nil || cs.mine == 0 {
		return ""
	}
	if cs.peerRead >= cs.mine {
		return "✓✓"
	}
	return "✓"
}

func (u *ui) onReceipt(r client.Receipt) {
	if _, _, gid, ok := client.ParseConv(r.Conv); !ok || gid != 0 {
		return // group receipts: the terminal shows read marks in direct conversations only
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	cs := u.conv(r.Conv)
	cs.peerRead = max(cs.peerRead, r.Seq)
	if r.Conv == u.open {
		u.refreshLocked()
	}
}

// typingLocked is the status line's typing note for conv.
func (u *ui) typingLocked(conv string) string {
	uids := u.typers[conv]
	names := make([]string, len(uids))
	for i, uid := range uids {
		names[i] = u.nameLocked(uid)
	}
	return typingText(names)
}

// onTyping keeps who types where. The SDK reports an indicator's start and
// its end: TypingExpiry after the last typing frame, or the typist's
// message.
func (u *ui) onTyping(e client.TypingEvent) {
	u.mu.Lock()
	defer u.mu.Unlock()
	uids := slices.DeleteFunc(u.typers[e.Conv], func(x int64) bool { return x == e.UID })
	if e.Typing {
		uids = append(uids, e.UID)
		slices.Sort(uids)
	}
	if len(uids) == 0 {
		delete(u.typers, e.Conv)
	} else {
		u.typers[e.Conv] = uids
	}
	if e.Conv == u.open {
		u.refreshLocked()
	}
}

// typed runs for each key of a message typed into the line editor: the
// SDK sends a typing frame for the open conversation at most once per
// Options.TypingInterval however often it is called.
func (u *ui) typed() {
	u.mu.Lock()
	conv := u.open
	ok := u.v2 && conv != "" && (u.convs[conv] == nil || !u.convs[conv].left)
	u.mu.Unlock()
	if ok {
		_ = u.c.Typing(conv) // offline: nothing to tell anyone
	}
}

// syncPresence subscribes to the presence (§16) of the peers of the
// newest direct conversations, up to the protocol's 1000, and of the open
// one. It asks only when that list changed; the SDK renews the
// subscription after every reconnect by itself and keeps the latest
// state, which the UI reads with Client.Presence when it prints.
func (u *ui) syncPresence(ctx context.Context) {
	u.mu.Lock()
	if !u.v2 {
		u.mu.Unlock()
		return
	}
	want := u.presenceWantLocked()
	if slices.Equal(want, u.presSub) {
		u.mu.Unlock()
		return
	}
	u.presSub = want
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := u.c.SubscribePresence(ctx, want); err != nil {
		u.mu.Lock()
		if slices.Equal(u.presSub, want) {
			u.presSub = nil // ask again next time
		}
		u.mu.Unlock()
	}
}

func (u *ui) presenceWantLocked() []int64 {
	type peer struct{ uid, ts int64 }
	var peers []peer
	for conv, cs := range u.convs {
		if a, b, gid, ok := client.ParseConv(conv); ok && gid == 0 {
			p := a
			if a == u.me {
				p = b
			}
			peers = append(peers, peer{p, cs.ts})
		}
	}
	sort.Slice(peers, func(i, j int) bool {
		if peers[i].ts != peers[j].ts {
			return peers[i].ts > peers[j].ts
		}
		return peers[i].uid < peers[j].uid
	})
	want := []int64{}
	if u.openPeer != 0 {
		want = append(want, u.openPeer)
	}
	for _, p := range peers {
		if len(want) == client.MaxPresenceSub {
			break
		}
		if p.uid != u.openPeer {
			want = append(want, p.uid)
		}
	}
	slices.Sort(want)
	return want
}

// presenceLocked is "online" or "last seen …" for a subscribed user; ""
// when not known (a version 1 server, or not subscribed yet).
func (u *ui) presenceLocked(uid int64) string {
	if !u.v2 {
		return ""
	}
	p, ok := u.c.Presence(uid)
	if !ok {
		return ""
	}
	return presenceText(p, time.Now())
}

// openGroup is the group of the open conversation, or 0 after telling the
// user to open one for cmd.
func (u *ui) openGroup(cmd string) int64 {
	u.mu.Lock()
	gid := u.openGID
	u.mu.Unlock()
	if gid == 0 {
		u.printf("%s works on the open group: /open #GROUP first", cmd)
	}
	return gid
}

// groupLabelLocked is "#name" of a group, or "group N" when its name is
// not known.
func (u *ui) groupLabelLocked(gid int64) string {
	if n := u.groups[gid]; n != "" {
		return "#" + clean(n)
	}
	return fmt.Sprintf("group %d", gid)
}

// resolveGroup finds the group a command names: an id, or the name of a
// group this UI knows (yours, and those seen in this session).
func (u *ui) resolveGroup(ctx context.Context, arg string) (int64, bool) {
	ref, err := parseGroupRef(arg)
	if err != nil {
		u.printf("%v", err)
		return 0, false
	}
	if ref.gid != 0 {
		return ref.gid, true
	}
	u.mu.Lock()
	gid, amb := pick(u.groups, ref.name)
	u.mu.Unlock()
	if gid == 0 && len(amb) == 0 {
		u.cmdConvsQuiet(ctx)
		u.mu.Lock()
		gid, amb = pick(u.groups, ref.name)
		u.mu.Unlock()
	}
	switch {
	case len(amb) > 0:
		u.printf("#%s matches %d groups: #%s; type more of the name", ref.name, len(amb), strings.Join(amb, ", #"))
	case gid == 0:
		u.printf("no group named %s known here: use its id (/convs and /members show ids)", ref.name)
	}
	return gid, gid != 0
}

// resolveUsers looks up the users named in a command.
func (u *ui) resolveUsers(ctx context.Context, cmd string, names []string) ([]int64, bool) {
	uids := make([]int64, 0, len(names))
	for _, n := range names {
		uid, amb, err := u.lookupUser(ctx, n)
		if len(amb) > 0 {
			err = fmt.Errorf("%q matches %s; type more of the name", n, strings.Join(amb, ", "))
		}
		if err != nil {
			u.fail(cmd, err)
			return nil, false
		}
		uids = append(uids, uid)
	}
	return uids, true
}

// groupReplyLocked keeps what a group reply says of the group. A rename
// leaves the name to its note, so that the note is printed under the old
// name whichever of the two arrives first.
func (u *ui) groupReplyLocked(g client.Group, rename bool) {
	if g.Name != "" && !rename {
		u.groups[g.ID] = g.Name
	}
	if u.v2 {
		u.gmeta[g.ID] = groupMeta{owner: g.Owner, public: g.Public}
	}
}

// groupFail explains a failed group command: the protocol's codes in the
// words of the command (PROTOCOL §4, §13).
func (u *ui) groupFail(cmd string, gid int64, err error) {
	var e *client.Error
	if !errors.As(err, &e) {
		u.fail(cmd, err)
		return
	}
	u.mu.Lock()
	label := u.groupLabelLocked(gid)
	owner := ""
	if o := u.gmeta[gid].owner; o != 0 {
		owner = " (" + u.nameLocked(o) + ")"
	}
	v2 := u.v2
	u.mu.Unlock()
	switch {
	case e.Code == client.CodeForbidden && cmd == "join":
		u.printf("join: %s is a private group: a member has to /add you", label)
	case e.Code == client.CodeForbidden && cmd == "remove":
		u.printf("remove: only the owner of %s%s can remove members", label, owner)
	case e.Code == client.CodeForbidden && cmd == "rename":
		u.printf("rename: only the owner of %s%s can rename it", label, owner)
	case e.Code == client.CodeNotMember:
		u.printf("%s: you are not a member of %s", cmd, label)
	case e.Code == client.CodeNotFound && (cmd == "add" || cmd == "remove"):
		u.printf("%s: %s or one of the users does not exist", cmd, label)
	case e.Code == client.CodeNotFound:
		u.printf("%s: there is no group %d", cmd, gid)
	case e.Code == client.CodeBadRequest && !v2:
		u.printf("%s: this server speaks protocol version 1, which lacks it (%v)", cmd, err)
	default:
		u.fail(cmd, err)
	}
}

// cmdMembers runs /add (any member adds users to the open group) and
// /remove (its owner removes them). The note of the change follows as a
// message.
func (u *ui) cmdMembers(ctx context.Context, cmd, rest string) {
	names := parseNames(rest)
	if len(names) == 0 {
		what := "adds them to the open group"
		if cmd == "/remove" {
			what = "removes them from the open group; its owner only"
		}
		u.printf("usage: %s NAME[,NAME...] (%s)", cmd, what)
		return
	}
	gid := u.openGroup(cmd)
	if gid == 0 {
		return
	}
	uids, ok := u.resolveUsers(ctx, cmd[1:], names)
	if !ok {
		return
	}
	if cmd == "/remove" && slices.Contains(uids, u.c.UID()) {
		u.printf("remove: you cannot remove yourself; /leave leaves the group")
		return
	}
	u.cmdGroup(ctx, cmd, gid, uids...)
}

// cmdRename renames the open group (its owner only). The note of the
// change confirms it; a rename to the current name stores none, so that
// case is said here.
func (u *ui) cmdRename(ctx context.Context, name string) {
	if name == "" {
		u.printf("usage: /rename NEW NAME (renames the open group; its owner only)")
		return
	}
	if err := checkGroupName(name); err != nil {
		u.fail("rename", err)
		return
	}
	gid := u.openGroup("/rename")
	if gid == 0 {
		return
	}
	u.mu.Lock()
	same := u.groups[gid] == name
	u.mu.Unlock()
	g, err := u.c.RenameGroup(ctx, gid, name)
	if err != nil {
		u.groupFail("rename", gid, err)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if same {
		u.printLocked(fmt.Sprintf("-- %s already has that name", u.groupLabelLocked(gid)))
	}
	u.groupReplyLocked(g, true)
	u.refreshLocked()
}
