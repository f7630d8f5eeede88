package chat

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/magpie-im/magpie/client"
)

// fakeServer is an in-process stand-in for `magpie serve`, so the chat's
// version 2 features are tested before the real server speaks version 2
// (the same scenarios also run against the real server, skipped until it
// announces version 2). It speaks what the SDK and the chat use of
// PROTOCOL.md, announcing version 2 or 1: login, users, send, push (no
// resends), convs, history, read; groups with owners and system messages
// (§13, v2), receipts (§14), typing (§15) and presence (§16) — without the
// real server's throttles and grace periods, which the chat must not need.
// A version 1 fake answers the version 2 frames with bad_request and
// stores no system messages. Users are the demo's (alice, bob, carol,
// password "password") plus dave; "lobby" is public and alice's.
type fakeServer struct {
	t       testing.TB
	version int
	hs      *httptest.Server

	mu       sync.Mutex
	users    []string // uid−1 → username
	conns    map[*fakeConn]bool
	msgs     map[string][]client.Message
	read     map[string]map[int64]int64 // conv → uid → read_seq
	sent     map[string]client.Sent     // "uid/cmid" → the stored message
	groups   map[int64]*fakeGroup
	subs     map[*fakeConn][]int64 // presence subscriptions
	lastSeen map[int64]int64
	typings  int      // typing frames received
	refused  []string // version 2 frame types a version 1 fake refused
	sysN     int
}

type fakeGroup struct {
	name    string
	public  bool
	owner   int64
	members map[int64]bool
}

// subset is the distinct uids of list that are (member) or are not
// members of g, ascending.
func (g *fakeGroup) subset(list []int64, member bool) []int64 {
	var out []int64
	for _, uid := range list {
		if g.members[uid] == member && !slices.Contains(out, uid) {
			out = append(out, uid)
		}
	}
	slices.Sort(out)
	return out
}

type fakeConn struct {
	ws  *websocket.Conn
	uid int64
	wmu sync.Mutex
}

// send writes one frame; a closed connection's frames are lost, as a
// server's are.
func (fc *fakeConn) send(v any) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	_ = fc.ws.WriteJSON(v)
}

func startFake(t testing.TB, version int) *fakeServer {
	fs := &fakeServer{t: t, version: version, users: []string{"alice", "bob", "carol", "dave"},
		conns: map[*fakeConn]bool{}, msgs: map[string][]client.Message{}, read: map[string]map[int64]int64{},
		sent: map[string]client.Sent{}, groups: map[int64]*fakeGroup{}, subs: map[*fakeConn][]int64{}, lastSeen: map[int64]int64{}}
	fs.groups[1] = &fakeGroup{name: "lobby", public: true, owner: 1, members: map[int64]bool{1: true, 2: true, 3: true}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/login", fs.login)
	mux.HandleFunc("GET /api/users", fs.listUsers)
	mux.HandleFunc("/ws", fs.serveWS)
	fs.hs = httptest.NewServer(mux)
	t.Cleanup(func() {
		fs.hs.CloseClientConnections()
		fs.hs.Close()
	})
	return fs
}

func (fs *fakeServer) HTTPURL() string { return fs.hs.URL }

func (fs *fakeServer) typingFrames() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.typings
}

func (fs *fakeServer) refusedFrames() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return slices.Clone(fs.refused)
}

func httpError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "message": code})
}

func (fs *fakeServer) uidOf(name string) int64 {
	for i, n := range fs.users {
		if strings.EqualFold(n, name) {
			return int64(i + 1)
		}
	}
	return 0
}

func (fs *fakeServer) login(w http.ResponseWriter, r *http.Request) {
	var in struct{ Username, Password string }
	_ = json.NewDecoder(r.Body).Decode(&in)
	fs.mu.Lock()
	uid := fs.uidOf(in.Username)
	fs.mu.Unlock()
	if uid == 0 || in.Password != "password" {
		httpError(w, 401, "unauthorized")
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"uid": uid, "token": "tok" + strconv.FormatInt(uid, 10),
		"expires_at": time.Now().Add(time.Hour).UnixMilli(), "ws_url": "ws://" + r.Host + "/ws"})
}

