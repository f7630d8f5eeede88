package client

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"time"
)

// fakeV2 is the version 2 part of fakeServer (PROTOCOL §13–§16): groups
// with owners and system messages, read receipts, typing and presence. It
// is deliberately plain — no grace, no coalescing, no throttling — so SDK
// tests see every frame the SDK's own logic must handle; tests that need a
// particular frame inject it with pushTo. Guarded by fakeServer.mu.
type fakeV2 struct {
	groups   map[int64]*fakeGroup
	nextGID  int64
	sysN     int
	read     map[string]map[int64]int64 // conv → uid → read_seq
	subs     map[*fakeConn][]int64      // presence subscriptions
	lastSeen map[int64]int64
	typings  []fakeTyping // every typing frame received
	frames   []string     // every v2 request type received, in order
}

type fakeGroup struct {
	name    string
	public  bool
	owner   int64
	members map[int64]bool
}

type fakeTyping struct {
	uid  int64
	conv string
	at   time.Time
}

// v2Frame is every field a v2 request may carry.
type v2Frame struct {
	Type    string  `json:"type"`
	RID     string  `json:"rid"`
	CMID    string  `json:"cmid"`
	Conv    string  `json:"conv"`
	Body    string  `json:"body"`
	Kind    string  `json:"kind"`
	Group   int64   `json:"group"`
	Seq     int64   `json:"seq"`
	Name    string  `json:"name"`
	Public  bool    `json:"public"`
	Members []int64 `json:"members"`
	UIDs    []int64 `json:"uids"`
}

// handleV2 serves the frames that version 2 adds or changes, and group
// sends; it reports false for everything the version 1 handler serves.
func (fs *fakeServer) handleV2(fc *fakeConn, data []byte) bool {
	var f v2Frame
	if json.Unmarshal(data, &f) != nil {
		return false
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	v := &fs.v2
	switch f.Type {
	case "send":
		if f.Group == 0 {
			return false
		}
		fs.groupSendLocked(fc, f)
	case "group_create", "group_join", "group_leave", "group_add", "group_remove", "group_rename", "group_members":
		fs.groupLocked(fc, f)
	case "convs":
		if fs.version < 2 {
			return false
		}
		fs.convsLocked(fc, f.RID)
	case "read":
		if fs.version < 2 {
			return false
		}
		fs.readLocked(fc, f)
	case "receipts":
		var items []map[string]any
		for _, uid := range fs.othersLocked(f.Conv, fc.uid) {
			items = append(items, map[string]any{"uid": uid, "read_seq": v.read[f.Conv][uid]})
		}
		fc.write(map[string]any{"type": "receipts", "rid": f.RID, "conv": f.Conv, "items": items})
	case "typing":
		v.typings = append(v.typings, fakeTyping{fc.uid, f.Conv, time.Now()})
		for _, uid := range fs.othersLocked(f.Conv, fc.uid) {
			fs.pushToLocked(uid, map[string]any{"type": "typing", "conv": f.Conv, "uid": fc.uid})
		}
	case "presence_sub":
		if v.subs == nil {
			v.subs = map[*fakeConn][]int64{}
		}
		v.subs[fc] = f.UIDs
		var items []map[string]any
		for _, uid := range f.UIDs {
			items = append(items, fs.presenceItemLocked(uid))
		}
		fc.write(map[string]any{"type": "presence", "rid": f.RID, "items": items})
	default:
		return false
	}
	v.frames = append(v.frames, f.Type)
	return true
}

func (fs *fakeServer) groupSendLocked(fc *fakeConn, f v2Frame) {
	g := fs.v2.groups[f.Group]
	switch {
	case g == nil:
		fc.write(map[string]any{"type": "error", "cmid": f.CMID, "code": "not_found"})
		return
	case !g.members[fc.uid]:
		fc.write(map[string]any{"type": "error", "cmid": f.CMID, "code": "not_member"})
		return
	}
	key := strconv.FormatInt(fc.uid, 10) + "/" + f.CMID
	if s, ok := fs.cmids[key]; ok {
		fc.write(map[string]any{"type": "sent", "cmid": f.CMID, "conv": s.Conv, "seq": s.Seq, "ts": s.TS})
		return
	}
	kind := f.Kind
	if kind == "" {
		kind = "text"
	}
	m := fs.appendLocked(GroupConv(f.Group), fc.uid, kind, f.Body, f.CMID)
	fs.cmids[key] = Sent{CMID: f.CMID, Conv: m.Conv, Seq: m.Seq, TS: m.TS}
	fs.setReadLocked(m.Conv, fc.uid, m.Seq)
	fc.write(map[string]any{"type": "sent", "cmid": f.CMID, "conv": m.Conv, "seq": m.Seq, "ts": m.TS})
	for uid := range g.members {
		fs.pushMsgLocked(uid, m, fc)
	}
}

func (fs *fakeServer) appendLocked(conv string, from int64, kind, body, cmid string) Message {
	m := Message{Conv: conv, Seq: int64(len(fs.msgs[conv]) + 1), From: from, TS: 1000 + int64(len(fs.msgs[conv])), Kind: kind, Body: body, CMID: cmid}
	fs.msgs[conv] = append(fs.msgs[conv], m)
	return m
}

// pushMsgLocked pushes m to every connection of uid except skip.
func (fs *fakeServer) pushMsgLocked(uid int64, m Message, skip *fakeConn) {
	if fs.dropPush != nil && fs.dropPush(m) {
		return
	}
	for c := range fs.conns {
		if c != skip && c.uid == uid {
			c.write(map[string]any{"type": "msg", "conv": m.Conv, "seq": m.Seq, "from": m.From, "ts": m.TS, "kind": m.Kind, "body": m.Body, "cmid": m.CMID})
		}
	}
}

func (fs *fakeServer) pushToLocked(uid int64, frame any) {
	for c := range fs.conns {
		if c.uid == uid {
			c.write(frame)
		}
	}
}

// pushTo sends frame to every connection of uid (a test hook for frames
// the fake never makes by itself).
func (fs *fakeServer) pushTo(uid int64, frame any) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.pushToLocked(uid, frame)
}

