package web_test

// Real-browser tests of the chat view's conveniences: desktop
// notifications, the "New messages" line and the jump button, the open chat
// restored after a reload, and the body limit. They need nothing beyond
// protocol version 1, so they run against every server.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// pageHooks runs before the app in every document of a tab. A headless tab
// is never hidden and shows no notification, so the test drives
// document.visibilityState itself (__setHidden fires visibilitychange like
// the browser does) and records the calls the app makes to the real
// Notification API, which it still reaches.
const pageHooks = `(() => {
  const log = (window.__test = { asked: 0, shown: [], hidden: false });
  Object.defineProperty(Document.prototype, "visibilityState", { configurable: true, get() { return log.hidden ? "hidden" : "visible"; } });
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get() { return log.hidden; } });
  window.__setHidden = (h) => { log.hidden = h; document.dispatchEvent(new Event("visibilitychange")); };
  const Real = window.Notification;
  if (typeof Real !== "function") return;
  window.Notification = new Proxy(Real, {
    construct(target, args) {
      const o = args[1] || {};
      log.shown.push({ title: String(args[0]), body: String(o.body || ""), tag: String(o.tag || "") });
      return Reflect.construct(target, args);
    },
    get(target, prop) {
      if (prop === "requestPermission") return (...a) => { log.asked++; return target.requestPermission(...a); };
      return Reflect.get(target, prop, target);
    },
  });
})();`

// addPageHooks installs pageHooks in the tab for every later navigation.
func addPageHooks(t *testing.T, ctx context.Context) {
	t.Helper()
	do(t, ctx, "install page hooks", func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: pageHooks})
		return chromedp.Void{}, err
	})
}

// grantNotifications answers the tab's permission request for origin with
// "granted", as a user accepting the browser's prompt would.
func grantNotifications(t *testing.T, ctx context.Context, origin string) {
	t.Helper()
	c := chromedp.FromContext(ctx)
	_, err := cdp.Call(ctx, c.Browser, browser.SetPermission, browser.SetPermissionParams{
		Permission:       &browser.PermissionDescriptor{Name: "notifications"},
		Setting:          browser.PermissionSettingGranted,
		Origin:           origin,
		BrowserContextID: c.BrowserContextID,
	})
	if err != nil {
		t.Fatalf("grant notifications: %v", err)
	}
}

func setHidden(t *testing.T, ctx context.Context, hidden bool) {
	t.Helper()
	do(t, ctx, fmt.Sprintf("hidden=%v", hidden), chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`window.__setHidden(%v)`, hidden)))
}

type shownNotification struct {
	Title, Body, Tag string
}

// TestBrowserNotifications: permission is asked only when the user clicks
// the bell, never on load; afterwards a message from someone else shows a
// notification only while the tab is hidden.
func TestBrowserNotifications(t *testing.T) {
	browserCtx := newBrowser(t)
	srv := startServer(t)
	bobWS := connectUser(t, srv, "bob")
	ctx := newTab(t, browserCtx, 1200, 800)
	addPageHooks(t, ctx)
	alice := login(t, ctx, srv.base, "alice")
	conv := directConv(alice.uid, bobWS.uid)

	waitFor(t, ctx, "the bell offers notifications", `!document.getElementById("notify-btn").hidden`)
	if asked := eval[int](t, ctx, `window.__test.asked`); asked != 0 {
		t.Fatalf("permission asked %d times without a click", asked)
	}
	// A reload does not ask either.
	do(t, ctx, "reload", chromedp.Reload())
	alice.waitConn(t, "online")
	if asked := eval[int](t, ctx, `window.__test.asked`); asked != 0 {
		t.Fatalf("permission asked on reload")
	}

	grantNotifications(t, ctx, srv.base)
	do(t, ctx, "click the bell", chromedp.Click(chromedp.CSS("#notify-btn")))
	waitFor(t, ctx, "permission asked once, bell gone", `window.__test.asked === 1 && document.getElementById("notify-btn").hidden`)

	// Visible tab: no notification.
	bobWS.say(to(&wsUser{uid: alice.uid}), "while you look")
	alice.waitBadge(t, conv, 1)
	// Hidden tab: a notification with the sender and the text.
	setHidden(t, ctx, true)
	bobWS.say(to(&wsUser{uid: alice.uid}), "while you are away")
	waitFor(t, ctx, "a notification", `window.__test.shown.length >= 1`)
	shown := eval[[]shownNotification](t, ctx, `window.__test.shown`)
	if len(shown) != 1 || shown[0].Title != "bob" || shown[0].Body != "while you are away" || shown[0].Tag != conv {
		t.Fatalf("notifications %+v, want one from bob with the hidden-tab message", shown)
	}
	// The user's own messages (from another device) notify nobody.
	aliceWS := connectUser(t, srv, "alice")
	aliceWS.say(to(bobWS), "from my phone")
	bobWS.say(to(aliceWS), "and a reply")
	waitFor(t, ctx, "the reply notifies", `window.__test.shown.length >= 2`)
	shown = eval[[]shownNotification](t, ctx, `window.__test.shown`)
	if len(shown) != 2 || shown[1].Body != "and a reply" {
		t.Fatalf("notifications %+v, want the reply only", shown)
	}
	setHidden(t, ctx, false)
}

