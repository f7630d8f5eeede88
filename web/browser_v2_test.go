package web_test

// Real-browser tests of the protocol version 2 UI (PROTOCOL §13–§16):
// private and public groups with owners, membership and name changes as
// notes, read receipts, typing and presence. They skip, saying so, while
// the server announces version 1.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// startV2Server starts `magpie serve --demo` plus args and skips the test
// unless the server speaks protocol version 2. The version is asked first,
// without args: a version 1 server refuses the version 2 flags.
var startV2Server = func(t *testing.T, args ...string) *chatServer {
	t.Helper()
	srv := startServer(t)
	if v := serverVersion(t, srv); v < 2 {
		t.Skipf("the server announces protocol version %d; this test needs version 2 (§13–§16, the server side of issue 13)", v)
	}
	if len(args) > 0 {
		srv.Kill()
		srv.Args = append(srv.Args, args...)
		srv.Restart()
	}
	return srv
}

// noteExpr is true when the open chat shows a group note with exactly text.
func noteExpr(text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll("#msg-list .note")].some(e => e.textContent === %s)`, jsString(text))
}

func (u *user) waitNote(t *testing.T, text string) {
	t.Helper()
	waitFor(t, u.ctx, u.name+" sees the note "+text, noteExpr(text))
}

// createGroup makes a group through the dialog with the given members and
// returns its conversation id; the creator's chat opens on it.
func (u *user) createGroup(t *testing.T, name string, public bool, members ...*user) string {
	t.Helper()
	do(t, u.ctx, u.name+" opens the group dialog",
		chromedp.Click(chromedp.CSS("#group-btn")),
		chromedp.WaitVisible(chromedp.CSS("#group-name")),
		chromedp.SendKeys(chromedp.CSS("#group-name"), name),
	)
	for _, m := range members {
		sel := fmt.Sprintf(`#member-list input[value="%d"]`, m.uid)
		do(t, u.ctx, "pick "+m.name, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel)))
	}
	if public {
		do(t, u.ctx, "public", chromedp.Click(chromedp.CSS("#group-public")))
	}
	do(t, u.ctx, "create", chromedp.Click(chromedp.CSS("#group-submit")), chromedp.WaitVisible(chromedp.CSS("#chat-pane")))
	waitFor(t, u.ctx, "group open", fmt.Sprintf(`document.getElementById("chat-title").textContent === %s`, jsString(name)))
	return eval[string](t, u.ctx, `document.querySelector("#conv-list .conv.active").dataset.conv`)
}

// joinByID tries to join group gid through the dialog.
func (u *user) joinByID(t *testing.T, gid string) {
	t.Helper()
	do(t, u.ctx, u.name+" joins "+gid,
		chromedp.Click(chromedp.CSS("#group-btn")),
		chromedp.Click(chromedp.CSS("#gtab-join")),
		chromedp.SetValue(chromedp.CSS("#group-id"), gid),
		chromedp.Click(chromedp.CSS("#group-submit")),
	)
}

func (u *user) openInfo(t *testing.T) {
	t.Helper()
	do(t, u.ctx, u.name+" opens the group info", chromedp.Click(chromedp.CSS("#info-btn")), chromedp.WaitVisible(chromedp.CSS("#info-members")))
}

func (u *user) closeInfo(t *testing.T) {
	t.Helper()
	do(t, u.ctx, u.name+" closes the group info", chromedp.Click(chromedp.CSS("#info-done")))
	waitFor(t, u.ctx, "info closed", `!document.getElementById("info-dialog").open`)
}

func (u *user) waitSub(t *testing.T, what, cond string) {
	t.Helper()
	waitFor(t, u.ctx, u.name+": header says "+what, `(() => { const s = document.getElementById("chat-sub"); return `+cond+`; })()`)
}

// lobbyConv returns the demo lobby's conversation id from u's list.
func (u *user) lobbyConv(t *testing.T) string {
	t.Helper()
	return eval[string](t, u.ctx, `[...document.querySelectorAll("#conv-list .conv")].find(e => e.querySelector(".name").textContent === "lobby").dataset.conv`)
}

