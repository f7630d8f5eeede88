package web_test

// Real-browser tests: Debian's chromium, driven by chromedp, against a real
// `magpie serve` child process (internal/testserver). Without chromium the
// tests skip, unless CI is set: then they fail.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/magpie-im/magpie/internal/testserver"
	"github.com/magpie-im/magpie/web"
)

var screenshotPath = flag.String("screenshot", "", "write a screenshot of the chat view to this file (TestScreenshot)")

// step is the deadline for one UI expectation; the machine is small and
// shared, and the server may be built with -race.
const step = 45 * time.Second

func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found and CI is set: install it (apt-get install -y chromium)")
	}
	t.Skip("chromium not found (apt-get install -y chromium)")
	return ""
}

// shared is the one headless chromium of the test process; every test
// opens its tabs in fresh browser contexts (isolated storage), so sharing
// the process costs no isolation and saves a browser start per test.
var shared struct {
	once   sync.Once
	ctx    context.Context
	cancel func()
	dir    string
	err    error
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if shared.cancel != nil {
		shared.cancel()
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// newBrowser returns the root context of the shared chromium, starting it
// on first use. Tabs are made with newTab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	exe := chromiumPath(t)
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "magpie-chromium-")
		if shared.err != nil {
			return
		}
		opts := []chromedp.ExecAllocatorOption{
			chromedp.ExecPath(exe),
			chromedp.Headless,
			chromedp.NoSandbox,
			chromedp.DisableGPU,
			chromedp.NoFirstRun,
			chromedp.NoDefaultBrowserCheck,
			chromedp.UserDataDir(shared.dir),
			chromedp.Flag("disable-background-networking", true),
			chromedp.Flag("disable-component-update", true),
			chromedp.Flag("disable-sync", true),
			chromedp.Flag("disable-dev-shm-usage", true),
			chromedp.Flag("disable-extensions", true),
			// Several tabs are active at once; none may be throttled as hidden.
			chromedp.Flag("disable-background-timer-throttling", true),
			chromedp.Flag("disable-renderer-backgrounding", true),
			chromedp.Flag("disable-backgrounding-occluded-windows", true),
		}
		actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
		bctx, cancelBrowser := chromedp.NewContext(actx)
		shared.ctx = bctx
		shared.cancel = func() {
			cancelBrowser()
			cancelAlloc()
		}
		// Start the browser now, on a context without a deadline: the
		// first Run's context owns the browser.
		shared.err = chromedp.Do(bctx)
	})
	if shared.err != nil {
		t.Fatalf("start chromium: %v", shared.err)
	}
	return shared.ctx
}

// newTab opens a tab in a fresh browser context (its own cookies and
// storage, like a second person's browser) at a given viewport size.
func newTab(t *testing.T, browser context.Context, w, h int64) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(w, h)); err != nil {
		t.Fatalf("new tab: %v", err)
	}
	return ctx
}

// do runs actions with the step deadline.
func do(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, step)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, pageState(ctx))
	}
}

// waitFor polls a JavaScript expression until it is truthy.
func waitFor(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, step+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(sctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(step)))
	if err != nil {
		t.Fatalf("waiting for %s: %v\n%s", what, err, pageState(ctx))
	}
}

// eval evaluates expr and decodes the result.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, step)
	defer cancel()
	v, err := chromedp.Run(sctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("eval %s: %v", expr, err)
	}
	return v
}