// TestBrowserNewMessagesDivider: a chat opened with unread messages shows
// "New messages" above the first of them; messages arriving while the
// reader is scrolled up get the line and a jump button with their count,
// which scrolls to the bottom.
func TestBrowserNewMessagesDivider(t *testing.T) {
	browserCtx := newBrowser(t)
	srv := startServer(t)
	bobWS := connectUser(t, srv, "bob")
	alice := login(t, newTab(t, browserCtx, 1200, 700), srv.base, "alice")
	aliceTo := to(&wsUser{uid: alice.uid})
	conv := directConv(alice.uid, bobWS.uid)
	for i := 1; i <= 3; i++ {
		bobWS.say(aliceTo, fmt.Sprintf("early %d", i))
	}
	alice.waitBadge(t, conv, 3)
	alice.openConv(t, conv)
	alice.waitMsg(t, "early 3")
	alice.waitTotal(t, 0)
	// Read: closing and reopening shows no line.
	do(t, alice.ctx, "close", chromedp.Evaluate[chromedp.Void](`document.getElementById("back-btn").click()`))
	for i := 1; i <= 2; i++ {
		bobWS.say(aliceTo, fmt.Sprintf("unread %d", i))
	}
	alice.waitBadge(t, conv, 2)
	alice.openConv(t, conv)
	alice.waitMsg(t, "unread 2")
	waitFor(t, alice.ctx, "the line above the first unread",
		`document.getElementById("new-divider")?.nextElementSibling?.querySelector(".body")?.textContent === "unread 1"`)

	// Fill the chat so it scrolls, at the bottom: no jump button.
	for i := 1; i <= 40; i++ {
		bobWS.say(aliceTo, fmt.Sprintf("filler %d", i))
	}
	alice.waitMsg(t, "filler 40")
	waitFor(t, alice.ctx, "at the bottom, no jump button", `document.getElementById("jump-btn").hidden`)
	do(t, alice.ctx, "send (answering clears the line)", chromedp.SendKeys(chromedp.CSS("#input"), "ok\n"))
	alice.waitMsg(t, "ok")
	waitFor(t, alice.ctx, "line gone", `document.getElementById("new-divider") === null`)

	// Scrolled up: a new message gets the line and the button counts it.
	do(t, alice.ctx, "scroll up", chromedp.Evaluate[chromedp.Void](`document.getElementById("messages").scrollTop = 0`))
	waitFor(t, alice.ctx, "jump button while scrolled up", `!document.getElementById("jump-btn").hidden`)
	bobWS.say(aliceTo, "below you")
	bobWS.say(aliceTo, "and another")
	alice.waitMsg(t, "and another")
	waitFor(t, alice.ctx, "count 2 on the button", `document.getElementById("jump-count").dataset.count === "2" && !document.getElementById("jump-count").hidden`)
	waitFor(t, alice.ctx, "line above the first new one",
		`document.getElementById("new-divider")?.nextElementSibling?.querySelector(".body")?.textContent === "below you"`)
	if top := eval[float64](t, alice.ctx, `document.getElementById("messages").scrollTop`); top > 200 {
		t.Errorf("the reader was moved: scrollTop %v", top)
	}
	do(t, alice.ctx, "jump", chromedp.Click(chromedp.CSS("#jump-btn")))
	waitFor(t, alice.ctx, "at the bottom, button gone",
		`(() => { const b = document.getElementById("messages"); return b.scrollHeight - b.scrollTop - b.clientHeight < 80 && document.getElementById("jump-btn").hidden; })()`)
}

