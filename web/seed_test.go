package web_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsUser is a minimal protocol client for seeding data from Go.
type wsUser struct {
	t    *testing.T
	name string
	uid  int
	c    *websocket.Conn
	n    int
}

func apiPost(t *testing.T, srv *chatServer, path string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	res, err := http.Post(srv.HTTPURL()+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

// serverVersion returns the protocol version srv announces in welcome.
func serverVersion(t *testing.T, srv *chatServer) int {
	t.Helper()
	code, login := apiPost(t, srv, "/api/login", map[string]string{"username": "alice", "password": "password"})
	if code != 200 {
		t.Fatalf("login alice: %d %v", code, login)
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, _, err := d.Dial(login["ws_url"].(string), http.Header{"Origin": {srv.HTTPURL()}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	u := &wsUser{t: t, name: "alice", c: c}
	u.write(map[string]any{"type": "auth", "token": login["token"]})
	v, _ := u.await("welcome", "")["version"].(float64)
	return int(v)
}

// connectUser registers name (when missing), logs in and opens a WebSocket.
func connectUser(t *testing.T, srv *chatServer, name string) *wsUser {
	t.Helper()
	creds := map[string]string{"username": name, "password": "password"}
	if code, _ := apiPost(t, srv, "/api/register", creds); code != 201 && code != 409 {
		t.Fatalf("register %s: %d", name, code)
	}
	code, login := apiPost(t, srv, "/api/login", creds)
	if code != 200 {
		t.Fatalf("login %s: %d %v", name, code, login)
	}
	hdr := http.Header{"Origin": {srv.HTTPURL()}}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, _, err := d.Dial(login["ws_url"].(string), hdr)
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	u := &wsUser{t: t, name: name, c: c}
	u.write(map[string]any{"type": "auth", "token": login["token"]})
	w := u.await("welcome", "")
	u.uid = int(w["uid"].(float64))
	return u
}

func (u *wsUser) write(f map[string]any) {
	u.t.Helper()
	if err := u.c.WriteJSON(f); err != nil {
		u.t.Fatalf("%s write: %v", u.name, err)
	}
}

// await reads frames until one of type typ (with rid or cmid key when
// given) arrives, acking pushes on the way.
func (u *wsUser) await(typ, key string) map[string]any {
	u.t.Helper()
	_ = u.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		var f map[string]any
		if err := u.c.ReadJSON(&f); err != nil {
			u.t.Fatalf("%s waiting for %s: %v", u.name, typ, err)
		}
		switch f["type"] {
		case "msg":
			u.write(map[string]any{"type": "ack", "conv": f["conv"], "seq": f["seq"]})
		case "error":
			u.t.Fatalf("%s: error frame %v", u.name, f)
		}
		if f["type"] == typ && (key == "" || f["rid"] == key || f["cmid"] == key) {
			return f
		}
	}
}

func (u *wsUser) request(f map[string]any) map[string]any {
	u.t.Helper()
	u.n++
	rid := fmt.Sprintf("seed-%d", u.n)
	f["rid"] = rid
	u.write(f)
	typ := f["type"].(string)
	if typ == "group_create" || typ == "group_join" || typ == "group_members" {
		typ = "group"
	}
	return u.await(typ, rid)
}

// say sends body to a uid (to) or a group and waits until it is stored.
func (u *wsUser) say(target map[string]any, body string) {
	u.t.Helper()
	u.n++
	cmid := fmt.Sprintf("seed-%s-%d", u.name, u.n)
	f := map[string]any{"type": "send", "cmid": cmid, "body": body}
	for k, v := range target {
		f[k] = v
	}
	u.write(f)
	u.await("sent", cmid)
}

func to(u *wsUser) map[string]any  { return map[string]any{"to": u.uid} }
func group(gid int) map[string]any { return map[string]any{"group": gid} }

// seedDemo fills a --demo server with a few believable conversations and
// returns the uids by name.
func seedDemo(t *testing.T, srv *chatServer) map[string]int {
	t.Helper()
	alice := connectUser(t, srv, "alice")
	bob := connectUser(t, srv, "bob")
	carol := connectUser(t, srv, "carol")
	dave := connectUser(t, srv, "dave")
	erin := connectUser(t, srv, "erin")

	lobby := 0
	for _, it := range alice.request(map[string]any{"type": "convs"})["items"].([]any) {
		m := it.(map[string]any)
		if m["name"] == "lobby" {
			lobby = int(m["group"].(float64))
		}
	}
	if lobby == 0 {
		t.Fatal("demo group lobby not found")
	}
	design := int(erin.request(map[string]any{"type": "group_create", "name": "Design crew", "members": []int{alice.uid, carol.uid}})["group"].(float64))

	erin.say(group(design), "New mockups for the mobile layout are up.")
	carol.say(group(design), "Love the new conversation list!")
	alice.say(group(design), "Looks great. Ship it.")
	carol.say(group(lobby), "Morning all!")
	bob.say(group(lobby), "Deploy is green, the web UI goes out today.")
	carol.say(group(lobby), "<script>alert('hi')</script> shows up as plain text, nice")
	bob.say(to(alice), "Hey Alice! Are we still on for the design review tomorrow?")
	alice.say(to(bob), "Yes, 10:00 works. I'll bring the latency numbers.")
	bob.say(to(alice), "Did the fan-out benchmark finish?")
	alice.say(to(bob), "It did. The numbers are going into docs/BENCHMARKS.md.\nThe report is almost done.")
	carol.say(to(alice), "Can you look at my PR when you have a minute?")
	dave.say(to(alice), "Lunch at 12:30?")
	dave.say(to(alice), "The new place around the corner")
	bob.say(to(alice), "Perfect. Send me the report when it's ready?")
	return map[string]int{"alice": alice.uid, "bob": bob.uid, "carol": carol.uid, "dave": dave.uid, "erin": erin.uid}
}