func (fs *fakeServer) listUsers(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer tok") {
		httpError(w, 401, "unauthorized")
		return
	}
	q := strings.ToLower(r.URL.Query().Get("q"))
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	out := []map[string]any{}
	fs.mu.Lock()
	for i, n := range fs.users {
		if uid := int64(i + 1); uid > after && strings.HasPrefix(strings.ToLower(n), q) {
			out = append(out, map[string]any{"uid": uid, "username": n})
		}
	}
	fs.mu.Unlock()
	_ = json.NewEncoder(w).Encode(out)
}

func (fs *fakeServer) serveWS(w http.ResponseWriter, r *http.Request) {
	uid, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Query().Get("token"), "tok"), 10, 64)
	if err != nil || uid < 1 || int(uid) > len(fs.users) {
		http.Error(w, "unauthorized", 401)
		return
	}
	ws, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		return
	}
	fc := &fakeConn{ws: ws, uid: uid}
	fs.mu.Lock()
	fc.send(map[string]any{"type": "welcome", "version": fs.version, "uid": uid, "heartbeat_ms": 30000,
		"idle_timeout_ms": 90000, "ack_timeout_ms": 5000, "send_rate": 0, "max_body": 16384, "server_time": time.Now().UnixMilli()})
	first := !fs.onlineLocked(uid)
	fs.conns[fc] = true
	if first {
		fs.presenceChangedLocked(uid)
	}
	fs.mu.Unlock()
	defer fs.gone(fc)
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		fs.handle(fc, data)
	}
}

// gone forgets a closed connection; the user's last one makes them
// offline at once (the real server waits --presence-grace).
func (fs *fakeServer) gone(fc *fakeConn) {
	fc.ws.Close()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	delete(fs.conns, fc)
	delete(fs.subs, fc)
	if !fs.onlineLocked(fc.uid) {
		fs.lastSeen[fc.uid] = time.Now().UnixMilli()
		fs.presenceChangedLocked(fc.uid)
	}
}

// fakeReq is every field of the client frames the fake serves.
type fakeReq struct {
	Type, RID, CMID, Conv, Body, Kind, Name string
	To, Group, Seq                          int64
	After, Before                           *int64
	Limit                                   int
	Public                                  bool
	Members, UIDs                           []int64
}