// TestBrowserRestoresOpenChat: a reload reopens the chat that was open in
// the tab; a closed chat stays closed.
func TestBrowserRestoresOpenChat(t *testing.T) {
	browserCtx := newBrowser(t)
	srv := startServer(t)
	alice := login(t, newTab(t, browserCtx, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browserCtx, 1200, 800), srv.base, "bob")
	conv := directConv(alice.uid, bob.uid)
	alice.openPeer(t, bob)
	alice.send(t, "remember me")
	alice.waitMsg(t, "remember me")

	do(t, alice.ctx, "reload", chromedp.Reload())
	alice.waitConn(t, "online")
	waitFor(t, alice.ctx, "the chat is open again", `!document.getElementById("chat-pane").hidden && document.getElementById("chat-title").textContent === "bob"`)
	alice.waitMsg(t, "remember me")
	waitFor(t, alice.ctx, "and marked in the list", fmt.Sprintf(`document.querySelector('#conv-list .conv.active')?.dataset.conv === %q`, conv))
	// Still a working chat.
	alice.send(t, "after the reload")
	bob.openConv(t, conv)
	bob.waitMsg(t, "after the reload")

	// A group chat is restored the same way.
	do(t, alice.ctx, "open lobby", chromedp.Click(chromedp.CSS(`#conv-list .conv[data-conv^="g:"]`)))
	waitFor(t, alice.ctx, "lobby open", `document.getElementById("chat-title").textContent === "lobby"`)
	do(t, alice.ctx, "reload", chromedp.Reload())
	alice.waitConn(t, "online")
	waitFor(t, alice.ctx, "lobby open again", `!document.getElementById("chat-pane").hidden && document.getElementById("chat-title").textContent === "lobby"`)

	// Closed, then reloaded: nothing is open.
	do(t, alice.ctx, "close", chromedp.Evaluate[chromedp.Void](`document.getElementById("back-btn").click()`))
	do(t, alice.ctx, "reload", chromedp.Reload())
	alice.waitConn(t, "online")
	waitFor(t, alice.ctx, "conversations listed", `document.querySelectorAll("#conv-list .conv").length >= 2`)
	if open := eval[bool](t, alice.ctx, `!document.getElementById("chat-pane").hidden`); open {
		t.Fatal("a closed chat was reopened after the reload")
	}
}

// TestBrowserBodyLimit: a draft over the server's max_body says so, with
// the limit in bytes, and cannot be sent; once it fits it goes out.
func TestBrowserBodyLimit(t *testing.T) {
	browserCtx := newBrowser(t)
	srv := startServer(t)
	srv.Kill()
	srv.Args = append(srv.Args, "--max-body", "100")
	srv.Restart()
	alice := login(t, newTab(t, browserCtx, 1200, 800), srv.base, "alice")
	do(t, alice.ctx, "open lobby", chromedp.Click(chromedp.CSS(`#conv-list .conv[data-conv^="g:"]`)))
	waitFor(t, alice.ctx, "the limit comes from welcome", `window.magpie.welcome.max_body === 100`)

	setDraft := func(js string) {
		do(t, alice.ctx, "type", chromedp.Evaluate[chromedp.Void](`(() => { const i = document.getElementById("input"); i.value = `+js+`; i.dispatchEvent(new Event("input")); })()`))
	}
	// 60 characters of 2 bytes each: 120 bytes, over 100 though under 100 characters.
	setDraft(`"é".repeat(60)`)
	waitFor(t, alice.ctx, "the limit is stated", `!document.getElementById("limit-note").hidden`)
	note := eval[string](t, alice.ctx, `document.getElementById("limit-note").textContent`)
	if !strings.Contains(note, "120 bytes") || !strings.Contains(note, "100 bytes") {
		t.Errorf("limit note %q does not state the size and the limit", note)
	}
	if !eval[bool](t, alice.ctx, `document.getElementById("send-btn").disabled`) {
		t.Error("send button enabled for a message over the limit")
	}
	do(t, alice.ctx, "press Enter", chromedp.SendKeys(chromedp.CSS("#input"), "\n"))
	if n := eval[int](t, alice.ctx, `document.querySelectorAll("#msg-list .msg.pending, #msg-list .msg.failed").length`); n != 0 {
		t.Fatalf("%d messages queued over the limit", n)
	}
	// Exactly the limit is fine.
	setDraft(`"é".repeat(50)`)
	waitFor(t, alice.ctx, "note gone", `document.getElementById("limit-note").hidden && !document.getElementById("send-btn").disabled`)
	do(t, alice.ctx, "send", chromedp.Click(chromedp.CSS("#send-btn")))
	alice.waitMsg(t, strings.Repeat("é", 50))
}