// pageState describes the page for failure messages.
func pageState(ctx context.Context) string {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(sctx, chromedp.Evaluate[string](`JSON.stringify({
		conn: document.getElementById("conn")?.dataset.state,
		sdk: window.magpie ? window.magpie.state : null,
		total: document.getElementById("total-unread")?.dataset.count,
		convs: [...document.querySelectorAll(".conv")].map(e => e.dataset.conv + ":" + (e.querySelector(".badge")?.textContent || "0")),
		msgs: [...document.querySelectorAll("#msg-list .msg")].map(e => (e.dataset.seq || "pending") + ":" + e.querySelector(".body").textContent).slice(-8),
		error: document.getElementById("auth-error")?.textContent,
	})`))
	if err != nil {
		return "page state unavailable: " + err.Error()
	}
	return "page: " + s
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// user is one person in one browser context.
type user struct {
	name string
	uid  int
	ctx  context.Context
}

func login(t *testing.T, ctx context.Context, base, name string) *user {
	t.Helper()
	do(t, ctx, "open "+base,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#auth-user")),
		chromedp.SendKeys(chromedp.CSS("#auth-user"), name),
		chromedp.SendKeys(chromedp.CSS("#auth-pass"), "password"),
		chromedp.Click(chromedp.CSS("#auth-submit")),
	)
	waitFor(t, ctx, name+" online", `document.querySelector('#conn[data-state="online"]') !== null`)
	uid := eval[int](t, ctx, `window.magpie.uid`)
	return &user{name: name, uid: uid, ctx: ctx}
}

func directConv(a, b int) string {
	if a > b {
		a, b = b, a
	}
	return fmt.Sprintf("d:%d:%d", a, b)
}

// openPeer opens the direct chat with peer through the People tab.
func (u *user) openPeer(t *testing.T, peer *user) {
	t.Helper()
	do(t, u.ctx, u.name+" opens People", chromedp.Click(chromedp.CSS("#tab-people")))
	sel := fmt.Sprintf(`#people-list .person[data-uid="%d"]`, peer.uid)
	do(t, u.ctx, u.name+" opens chat with "+peer.name,
		chromedp.WaitVisible(chromedp.CSS(sel)),
		chromedp.Click(chromedp.CSS(sel)),
		chromedp.WaitVisible(chromedp.CSS("#chat-pane")),
		chromedp.Click(chromedp.CSS("#tab-chats")),
	)
}

// openConv opens a conversation from the Chats list.
func (u *user) openConv(t *testing.T, conv string) {
	t.Helper()
	sel := fmt.Sprintf(`#conv-list .conv[data-conv=%q]`, conv)
	do(t, u.ctx, u.name+" opens "+conv,
		chromedp.WaitVisible(chromedp.CSS(sel)),
		chromedp.Click(chromedp.CSS(sel)),
		chromedp.WaitVisible(chromedp.CSS("#chat-pane")),
	)
	waitFor(t, u.ctx, u.name+" has "+conv+" open", fmt.Sprintf(`document.querySelector('#conv-list .conv.active')?.dataset.conv === %q`, conv))
}

func (u *user) send(t *testing.T, text string) {
	t.Helper()
	do(t, u.ctx, u.name+" sends "+text,
		chromedp.SendKeys(chromedp.CSS("#input"), text),
		chromedp.Click(chromedp.CSS("#send-btn")),
	)
}

// countMsgs returns how many messages in the open chat have exactly text
// as their body; confirmed only counts those with a seq (stored).
func countMsgsExpr(text string, confirmed bool) string {
	sel := "#msg-list .msg"
	if confirmed {
		sel += "[data-seq]"
	}
	return fmt.Sprintf(`[...document.querySelectorAll(%q)].filter(e => e.querySelector(".body").textContent === %s).length`, sel, jsString(text))
}

func (u *user) waitMsg(t *testing.T, text string) {
	t.Helper()
	waitFor(t, u.ctx, u.name+" sees "+text, countMsgsExpr(text, true)+" >= 1")
}

func (u *user) countMsg(t *testing.T, text string) int {
	t.Helper()
	return eval[int](t, u.ctx, countMsgsExpr(text, false))
}

func badgeExpr(conv string) string {
	return fmt.Sprintf(`(document.querySelector('#conv-list .conv[data-conv=%q] .badge')?.dataset.count || "0")`, conv)
}

func (u *user) waitBadge(t *testing.T, conv string, n int) {
	t.Helper()
	waitFor(t, u.ctx, fmt.Sprintf("%s: badge of %s = %d", u.name, conv, n), badgeExpr(conv)+` === "`+strconv.Itoa(n)+`"`)
}

func (u *user) waitTotal(t *testing.T, n int) {
	t.Helper()
	expr := `(document.getElementById("total-unread").dataset.count || "0") === "` + strconv.Itoa(n) + `"`
	if n == 0 {
		expr = `document.getElementById("total-unread").hidden && ` + expr
	} else {
		expr = `!document.getElementById("total-unread").hidden && ` + expr
	}
	waitFor(t, u.ctx, fmt.Sprintf("%s: total unread = %d", u.name, n), expr)
}

func (u *user) waitConn(t *testing.T, state string) {
	t.Helper()
	waitFor(t, u.ctx, u.name+" "+state, fmt.Sprintf(`document.getElementById("conn").dataset.state === %q`, state))
}

// chatServer is a running magpie and the base URL the browser opens.
type chatServer struct {
	*testserver.Server
	base string
}

// startServer runs `magpie serve --demo` plus args and checks that it
// serves this package's UI at "/" (the binary embeds web.Handler).
func startServer(t *testing.T, args ...string) *chatServer {
	t.Helper()
	srv := testserver.Start(t, append([]string{"--demo"}, args...)...)
	res, err := http.Get(srv.HTTPURL() + "/")
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	want, _ := fs.ReadFile(web.FS(), "index.html")
	if res.StatusCode != 200 || string(body) != string(want) {
		t.Fatalf("magpie serve does not serve the embedded web UI at /: %d %.80q", res.StatusCode, body)
	}
	return &chatServer{Server: srv, base: srv.HTTPURL()}
}

// TestBrowserChatAndUnread: two people in two browser contexts exchange
// messages; unread counts rise while the chat is closed and clear when it
// is opened.
func TestBrowserChatAndUnread(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")
	conv := directConv(alice.uid, bob.uid)

	bob.waitTotal(t, 0)
	alice.openPeer(t, bob)
	alice.send(t, "hi bob")
	alice.waitMsg(t, "hi bob")
	alice.send(t, "are you there?")
	alice.waitMsg(t, "are you there?")

	// Bob has not opened the chat: the unread count rises, live.
	bob.waitBadge(t, conv, 2)
	bob.waitTotal(t, 2)
	waitFor(t, bob.ctx, "bob's preview", fmt.Sprintf(`document.querySelector('.conv[data-conv=%q] .preview').textContent === "are you there?"`, conv))
	waitFor(t, bob.ctx, "bob's title", `document.title === "(2) Magpie"`)

	// Opening it shows the history and clears the counts.
	bob.openConv(t, conv)
	bob.waitMsg(t, "hi bob")
	bob.waitMsg(t, "are you there?")
	bob.waitBadge(t, conv, 0)
	bob.waitTotal(t, 0)

	// With the chat open, new messages are read at once on both sides.
	bob.send(t, "yes, here")
	alice.waitMsg(t, "yes, here")
	alice.waitTotal(t, 0)
	alice.send(t, "great")
	bob.waitMsg(t, "great")
	bob.waitTotal(t, 0)

	// Reload keeps bob signed in, and the server agrees the chat is read.
	do(t, bob.ctx, "reload", chromedp.Reload())
	bob.waitConn(t, "online")
	waitFor(t, bob.ctx, "conv list after reload", fmt.Sprintf(`document.querySelector('.conv[data-conv=%q]') !== null`, conv))
	bob.waitTotal(t, 0)

	// Alice leaves the chat; bob's next messages count as unread for her.
	do(t, alice.ctx, "alice opens People", chromedp.Click(chromedp.CSS("#tab-people")))
	do(t, alice.ctx, "alice closes the chat", chromedp.Evaluate[chromedp.Void](`document.getElementById("back-btn").click()`))
	waitFor(t, alice.ctx, "alice's chat closed", `document.getElementById("chat-pane").hidden`)
	bob.openConv(t, conv)
	bob.send(t, "one more")
	bob.waitMsg(t, "one more")
	do(t, alice.ctx, "alice opens Chats", chromedp.Click(chromedp.CSS("#tab-chats")))
	alice.waitBadge(t, conv, 1)
	alice.waitTotal(t, 1)
	alice.openConv(t, conv)
	alice.waitMsg(t, "one more")
	alice.waitTotal(t, 0)
}

// TestBrowserReconnect: the server is killed mid-conversation. Both pages
// show "reconnecting", messages sent meanwhile wait in the outbox, and after
// the restart both show "online" and every message exactly once.
func TestBrowserReconnect(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")
	conv := directConv(alice.uid, bob.uid)

	alice.openPeer(t, bob)
	alice.send(t, "before the crash")
	bob.openConv(t, conv)
	bob.waitMsg(t, "before the crash")

	srv.Kill()
	alice.waitConn(t, "reconnecting")
	bob.waitConn(t, "reconnecting")
	waitFor(t, alice.ctx, "alice's banner", `!document.getElementById("banner").hidden`)

	alice.send(t, "sent during the outage")
	bob.send(t, "bob wrote this offline")
	waitFor(t, alice.ctx, "alice's pending message", `document.querySelector("#msg-list .msg.pending") !== null`)

	srv.Restart()
	alice.waitConn(t, "online")
	bob.waitConn(t, "online")
	for _, u := range []*user{alice, bob} {
		u.waitMsg(t, "sent during the outage")
		u.waitMsg(t, "bob wrote this offline")
	}
	// A round trip after the catch-up: anything late would be here by now.
	alice.send(t, "after the restart")
	bob.waitMsg(t, "after the restart")
	bob.send(t, "ack")
	alice.waitMsg(t, "ack")
	for _, u := range []*user{alice, bob} {
		for _, text := range []string{"before the crash", "sent during the outage", "bob wrote this offline", "after the restart"} {
			if n := u.countMsg(t, text); n != 1 {
				t.Errorf("%s sees %q %d times, want once\n%s", u.name, text, n, pageState(u.ctx))
			}
		}
		if n := eval[int](t, u.ctx, `document.querySelectorAll("#msg-list .msg.pending").length`); n != 0 {
			t.Errorf("%s still has %d pending messages", u.name, n)
		}
		waitFor(t, u.ctx, u.name+"'s banner gone", `document.getElementById("banner").hidden`)
	}
	// The seqs on screen are gapless: 1..n, each once.
	for _, u := range []*user{alice, bob} {
		seqs := eval[[]int](t, u.ctx, `[...document.querySelectorAll("#msg-list .msg[data-seq]")].map(e => +e.dataset.seq)`)
		for i, s := range seqs {
			if s != i+1 {
				t.Errorf("%s: seqs %v are not 1..%d", u.name, seqs, len(seqs))
				break
			}
		}
	}
}

// TestBrowserScriptAsText: markup in a message is shown as text and never
// runs, in the chat and in the conversation list.
func TestBrowserScriptAsText(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")
	conv := directConv(alice.uid, bob.uid)

	evil := `<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold</b>`
	alice.openPeer(t, bob)
	alice.send(t, evil)
	alice.waitMsg(t, evil)
	bob.waitBadge(t, conv, 1)
	waitFor(t, bob.ctx, "preview as text", fmt.Sprintf(`document.querySelector('.conv[data-conv=%q] .preview').textContent === %s`, conv, jsString(evil)))
	bob.openConv(t, conv)
	bob.waitMsg(t, evil)
	for _, u := range []*user{alice, bob} {
		if n := eval[int](t, u.ctx, `document.querySelectorAll("#msg-list script, #msg-list img, #msg-list b, #conv-list script, #conv-list img").length`); n != 0 {
			t.Errorf("%s: %d elements were created from message text", u.name, n)
		}
		if pwned := eval[bool](t, u.ctx, `window.__pwned !== undefined`); pwned {
			t.Errorf("%s: the message's script ran", u.name)
		}
	}
	html := eval[string](t, bob.ctx, `document.querySelector("#msg-list .msg[data-seq] .body").innerHTML`)
	if !strings.Contains(html, "&lt;script&gt;") {
		t.Errorf("body markup %q is not escaped text", html)
	}
}

// TestBrowserGroups: create a group with a member, chat in it, and let a
// third person join it by id.
func TestBrowserGroups(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	// Version 2: only a public group can be joined by id, and a member
	// added by someone else starts with the "created" message unread.
	v2 := serverVersion(t, srv) >= 2
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	bob := login(t, newTab(t, browser, 1200, 800), srv.base, "bob")

	do(t, alice.ctx, "alice creates a group",
		chromedp.Click(chromedp.CSS("#group-btn")),
		chromedp.WaitVisible(chromedp.CSS("#group-name")),
		chromedp.SendKeys(chromedp.CSS("#group-name"), "weekend trip"),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#member-list input[value="%d"]`, bob.uid))),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#member-list input[value="%d"]`, bob.uid))),
	)
	if v2 {
		do(t, alice.ctx, "make it public", chromedp.Click(chromedp.CSS("#group-public")))
	}
	do(t, alice.ctx, "submit",
		chromedp.Click(chromedp.CSS("#group-submit")),
		chromedp.WaitVisible(chromedp.CSS("#chat-pane")),
	)
	waitFor(t, alice.ctx, "group header", `document.getElementById("chat-title").textContent === "weekend trip"`)
	conv := eval[string](t, alice.ctx, `document.querySelector("#conv-list .conv.active").dataset.conv`)
	gid, err := strconv.Atoi(strings.TrimPrefix(conv, "g:"))
	if err != nil {
		t.Fatalf("active conv %q is not a group", conv)
	}
	alice.send(t, "who is in?")
	alice.waitMsg(t, "who is in?")

	// Bob was added: the group shows up on his next catch-up (v1 pushes
	// no membership changes; v2 does, and its "created" message is unread
	// for him); a message to it arrives live.
	do(t, bob.ctx, "bob reloads", chromedp.Reload())
	bob.waitConn(t, "online")
	if v2 {
		bob.waitBadge(t, conv, 2)
	} else {
		bob.waitBadge(t, conv, 1)
	}
	bob.openConv(t, conv)
	bob.waitMsg(t, "who is in?")
	bob.send(t, "me!")
	alice.waitMsg(t, "me!")

	// Carol joins by id and chats.
	carol := login(t, newTab(t, browser, 1200, 800), srv.base, "carol")
	do(t, carol.ctx, "carol joins the group",
		chromedp.Click(chromedp.CSS("#group-btn")),
		chromedp.Click(chromedp.CSS("#gtab-join")),
		chromedp.SendKeys(chromedp.CSS("#group-id"), strconv.Itoa(gid)),
		chromedp.Click(chromedp.CSS("#group-submit")),
		chromedp.WaitVisible(chromedp.CSS("#chat-pane")),
	)
	carol.waitMsg(t, "who is in?")
	carol.waitTotal(t, 0)
	carol.send(t, "me too")
	alice.waitMsg(t, "me too")
	bob.waitMsg(t, "me too")
	waitFor(t, alice.ctx, "sender name shown", `[...document.querySelectorAll("#msg-list .sender")].some(e => e.textContent === "carol")`)
}

// TestBrowserHistoryPaging: a chat opens on its newest page; scrolling up
// loads older pages (history before=) until the beginning.
func TestBrowserHistoryPaging(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	bobWS := connectUser(t, srv, "bob")
	aliceWS := connectUser(t, srv, "alice")
	const n = 120
	for i := 1; i <= n; i++ {
		bobWS.say(to(aliceWS), fmt.Sprintf("message %d", i))
	}
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	conv := directConv(alice.uid, bobWS.uid)
	alice.waitBadge(t, conv, n)
	alice.openConv(t, conv)
	alice.waitMsg(t, fmt.Sprintf("message %d", n))
	count := `document.querySelectorAll("#msg-list .msg[data-seq]").length`
	if got := eval[int](t, alice.ctx, count); got != 50 {
		t.Fatalf("first page shows %d messages, want 50", got)
	}
	alice.waitTotal(t, 0)
	scrollUp := chromedp.Evaluate[chromedp.Void](`document.getElementById("messages").scrollTop = 0`)
	do(t, alice.ctx, "scroll up", scrollUp)
	waitFor(t, alice.ctx, "second page", count+` === 100`)
	do(t, alice.ctx, "scroll up again", scrollUp)
	waitFor(t, alice.ctx, "third page", count+` === 120`)
	waitFor(t, alice.ctx, "beginning shown", `!document.getElementById("history-start").hidden`)
	seqs := eval[[]int](t, alice.ctx, `[...document.querySelectorAll("#msg-list .msg[data-seq]")].map(e => +e.dataset.seq)`)
	for i, s := range seqs {
		if s != i+1 {
			t.Fatalf("seqs on screen are not 1..%d in order: %v", n, seqs)
		}
	}
	if first := eval[string](t, alice.ctx, `document.querySelector("#msg-list .msg[data-seq] .body").textContent`); first != "message 1" {
		t.Errorf("first message %q", first)
	}
}

// TestBrowserWithOrigins: with --origins set to the UI's own origin, the
// page (on the HTTP port) may open the WebSocket (on another port).
func TestBrowserWithOrigins(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	// The ports are known only now: restart on them with --origins.
	srv.Kill()
	srv.Args = append(srv.Args, "--origins", srv.HTTPURL())
	srv.Restart()
	alice := login(t, newTab(t, browser, 1200, 800), srv.base, "alice")
	do(t, alice.ctx, "open lobby", chromedp.Click(chromedp.CSS("#conv-list .conv")))
	alice.send(t, "hello lobby")
	alice.waitMsg(t, "hello lobby")
}

// TestBrowserPhoneWidth: at phone width the list and the chat are separate
// screens with a back button.
func TestBrowserPhoneWidth(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	alice := login(t, newTab(t, browser, 390, 800), srv.base, "alice")
	waitFor(t, alice.ctx, "sidebar visible, chat hidden", `getComputedStyle(document.querySelector(".sidebar")).display !== "none" && getComputedStyle(document.querySelector(".chat")).display === "none"`)
	do(t, alice.ctx, "open people", chromedp.Click(chromedp.CSS("#tab-people")))
	do(t, alice.ctx, "open a chat",
		chromedp.WaitVisible(chromedp.CSS("#people-list .person")),
		chromedp.Click(chromedp.CSS("#people-list .person")),
		chromedp.WaitVisible(chromedp.CSS("#back-btn")),
	)
	waitFor(t, alice.ctx, "chat only", `getComputedStyle(document.querySelector(".sidebar")).display === "none"`)
	if w := eval[int](t, alice.ctx, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("page is %dpx wide at a 390px viewport", w)
	}
	do(t, alice.ctx, "back", chromedp.Click(chromedp.CSS("#back-btn")))
	waitFor(t, alice.ctx, "list again", `getComputedStyle(document.querySelector(".sidebar")).display !== "none"`)
}

// TestBrowserBadLogin: a wrong password shows an error and stays on the
// login screen.
func TestBrowserBadLogin(t *testing.T) {
	browser := newBrowser(t)
	srv := startServer(t)
	ctx := newTab(t, browser, 1200, 800)
	do(t, ctx, "bad login",
		chromedp.Navigate(srv.base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#auth-user")),
		chromedp.SendKeys(chromedp.CSS("#auth-user"), "alice"),
		chromedp.SendKeys(chromedp.CSS("#auth-pass"), "wrong-password"),
		chromedp.Click(chromedp.CSS("#auth-submit")),
		chromedp.WaitVisible(chromedp.CSS("#auth-error")),
	)
	if msg := eval[string](t, ctx, `document.getElementById("auth-error").textContent`); !strings.Contains(msg, "Wrong username or password") {
		t.Errorf("error %q", msg)
	}
	// Registration then works and logs in.
	do(t, ctx, "register",
		chromedp.Click(chromedp.CSS("#tab-register")),
		chromedp.SetValue(chromedp.CSS("#auth-user"), "zed"),
		chromedp.SetValue(chromedp.CSS("#auth-pass"), "correct horse"),
		chromedp.Click(chromedp.CSS("#auth-submit")),
	)
	waitFor(t, ctx, "registered and online", `document.querySelector('#conn[data-state="online"]') !== null && document.getElementById("me-name").textContent === "zed"`)
}

// TestScreenshot writes docs/screenshot.png when run with
// -screenshot=../docs/screenshot.png: a chat view on demo data.
func TestScreenshot(t *testing.T) {
	if *screenshotPath == "" {
		t.Skip("run with -screenshot=PATH to write a screenshot")
	}
	browser := newBrowser(t)
	srv := startServer(t)
	uids := seedDemo(t, srv)
	alice := login(t, newTab(t, browser, 1280, 800), srv.base, "alice")
	alice.openConv(t, directConv(alice.uid, uids["bob"]))
	alice.waitMsg(t, "Perfect. Send me the report when it's ready?")
	do(t, alice.ctx, "type a draft", chromedp.SendKeys(chromedp.CSS("#input"), "On it, sharing the dashboard link now"))
	waitFor(t, alice.ctx, "fonts", `document.fonts.status === "loaded"`)
	png, err := chromedp.Run(alice.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(*screenshotPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(*screenshotPath, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", *screenshotPath, len(png))
}
