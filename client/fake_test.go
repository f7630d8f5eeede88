package client

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gorilla/websocket"
)

// fakeServer is a small in-process stand-in for `magpie serve`, for unit
// tests of the SDK's logic before and besides the real server (the fault
// tests use the real one). It speaks the subset of PROTOCOL.md the SDK
// uses: login, token auth, welcome, ping, send/sent, push, ack, history,
// convs, read. Users are "u<N>" with uid N; tokens are "t<N>".
type fakeServer struct {
	t   testing.TB
	srv *httptest.Server

	mu        sync.Mutex
	hbMS      int64
	sendRate  int
	conns     map[*fakeConn]bool
	msgs      map[string][]Message // conv → messages, seq = index+1
	cmids     map[string]Sent      // from/cmid → sent
	acks      map[string]int64     // conv → highest ack seen (any connection)
	dropPush  func(m Message) bool // test hook: push not sent when true
	dupPush   bool                 // send every push twice
	refuse401 bool
	dropSends bool // never answer a send
	dials     int
	version   int // welcome's version: 1 unless a test sets 2
	v2        fakeV2
}

type fakeConn struct {
	ws  *websocket.Conn
	uid int64
	wmu sync.Mutex
}

func (fc *fakeConn) write(v any) {
	b, _ := json.Marshal(v)
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	fc.ws.WriteMessage(websocket.TextMessage, b)
}

func newFakeServer(t testing.TB) *fakeServer {
	fs := &fakeServer{t: t, hbMS: 30000, version: 1, conns: map[*fakeConn]bool{}, msgs: map[string][]Message{}, cmids: map[string]Sent{}, acks: map[string]int64{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/login", func(w http.ResponseWriter, r *http.Request) {
		var in struct{ Username, Password string }
		json.NewDecoder(r.Body).Decode(&in)
		uid, err := strconv.ParseInt(strings.TrimPrefix(in.Username, "u"), 10, 64)
		if err != nil || in.Password != "password" {
			w.WriteHeader(401)
			w.Write([]byte(`{"error":"unauthorized","message":"no"}`))
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"uid": uid, "token": "t" + strconv.FormatInt(uid, 10), "expires_at": 0,
			"ws_url": "ws://" + r.Host + "/ws"})
	})
	mux.HandleFunc("/ws", fs.serveWS)
	fs.srv = httptest.NewServer(mux)
	t.Cleanup(fs.close)
	return fs
}

func (fs *fakeServer) close() {
	fs.srv.CloseClientConnections()
	fs.srv.Close()
}

func (fs *fakeServer) url() string { return fs.srv.URL }

func (fs *fakeServer) serveWS(w http.ResponseWriter, r *http.Request) {
	fs.mu.Lock()
	fs.dials++
	refuse := fs.refuse401
	fs.mu.Unlock()
	tok := r.URL.Query().Get("token")
	uid, err := strconv.ParseInt(strings.TrimPrefix(tok, "t"), 10, 64)
	if err != nil || refuse {
		http.Error(w, "unauthorized", 401)
		return
	}
	up := websocket.Upgrader{}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	fc := &fakeConn{ws: ws, uid: uid}
	fs.mu.Lock()
	fs.conns[fc] = true
	fc.write(map[string]any{"type": "welcome", "version": fs.version, "uid": uid, "heartbeat_ms": fs.hbMS, "send_rate": fs.sendRate})
	fs.connectedLocked(fc)
	fs.mu.Unlock()
	defer func() {
		fs.mu.Lock()
		delete(fs.conns, fc)
		fs.disconnectedLocked(fc)
		fs.mu.Unlock()
		ws.Close()
	}()
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		if fs.handleV2(fc, data) {
			continue
		}
		var f struct {
			Type, RID, CMID, Conv, Body string
			To, Group, Seq              int64
			After, Before               *int64
			Limit                       int
		}
		json.Unmarshal(data, &f)
		fs.handle(fc, f.Type, f.RID, f.CMID, f.Conv, f.Body, f.To, f.Seq, f.After, f.Before, f.Limit)
	}
}