// sysLocked stores a system message in group gid and pushes it to the
// members and to extra (removed or departed users).
func (fs *fakeServer) sysLocked(gid, actor int64, body map[string]any, extra ...int64) Message {
	fs.v2.sysN++
	b, _ := json.Marshal(body)
	m := fs.appendLocked(GroupConv(gid), actor, "system", string(b), "sys:"+strconv.Itoa(fs.v2.sysN))
	to := slices.Collect(maps.Keys(fs.v2.groups[gid].members))
	to = append(to, extra...)
	for _, uid := range to {
		fs.pushMsgLocked(uid, m, nil)
	}
	return m
}

func (fs *fakeServer) groupLocked(fc *fakeConn, f v2Frame) {
	v := &fs.v2
	fail := func(code string) { fc.write(map[string]any{"type": "error", "rid": f.RID, "code": code}) }
	if v.groups == nil {
		v.groups = map[int64]*fakeGroup{}
	}
	var g *fakeGroup
	if f.Type != "group_create" {
		if g = v.groups[f.Group]; g == nil {
			fail("not_found")
			return
		}
	}
	me := fc.uid
	gid := f.Group
	// owner reports whether the requester may change the group (§13's
	// checks in order: member, then owner), answering the error if not.
	owner := func() bool {
		switch {
		case !g.members[me]:
			fail("not_member")
		case g.owner != me:
			fail("forbidden")
		default:
			return true
		}
		return false
	}
	switch f.Type {
	case "group_create":
		v.nextGID++
		gid = v.nextGID
		g = &fakeGroup{name: f.Name, public: f.Public, owner: me, members: map[int64]bool{me: true}}
		for _, u := range f.Members {
			g.members[u] = true
		}
		v.groups[gid] = g
		m := fs.sysLocked(gid, me, map[string]any{"event": "created", "name": f.Name, "public": f.Public, "count": len(g.members)})
		for u := range g.members {
			fs.setReadLocked(m.Conv, u, m.Seq-1)
		}
		fs.setReadLocked(m.Conv, me, m.Seq)
	case "group_join":
		if !g.members[me] {
			if !g.public {
				fail("forbidden")
				return
			}
			g.members[me] = true
			if g.owner == 0 {
				g.owner = me
			}
			m := fs.sysLocked(gid, me, map[string]any{"event": "joined"})
			fs.setReadLocked(m.Conv, me, m.Seq)
		}
	case "group_leave":
		if !g.members[me] {
			fail("not_member")
			return
		}
		delete(g.members, me)
		body := map[string]any{"event": "left"}
		if g.owner == me {
			g.owner = 0
			for u := range g.members {
				if g.owner == 0 || u < g.owner {
					g.owner = u
				}
			}
			body["owner"] = g.owner
		}
		fs.sysLocked(gid, me, body, me)
	case "group_add":
		if !g.members[me] {
			fail("not_member")
			return
		}
		var added []int64
		for _, u := range f.Members {
			if !g.members[u] && !slices.Contains(added, u) {
				added = append(added, u)
			}
		}
		if len(added) > 0 {
			slices.Sort(added)
			for _, u := range added {
				g.members[u] = true
			}
			fs.sysLocked(gid, me, map[string]any{"event": "added", "members": added})
		}
	case "group_remove":
		if !owner() {
			return
		}
		if slices.Contains(f.Members, me) {
			fail("bad_request")
			return
		}
		var removed []int64
		for _, u := range f.Members {
			if g.members[u] && !slices.Contains(removed, u) {
				removed = append(removed, u)
			}
		}
		if len(removed) > 0 {
			slices.Sort(removed)
			for _, u := range removed {
				delete(g.members, u)
			}
			fs.sysLocked(gid, me, map[string]any{"event": "removed", "members": removed}, removed...)
		}
	case "group_rename":
		if !owner() {
			return
		}
		if f.Name != g.name {
			g.name = f.Name
			fs.sysLocked(gid, me, map[string]any{"event": "renamed", "name": f.Name})
		}
	case "group_members":
		if !g.members[me] {
			fail("not_member")
			return
		}
	}
	reply := map[string]any{"type": "group", "rid": f.RID, "group": gid, "name": g.name, "count": len(g.members), "public": g.public, "owner": g.owner}
	if f.Type == "group_create" || f.Type == "group_members" {
		ms := slices.Sorted(maps.Keys(g.members))
		reply["members"], reply["more"] = ms, false
	}
	fc.write(reply)
}