// TestBrowserV2GroupAdmin: a private group. Members are told of every
// change live (no reload) and see it as a note; only the owner renames and
// removes; any member adds; nobody joins by id; a removed member keeps the
// chat without a composer.
func TestBrowserV2GroupAdmin(t *testing.T) {
	browser := newBrowser(t)
	srv := startV2Server(t)
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")
	carol := login(t, newTab(t, browser, 1200, 800), srv.base, "carol")

	conv := alice.createGroup(t, "team", false, bob)
	gid := strings.TrimPrefix(conv, "g:")
	alice.waitNote(t, "You created the group “team”")
	alice.waitSub(t, "private, 2 members", `s.textContent === "Group #`+gid+` · 2 members · private"`)

	// Bob is told at once: the group is in his list, by name, one unread.
	waitFor(t, bob.ctx, "bob's list shows the group by name", fmt.Sprintf(`document.querySelector('#conv-list .conv[data-conv=%q] .name')?.textContent === "team"`, conv))
	bob.waitBadge(t, conv, 1)
	bob.openConv(t, conv)
	bob.waitNote(t, "alice created the group “team”")

	// A private group cannot be joined by id.
	carol.joinByID(t, gid)
	waitFor(t, carol.ctx, "carol is refused", `!document.getElementById("group-error").hidden && document.getElementById("group-error").textContent.includes("private")`)
	do(t, carol.ctx, "carol closes the dialog", chromedp.Click(chromedp.CSS("#group-cancel")))

	// Bob, a member: sees who is in, may add, may not rename or remove.
	bob.openInfo(t)
	waitFor(t, bob.ctx, "bob sees both members", fmt.Sprintf(`document.querySelectorAll("#info-members li.member").length === 2 && document.querySelector('#info-members li[data-uid="%d"] .owner') !== null`, alice.uid))
	if eval[bool](t, bob.ctx, `!document.getElementById("rename-box").hidden || document.querySelectorAll("#info-members .remove-btn").length > 0`) {
		t.Fatal("a member who is not the owner is offered rename or remove")
	}
	if eval[bool](t, bob.ctx, `document.getElementById("add-box").hidden`) {
		t.Fatal("a member is not offered to add people")
	}
	bob.closeInfo(t)

	// Alice, the owner, adds carol.
	alice.openInfo(t)
	waitFor(t, alice.ctx, "owner tools", fmt.Sprintf(`!document.getElementById("rename-box").hidden && document.querySelector('#info-members li[data-uid="%d"] .remove-btn') !== null`, bob.uid))
	pick := fmt.Sprintf(`#add-list input[value="%d"]`, carol.uid)
	do(t, alice.ctx, "alice adds carol", chromedp.WaitVisible(chromedp.CSS(pick)), chromedp.Click(chromedp.CSS(pick)), chromedp.Click(chromedp.CSS("#add-btn")))
	waitFor(t, alice.ctx, "carol is a member", fmt.Sprintf(`document.querySelector('#info-members li[data-uid="%d"]') !== null`, carol.uid))
	alice.waitNote(t, "You added carol")
	bob.waitNote(t, "alice added carol")
	// Carol is told live and reads the group from its start.
	waitFor(t, carol.ctx, "carol's list shows the group", fmt.Sprintf(`document.querySelector('#conv-list .conv[data-conv=%q] .name')?.textContent === "team"`, conv))
	carol.openConv(t, conv)
	carol.waitNote(t, "alice created the group “team”")
	carol.waitNote(t, "alice added you")

	// Rename: every member's title follows.
	do(t, alice.ctx, "alice renames",
		chromedp.SetValue(chromedp.CSS("#rename-input"), "crew"),
		chromedp.Click(chromedp.CSS("#rename-btn")),
	)
	alice.waitNote(t, "You renamed the group to crew")
	for _, u := range []*user{bob, carol} {
		u.waitNote(t, "alice renamed the group to crew")
		waitFor(t, u.ctx, u.name+"'s title follows", `document.getElementById("chat-title").textContent === "crew"`)
	}

	// Remove bob: he keeps the chat but not the composer.
	rm := fmt.Sprintf(`#info-members li[data-uid="%d"] .remove-btn`, bob.uid)
	do(t, alice.ctx, "alice removes bob", chromedp.Click(chromedp.CSS(rm)))
	waitFor(t, alice.ctx, "bob gone from the list", fmt.Sprintf(`document.querySelector('#info-members li[data-uid="%d"]') === null`, bob.uid))
	alice.closeInfo(t)
	alice.waitNote(t, "You removed bob")
	carol.waitNote(t, "alice removed bob")
	bob.waitNote(t, "alice removed you")
	waitFor(t, bob.ctx, "bob has no composer", `document.getElementById("composer").hidden && !document.getElementById("not-member").hidden`)

	// Carol leaves; alice sees it and is alone.
	do(t, carol.ctx, "carol leaves",
		chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`),
		chromedp.Click(chromedp.CSS("#leave-btn")),
	)
	alice.waitNote(t, "carol left")
	alice.waitSub(t, "1 member", `s.textContent.includes("· 1 member ·")`)
	alice.send(t, "anyone?")
	alice.waitMsg(t, "anyone?")
}

// TestBrowserV2PublicGroups: a public group is joined by id; the demo
// lobby is public.
func TestBrowserV2PublicGroups(t *testing.T) {
	browser := newBrowser(t)
	srv := startV2Server(t)
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	carol := login(t, newTab(t, browser, 1200, 800), srv.base, "carol")

	conv := alice.createGroup(t, "open house", true)
	gid := strings.TrimPrefix(conv, "g:")
	alice.waitSub(t, "public", `s.textContent.endsWith("· public")`)
	carol.joinByID(t, gid)
	waitFor(t, carol.ctx, "carol is in", `document.getElementById("chat-title").textContent === "open house"`)
	carol.waitNote(t, "You joined")
	carol.waitTotal(t, 0)
	alice.waitNote(t, "carol joined")
	carol.send(t, "hi all")
	alice.waitMsg(t, "hi all")

	// Someone new joins the demo lobby by its id.
	lobby := alice.lobbyConv(t)
	connectUser(t, srv, "dave")
	dave := login(t, newTab(t, browser, 1200, 800), srv.base, "dave")
	dave.joinByID(t, strings.TrimPrefix(lobby, "g:"))
	waitFor(t, dave.ctx, "dave is in the lobby", `document.getElementById("chat-title").textContent === "lobby"`)
	dave.waitNote(t, "You joined")
}

// TestBrowserV2ReadReceipts: ✓ when stored, ✓✓ once the peer read it; in
// a small group "read by N", and ✓✓ once every member read it.
func TestBrowserV2ReadReceipts(t *testing.T) {
	browser := newBrowser(t)
	srv := startV2Server(t)
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")
	carol := login(t, newTab(t, browser, 1200, 800), srv.base, "carol")
	status := func(u *user, text string) string {
		return eval[string](t, u.ctx, fmt.Sprintf(`[...document.querySelectorAll("#msg-list .msg.mine[data-seq]")].find(e => e.querySelector(".body").textContent === %s)?.dataset.status || ""`, jsString(text)))
	}
	waitStatus := func(u *user, text, want string) {
		t.Helper()
		waitFor(t, u.ctx, fmt.Sprintf("%s: %q is %s", u.name, text, want), fmt.Sprintf(`[...document.querySelectorAll("#msg-list .msg.mine[data-seq]")].some(e => e.querySelector(".body").textContent === %s && e.dataset.status === %q)`, jsString(text), want))
	}

	conv := directConv(alice.uid, bob.uid)
	alice.openPeer(t, bob)
	alice.send(t, "did you read this?")
	alice.waitMsg(t, "did you read this?")
	if s := status(alice, "did you read this?"); s != "sent" {
		t.Fatalf("before bob opens the chat: status %q, want sent", s)
	}
	bob.openConv(t, conv)
	bob.waitMsg(t, "did you read this?")
	waitStatus(alice, "did you read this?", "read")

	// A group of three.
	g := alice.createGroup(t, "trio", false, bob, carol)
	alice.send(t, "team update")
	alice.waitMsg(t, "team update")
	waitStatus(alice, "team update", "sent")
	bob.openConv(t, g)
	bob.waitMsg(t, "team update")
	waitFor(t, alice.ctx, "read by 1", `document.querySelector("#msg-list .readby")?.textContent === "read by 1"`)
	if s := status(alice, "team update"); s != "sent" {
		t.Fatalf("read by one of two: status %q, want sent", s)
	}
	carol.openConv(t, g)
	carol.waitMsg(t, "team update")
	waitFor(t, alice.ctx, "read by 2", `document.querySelector("#msg-list .readby")?.textContent === "read by 2"`)
	waitStatus(alice, "team update", "read")
	// A reload learns the same from the server (receipts request).
	do(t, alice.ctx, "reload", chromedp.Reload())
	alice.waitConn(t, "online")
	waitStatus(alice, "team update", "read")
}

// TestBrowserV2Typing: "typing…" under the chat title while the other
// types; it ends as soon as the message arrives, or by itself.
func TestBrowserV2Typing(t *testing.T) {
	browser := newBrowser(t)
	srv := startV2Server(t)
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")
	conv := directConv(alice.uid, bob.uid)
	bob.openPeer(t, alice)
	bob.send(t, "hello")
	alice.openConv(t, conv)
	alice.waitMsg(t, "hello")

	typing := `document.getElementById("chat-sub").classList.contains("typing")`
	do(t, bob.ctx, "bob types", chromedp.SendKeys(chromedp.CSS("#input"), "long answer"))
	alice.waitSub(t, "typing…", `s.textContent === "typing…"`)
	waitFor(t, alice.ctx, "typing in the list too", fmt.Sprintf(`document.querySelector('#conv-list .conv[data-conv=%q] .preview.typing') !== null`, conv))
	// The message ends it at once: record when each happens in the page.
	do(t, alice.ctx, "watch", chromedp.Evaluate[chromedp.Void](`(() => {
	  window.__seen = {};
	  const tick = () => {
	    const now = performance.now();
	    const msg = [...document.querySelectorAll("#msg-list .msg[data-seq] .body")].some(e => e.textContent === "long answer");
	    if (msg && window.__seen.msg === undefined) window.__seen.msg = now;
	    if (msg && !`+typing+` && window.__seen.off === undefined) window.__seen.off = now;
	    if (window.__seen.off === undefined) setTimeout(tick, 10);
	  };
	  tick();
	})()`))
	do(t, bob.ctx, "bob sends", chromedp.SendKeys(chromedp.CSS("#input"), "\n"))
	alice.waitMsg(t, "long answer")
	waitFor(t, alice.ctx, "indicator off", `window.__seen.off !== undefined`)
	if gap := eval[float64](t, alice.ctx, `window.__seen.off - window.__seen.msg`); gap > 1500 {
		t.Fatalf("typing… stayed %.0f ms after the message (the 6 s expiry, not the message, ended it)", gap)
	}

	// Typing and stopping: the indicator goes away by itself.
	do(t, bob.ctx, "bob types and stops", chromedp.SendKeys(chromedp.CSS("#input"), "h"))
	alice.waitSub(t, "typing…", `s.textContent === "typing…"`)
	start := time.Now()
	waitFor(t, alice.ctx, "indicator expired", `!`+typing)
	if el := time.Since(start); el < 3*time.Second {
		t.Errorf("the indicator went away after %v, before the 6 s expiry", el)
	}

	// In a group the header names the typist.
	lobby := alice.lobbyConv(t)
	alice.openConv(t, lobby)
	bob.openConv(t, lobby)
	do(t, bob.ctx, "bob types in the lobby", chromedp.SendKeys(chromedp.CSS("#input"), "x"))
	alice.waitSub(t, "bob is typing…", `s.textContent === "bob is typing…"`)
}

// TestBrowserV2Presence: an online dot and "online" for a direct chat's
// peer; "last seen …" once they are gone; online again when they return.
func TestBrowserV2Presence(t *testing.T) {
	browser := newBrowser(t)
	srv := startV2Server(t, "--presence-grace", "1s")
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")
	conv := directConv(alice.uid, bob.uid)
	alice.openPeer(t, bob)
	alice.send(t, "there?")
	alice.waitMsg(t, "there?")

	alice.waitSub(t, "online", `s.textContent === "online"`)
	waitFor(t, alice.ctx, "green dot", `document.getElementById("chat-presence").classList.contains("on") && !document.getElementById("chat-presence").hidden`)
	waitFor(t, alice.ctx, "dot in the list", fmt.Sprintf(`document.querySelector('#conv-list .conv[data-conv=%q] .presence-dot.on') !== null`, conv))

	// Bob's client closes its connection (navigating away may keep the
	// page, and its socket, in the back-forward cache).
	do(t, bob.ctx, "bob leaves", chromedp.Evaluate[chromedp.Void](`window.magpie.stop()`))
	alice.waitSub(t, "last seen", `s.textContent.startsWith("last seen")`)
	if on := eval[bool](t, alice.ctx, `document.getElementById("chat-presence").classList.contains("on")`); on {
		t.Error("the dot stays green while bob is offline")
	}
	// And back: a reload reconnects with the tab's session.
	do(t, bob.ctx, "bob returns", chromedp.Reload())
	bob.waitConn(t, "online")
	alice.waitSub(t, "online again", `s.textContent === "online"`)
}