func directConv(a, b int64) string { return DirectConv(a, b) }

func (fs *fakeServer) handle(fc *fakeConn, typ, rid, cmid, conv, body string, to, seq int64, after, before *int64, limit int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	switch typ {
	case "ping":
		fc.write(map[string]string{"type": "pong"})
	case "ack":
		if seq > fs.acks[conv] {
			fs.acks[conv] = seq
		}
	case "send":
		if fs.dropSends {
			return
		}
		key := strconv.FormatInt(fc.uid, 10) + "/" + cmid
		if s, ok := fs.cmids[key]; ok {
			fc.write(map[string]any{"type": "sent", "cmid": cmid, "conv": s.Conv, "seq": s.Seq, "ts": s.TS})
			return
		}
		cv := directConv(fc.uid, to)
		m := Message{Conv: cv, Seq: int64(len(fs.msgs[cv]) + 1), From: fc.uid, TS: 1, Kind: "text", Body: body, CMID: cmid}
		fs.msgs[cv] = append(fs.msgs[cv], m)
		fs.cmids[key] = Sent{CMID: cmid, Conv: cv, Seq: m.Seq, TS: 1}
		fc.write(map[string]any{"type": "sent", "rid": rid, "cmid": cmid, "conv": cv, "seq": m.Seq, "ts": 1})
		fs.pushLocked(fc, m, to)
	case "history":
		all := fs.msgs[conv]
		if limit == 0 {
			limit = 50
		}
		var page []Message
		more := false
		switch {
		case after != nil:
			for _, m := range all {
				if m.Seq > *after {
					if len(page) == limit {
						more = true
						break
					}
					page = append(page, m)
				}
			}
		default:
			end := int64(len(all))
			if before != nil {
				end = min(*before-1, end)
			}
			start := max(0, end-int64(limit))
			page = all[start:end]
			more = start > 0
		}
		if page == nil {
			page = []Message{}
		}
		fc.write(map[string]any{"type": "history", "rid": rid, "conv": conv, "messages": page, "more": more})
	case "convs":
		var items []Conv
		for cv, ms := range fs.msgs {
			a, b, _, _ := ParseConv(cv)
			if a == fc.uid || b == fc.uid {
				last := ms[len(ms)-1]
				items = append(items, Conv{Conv: cv, LastSeq: last.Seq, Last: &last})
			}
		}
		fc.write(map[string]any{"type": "convs", "rid": rid, "items": items})
	case "read":
		fc.write(map[string]any{"type": "read", "rid": rid, "conv": conv, "seq": seq})
	default:
		fc.write(map[string]any{"type": "error", "rid": rid, "code": "bad_request"})
	}
}

func (fs *fakeServer) pushLocked(from *fakeConn, m Message, to int64) {
	if fs.dropPush != nil && fs.dropPush(m) {
		return
	}
	for c := range fs.conns {
		if c == from || (c.uid != to && c.uid != m.From) {
			continue
		}
		f := map[string]any{"type": "msg", "conv": m.Conv, "seq": m.Seq, "from": m.From, "ts": m.TS, "kind": m.Kind, "body": m.Body, "cmid": m.CMID}
		c.write(f)
		if fs.dupPush {
			c.write(f)
		}
	}
}

// closeAll closes every connection with code (0: drop TCP without a close frame).
func (fs *fakeServer) closeAll(code int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for c := range fs.conns {
		if code != 0 {
			c.wmu.Lock()
			c.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""))
			c.wmu.Unlock()
		}
		c.ws.NetConn().Close()
	}
}

// store adds a message directly (as if sent by another client while this
// one was away), without pushing it.
func (fs *fakeServer) store(from, to int64, body string) Message {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	cv := directConv(from, to)
	m := Message{Conv: cv, Seq: int64(len(fs.msgs[cv]) + 1), From: from, TS: 1, Kind: "text", Body: body, CMID: "x" + body}
	fs.msgs[cv] = append(fs.msgs[cv], m)
	return m
}