// othersLocked lists the members of conv other than uid.
func (fs *fakeServer) othersLocked(conv string, uid int64) []int64 {
	a, b, gid, ok := ParseConv(conv)
	if !ok {
		return nil
	}
	if gid == 0 {
		if a == uid {
			return []int64{b}
		}
		return []int64{a}
	}
	var out []int64
	if g := fs.v2.groups[gid]; g != nil {
		for u := range g.members {
			if u != uid {
				out = append(out, u)
			}
		}
	}
	slices.Sort(out)
	return out
}

func (fs *fakeServer) setReadLocked(conv string, uid, seq int64) {
	if fs.v2.read == nil {
		fs.v2.read = map[string]map[int64]int64{}
	}
	if fs.v2.read[conv] == nil {
		fs.v2.read[conv] = map[int64]int64{}
	}
	if seq > fs.v2.read[conv][uid] {
		fs.v2.read[conv][uid] = seq
	}
}

func (fs *fakeServer) readLocked(fc *fakeConn, f v2Frame) {
	last := int64(len(fs.msgs[f.Conv]))
	before := fs.v2.read[f.Conv][fc.uid]
	fs.setReadLocked(f.Conv, fc.uid, min(f.Seq, last))
	now := fs.v2.read[f.Conv][fc.uid]
	fc.write(map[string]any{"type": "read", "rid": f.RID, "conv": f.Conv, "seq": now, "unread": last - now})
	if now > before {
		for _, uid := range fs.othersLocked(f.Conv, fc.uid) {
			fs.pushToLocked(uid, map[string]any{"type": "receipt", "conv": f.Conv, "uid": fc.uid, "seq": now})
		}
	}
}

func (fs *fakeServer) convsLocked(fc *fakeConn, rid string) {
	me := fc.uid
	items := []map[string]any{}
	for cv, ms := range fs.msgs {
		a, b, gid, _ := ParseConv(cv)
		if gid != 0 || (a != me && b != me) || len(ms) == 0 {
			continue
		}
		peer := a
		if a == me {
			peer = b
		}
		last := ms[len(ms)-1]
		items = append(items, map[string]any{"conv": cv, "peer": peer, "last_seq": last.Seq, "read_seq": fs.v2.read[cv][me],
			"peer_read_seq": fs.v2.read[cv][peer], "last": last})
	}
	for gid, g := range fs.v2.groups {
		if !g.members[me] {
			continue
		}
		cv := GroupConv(gid)
		it := map[string]any{"conv": cv, "group": gid, "name": g.name, "public": g.public, "owner": g.owner,
			"last_seq": len(fs.msgs[cv]), "read_seq": fs.v2.read[cv][me]}
		if ms := fs.msgs[cv]; len(ms) > 0 {
			it["last"] = ms[len(ms)-1]
		}
		items = append(items, it)
	}
	fc.write(map[string]any{"type": "convs", "rid": rid, "items": items})
}

func (fs *fakeServer) presenceItemLocked(uid int64) map[string]any {
	for c := range fs.conns {
		if c.uid == uid {
			return map[string]any{"uid": uid, "online": true, "last_seen": 0}
		}
	}
	return map[string]any{"uid": uid, "online": false, "last_seen": fs.v2.lastSeen[uid]}
}

// connectedLocked and disconnectedLocked push presence changes to the
// subscribers at once (the real server waits --presence-grace and
// coalesces; the SDK must not care).
func (fs *fakeServer) connectedLocked(fc *fakeConn) {
	n := 0
	for c := range fs.conns {
		if c.uid == fc.uid {
			n++
		}
	}
	if n == 1 {
		fs.presenceChangedLocked(fc.uid)
	}
}

func (fs *fakeServer) disconnectedLocked(fc *fakeConn) {
	delete(fs.v2.subs, fc)
	for c := range fs.conns {
		if c.uid == fc.uid {
			return
		}
	}
	if fs.v2.lastSeen == nil {
		fs.v2.lastSeen = map[int64]int64{}
	}
	fs.v2.lastSeen[fc.uid] = time.Now().UnixMilli()
	fs.presenceChangedLocked(fc.uid)
}

func (fs *fakeServer) presenceChangedLocked(uid int64) {
	if fs.version < 2 {
		return
	}
	item := fs.presenceItemLocked(uid)
	for c, uids := range fs.v2.subs {
		if slices.Contains(uids, uid) {
			c.write(map[string]any{"type": "presence", "items": []any{item}})
		}
	}
}