func (fs *fakeServer) handle(fc *fakeConn, data []byte) {
	var f fakeReq
	if err := json.Unmarshal(data, &f); err != nil {
		fc.send(map[string]any{"type": "error", "code": "bad_request", "message": "malformed"})
		return
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fail := func(code string) {
		fc.send(map[string]any{"type": "error", "rid": f.RID, "cmid": f.CMID, "code": code, "message": code})
	}
	if fs.version < 2 && slices.Contains([]string{"group_add", "group_remove", "group_rename", "receipts", "typing", "presence_sub"}, f.Type) {
		fs.refused = append(fs.refused, f.Type)
		fail("bad_request") // "unknown type", as a version 1 server answers
		return
	}
	switch f.Type {
	case "ping":
		fc.send(map[string]any{"type": "pong"})
	case "ack":
	case "send":
		fs.sendLocked(fc, f, fail)
	case "convs":
		fs.convsLocked(fc, f.RID)
	case "history":
		if code := fs.convCheckLocked(f.Conv, fc.uid); code != "" {
			fail(code)
			return
		}
		fs.historyLocked(fc, f)
	case "read":
		if code := fs.convCheckLocked(f.Conv, fc.uid); code != "" {
			fail(code)
			return
		}
		fs.markReadLocked(fc, f)
	case "group_create", "group_join", "group_leave", "group_add", "group_remove", "group_rename", "group_members":
		fs.groupLocked(fc, f, fail)
	case "receipts":
		if code := fs.convCheckLocked(f.Conv, fc.uid); code != "" {
			fail(code)
			return
		}
		items := []map[string]any{}
		for _, uid := range fs.othersLocked(f.Conv, fc.uid) {
			items = append(items, map[string]any{"uid": uid, "read_seq": fs.read[f.Conv][uid]})
		}
		fc.send(map[string]any{"type": "receipts", "rid": f.RID, "conv": f.Conv, "items": items})
	case "typing":
		if code := fs.convCheckLocked(f.Conv, fc.uid); code != "" {
			fail(code)
			return
		}
		fs.typings++
		for _, uid := range fs.othersLocked(f.Conv, fc.uid) {
			fs.toUserLocked(uid, nil, map[string]any{"type": "typing", "conv": f.Conv, "uid": fc.uid})
		}
	case "presence_sub":
		fs.subs[fc] = f.UIDs
		items := []map[string]any{}
		for _, uid := range f.UIDs {
			items = append(items, fs.presenceLocked(uid))
		}
		fc.send(map[string]any{"type": "presence", "rid": f.RID, "items": items})
	default:
		fail("bad_request")
	}
}

// convCheckLocked is the conv check of `history` (PROTOCOL §4, §5): "" if
// uid may read conv, else the error code.
func (fs *fakeServer) convCheckLocked(conv string, uid int64) string {
	a, b, gid, ok := client.ParseConv(conv)
	switch {
	case !ok:
		return "bad_request"
	case gid != 0 && fs.groups[gid] == nil, gid == 0 && int(b) > len(fs.users):
		return "not_found"
	case gid != 0 && !fs.groups[gid].members[uid], gid == 0 && a != uid && b != uid:
		return "not_member"
	}
	return ""
}

// othersLocked lists the members of conv besides uid, ascending.
func (fs *fakeServer) othersLocked(conv string, uid int64) []int64 {
	a, b, gid, _ := client.ParseConv(conv)
	var all []int64
	if gid == 0 {
		all = []int64{a, b}
	} else if g := fs.groups[gid]; g != nil {
		all = slices.Sorted(maps.Keys(g.members))
	}
	return slices.DeleteFunc(all, func(x int64) bool { return x == uid })
}

func (fs *fakeServer) onlineLocked(uid int64) bool {
	for c := range fs.conns {
		if c.uid == uid {
			return true
		}
	}
	return false
}

// toUserLocked sends frame to every connection of uid but skip.
func (fs *fakeServer) toUserLocked(uid int64, skip *fakeConn, frame any) {
	for c := range fs.conns {
		if c.uid == uid && c != skip {
			c.send(frame)
		}
	}
}

func (fs *fakeServer) setReadLocked(conv string, uid, seq int64) bool {
	if fs.read[conv] == nil {
		fs.read[conv] = map[int64]int64{}
	}
	if seq <= fs.read[conv][uid] {
		return false
	}
	fs.read[conv][uid] = seq
	return true
}

// storeLocked appends a message to conv and pushes it to the members of
// conv but the connection skip, and to extra users.
func (fs *fakeServer) storeLocked(conv string, from int64, kind, body, cmid string, skip *fakeConn, extra ...int64) client.Message {
	m := client.Message{Conv: conv, Seq: int64(len(fs.msgs[conv]) + 1), From: from, TS: time.Now().UnixMilli(), Kind: kind, Body: body, CMID: cmid}
	fs.msgs[conv] = append(fs.msgs[conv], m)
	push := map[string]any{"type": "msg", "conv": m.Conv, "seq": m.Seq, "from": m.From, "ts": m.TS, "kind": m.Kind, "body": m.Body, "cmid": m.CMID}
	for _, uid := range append(fs.othersLocked(conv, 0), extra...) {
		fs.toUserLocked(uid, skip, push)
	}
	return m
}

func (fs *fakeServer) sendLocked(fc *fakeConn, f fakeReq, fail func(string)) {
	if f.CMID == "" || f.Body == "" || (f.To == 0) == (f.Group == 0) || fs.version >= 2 && (f.Kind == "system" || strings.HasPrefix(f.CMID, "sys:")) {
		fail("bad_request")
		return
	}
	key := strconv.FormatInt(fc.uid, 10) + "/" + f.CMID
	if s, ok := fs.sent[key]; ok {
		fc.send(map[string]any{"type": "sent", "cmid": s.CMID, "conv": s.Conv, "seq": s.Seq, "ts": s.TS})
		return
	}
	conv := client.GroupConv(f.Group)
	if f.To != 0 {
		if f.To == fc.uid {
			fail("bad_request")
			return
		}
		conv = client.DirectConv(fc.uid, f.To)
	}
	if code := fs.convCheckLocked(conv, fc.uid); code != "" {
		fail(code)
		return
	}
	kind := f.Kind
	if kind == "" {
		kind = "text"
	}
	m := fs.storeLocked(conv, fc.uid, kind, f.Body, f.CMID, fc)
	fs.setReadLocked(conv, fc.uid, m.Seq)
	fs.sent[key] = client.Sent{CMID: f.CMID, Conv: conv, Seq: m.Seq, TS: m.TS}
	fc.send(map[string]any{"type": "sent", "cmid": f.CMID, "conv": conv, "seq": m.Seq, "ts": m.TS})
}

func (fs *fakeServer) unreadLocked(conv string, uid int64) int64 {
	return int64(len(fs.msgs[conv])) - fs.read[conv][uid]
}

func (fs *fakeServer) convsLocked(fc *fakeConn, rid string) {
	me := fc.uid
	items := []map[string]any{}
	var total int64
	add := func(conv string, it map[string]any) {
		ms := fs.msgs[conv]
		it["conv"], it["last_seq"], it["read_seq"] = conv, len(ms), fs.read[conv][me]
		it["unread"] = fs.unreadLocked(conv, me)
		total += fs.unreadLocked(conv, me)
		if len(ms) > 0 {
			it["last"] = ms[len(ms)-1]
		}
		items = append(items, it)
	}
	for _, conv := range slices.Sorted(maps.Keys(fs.msgs)) {
		if a, b, gid, _ := client.ParseConv(conv); gid == 0 && (a == me || b == me) {
			peer := a + b - me
			it := map[string]any{"peer": peer}
			if fs.version >= 2 {
				it["peer_read_seq"] = fs.read[conv][peer]
			}
			add(conv, it)
		}
	}
	for _, gid := range slices.Sorted(maps.Keys(fs.groups)) {
		if g := fs.groups[gid]; g.members[me] {
			it := map[string]any{"group": gid, "name": g.name}
			if fs.version >= 2 {
				it["public"], it["owner"] = g.public, g.owner
			}
			add(client.GroupConv(gid), it)
		}
	}
	fc.send(map[string]any{"type": "convs", "rid": rid, "items": items, "total_unread": total})
}

func (fs *fakeServer) historyLocked(fc *fakeConn, f fakeReq) {
	all := fs.msgs[f.Conv]
	limit := f.Limit
	if limit <= 0 {
		limit = 50
	}
	lo, hi := max(0, len(all)-limit), len(all) // the newest page
	switch {
	case f.After != nil:
		lo = int(min(max(*f.After, 0), int64(len(all))))
		hi = min(lo+limit, len(all))
	case f.Before != nil:
		hi = int(min(max(*f.Before-1, 0), int64(len(all))))
		lo = max(0, hi-limit)
	}
	more := lo > 0
	if f.After != nil {
		more = hi < len(all)
	}
	fc.send(map[string]any{"type": "history", "rid": f.RID, "conv": f.Conv, "messages": append([]client.Message{}, all[lo:hi]...), "more": more})
}

func (fs *fakeServer) markReadLocked(fc *fakeConn, f fakeReq) {
	grew := fs.setReadLocked(f.Conv, fc.uid, min(f.Seq, int64(len(fs.msgs[f.Conv]))))
	seq := fs.read[f.Conv][fc.uid]
	var total int64
	for conv := range fs.msgs {
		if fs.convCheckLocked(conv, fc.uid) == "" {
			total += fs.unreadLocked(conv, fc.uid)
		}
	}
	frame := map[string]any{"type": "read", "conv": f.Conv, "seq": seq, "unread": fs.unreadLocked(f.Conv, fc.uid), "total_unread": total}
	fs.toUserLocked(fc.uid, fc, frame)
	frame["rid"] = f.RID
	fc.send(frame)
	if grew && fs.version >= 2 {
		for _, uid := range fs.othersLocked(f.Conv, fc.uid) {
			fs.toUserLocked(uid, nil, map[string]any{"type": "receipt", "conv": f.Conv, "uid": fc.uid, "seq": seq})
		}
	}
}

// sysLocked stores a group's system message (§13; nothing on version 1)
// and returns its seq.
func (fs *fakeServer) sysLocked(gid, actor int64, body map[string]any, extra ...int64) int64 {
	if fs.version < 2 {
		return 0
	}
	fs.sysN++
	b, _ := json.Marshal(body)
	return fs.storeLocked(client.GroupConv(gid), actor, "system", string(b), "sys:"+strconv.Itoa(fs.sysN), nil, extra...).Seq
}

func (fs *fakeServer) groupLocked(fc *fakeConn, f fakeReq, fail func(string)) {
	me, gid := fc.uid, f.Group
	conv := client.GroupConv(gid)
	g := fs.groups[gid]
	if f.Type == "group_create" {
		gid = int64(len(fs.groups) + 1)
		conv = client.GroupConv(gid)
		g = &fakeGroup{name: f.Name, public: f.Public, owner: me, members: map[int64]bool{me: true}}
		for _, uid := range f.Members {
			if uid < 1 || int(uid) > len(fs.users) {
				fail("not_found")
				return
			}
			g.members[uid] = true
		}
		fs.groups[gid] = g
		seq := fs.sysLocked(gid, me, map[string]any{"event": "created", "name": f.Name, "public": f.Public, "count": len(g.members)})
		for uid := range g.members {
			fs.setReadLocked(conv, uid, seq-1)
		}
		fs.setReadLocked(conv, me, seq)
	} else if g == nil {
		fail("not_found")
		return
	}
	// The checks of §13 in order, after the group's: member, owner.
	memberOnly := f.Type == "group_add" || f.Type == "group_remove" || f.Type == "group_rename" || f.Type == "group_members" || f.Type == "group_leave"
	ownerOnly := f.Type == "group_remove" || f.Type == "group_rename"
	switch {
	case memberOnly && !g.members[me]:
		fail("not_member")
		return
	case ownerOnly && g.owner != me:
		fail("forbidden")
		return
	}
	var changed []int64
	switch f.Type {
	case "group_join":
		if g.members[me] {
			break
		}
		if !g.public && fs.version >= 2 {
			fail("forbidden")
			return
		}
		g.members[me] = true
		if g.owner == 0 {
			g.owner = me
		}
		fs.setReadLocked(conv, me, fs.sysLocked(gid, me, map[string]any{"event": "joined"}))
	case "group_leave":
		delete(g.members, me)
		body := map[string]any{"event": "left"}
		if g.owner == me {
			g.owner = 0
			if len(g.members) > 0 {
				g.owner = slices.Min(slices.Collect(maps.Keys(g.members)))
			}
			body["owner"] = g.owner
		}
		fs.sysLocked(gid, me, body, me)
	case "group_add":
		if slices.ContainsFunc(f.Members, func(uid int64) bool { return uid < 1 || int(uid) > len(fs.users) }) {
			fail("not_found")
			return
		}
		if changed = g.subset(f.Members, false); len(changed) == 0 {
			break
		}
		for _, uid := range changed {
			g.members[uid] = true
		}
		seq := fs.sysLocked(gid, me, map[string]any{"event": "added", "members": changed})
		for _, uid := range changed {
			fs.setReadLocked(conv, uid, seq-1) // one unread: the note
		}
	case "group_remove":
		if slices.Contains(f.Members, me) {
			fail("bad_request")
			return
		}
		if changed = g.subset(f.Members, true); len(changed) == 0 {
			break
		}
		for _, uid := range changed {
			delete(g.members, uid)
		}
		fs.sysLocked(gid, me, map[string]any{"event": "removed", "members": changed}, changed...)
	case "group_rename":
		if f.Name != g.name {
			g.name = f.Name
			fs.sysLocked(gid, me, map[string]any{"event": "renamed", "name": f.Name})
		}
	}
	reply := map[string]any{"type": "group", "rid": f.RID, "group": gid, "name": g.name, "count": len(g.members)}
	if fs.version >= 2 {
		reply["public"], reply["owner"] = g.public, g.owner
	}
	if f.Type == "group_create" || f.Type == "group_members" {
		reply["members"], reply["more"] = slices.Sorted(maps.Keys(g.members)), false
	}
	fc.send(reply)
}

func (fs *fakeServer) presenceLocked(uid int64) map[string]any {
	if fs.onlineLocked(uid) {
		return map[string]any{"uid": uid, "online": true, "last_seen": 0}
	}
	return map[string]any{"uid": uid, "online": false, "last_seen": fs.lastSeen[uid]}
}

// presenceChangedLocked pushes uid's state to its subscribers at once.
func (fs *fakeServer) presenceChangedLocked(uid int64) {
	if fs.version < 2 {
		return
	}
	for c, uids := range fs.subs {
		if slices.Contains(uids, uid) {
			c.send(map[string]any{"type": "presence", "items": []any{fs.presenceLocked(uid)}})
		}
	}
}
