package chat

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/magpie-im/magpie/client"
	"github.com/magpie-im/magpie/internal/testserver"
)

// Tests of `magpie chat` with protocol version 2 (PROTOCOL §13–§16):
// group notes and commands, read marks, typing and presence. Each
// scenario runs against the real server — skipped, saying so, while it
// announces version 1 — and against the in-process fake of fake_test.go.
// The version 1 scenario checks that all of it degrades quietly.

// serverVersion is the protocol version a server announces.
func serverVersion(t *testing.T, url string) int {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Options{Server: url, Username: "alice", Password: "password"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ServerVersion()
}

// startRealV2 starts `magpie serve --demo` with a short presence grace and
// dave registered, and skips the test unless the server speaks version 2.
// The version is asked first, without the flag: a version 1 server
// refuses --presence-grace.
func startRealV2(t *testing.T) string {
	t.Helper()
	srv := testserver.Start(t, "--demo")
	if v := serverVersion(t, srv.HTTPURL()); v < 2 {
		t.Skipf("the server announces protocol version %d; this test needs version 2 (§13–§16, the server side of issue 13)", v)
	}
	srv.Kill()
	srv.Args = append(srv.Args, "--presence-grace", "100ms")
	srv.Restart()
	if _, err := client.Register(context.Background(), nil, srv.HTTPURL(), "dave", "password"); err != nil {
		t.Fatal(err)
	}
	return srv.HTTPURL()
}

// sdkUser is a demo user on the Go SDK, with the events a test awaits.
type sdkUser struct {
	*client.Client
	msgs     chan client.Message
	typing   chan client.TypingEvent
	presence chan []client.Presence
}

func dialUser(t *testing.T, url, name string) *sdkUser {
	t.Helper()
	u := &sdkUser{msgs: make(chan client.Message, 1000), typing: make(chan client.TypingEvent, 1000), presence: make(chan []client.Presence, 1000)}
	c, err := client.Dial(context.Background(), client.Options{Server: url, Username: name, Password: "password",
		OnMessage:  func(m client.Message) { u.msgs <- m },
		OnTyping:   func(e client.TypingEvent) { u.typing <- e },
		OnPresence: func(p []client.Presence) { u.presence <- p },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	u.Client = c
	return u
}

// await returns the first value from ch that ok accepts.
func await[T any](t *testing.T, ch <-chan T, what string, ok func(T) bool) T {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case v := <-ch:
			if ok(v) {
				return v
			}
		case <-deadline:
			t.Fatalf("never happened: %s", what)
		}
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// groupOnScreen returns the number re's first group matches on a row.
func (p *ptyChat) groupOnScreen(re *regexp.Regexp) int64 {
	p.t.Helper()
	var id int64
	p.waitFor(re.String(), func() bool {
		for _, row := range p.scr.snapshot() {
			if m := re.FindStringSubmatch(row); m != nil {
				id, _ = strconv.ParseInt(m[1], 10, 64)
				return true
			}
		}
		return false
	})
	return id
}

func (p *ptyChat) waitWhere(where string) {
	p.t.Helper()
	p.waitPrompt("at "+where, func(pl promptLine) bool { return pl.where == where })
}

func TestChatV2Terminal(t *testing.T) { chatV2Terminal(t, startRealV2(t), nil) }

func TestChatV2TerminalFake(t *testing.T) {
	fs := startFake(t, 2)
	chatV2Terminal(t, fs.HTTPURL(), fs)
}

// chatV2Terminal drives alice's `magpie chat` on a pseudo-terminal while
// bob and carol use the SDK. fake, when not nil, is the server: it counts
// the typing frames that arrive.
func chatV2Terminal(t *testing.T, url string, fake *fakeServer) {
	ctx := context.Background()
	a := must[*client.LoginResult](t)(client.Login(ctx, nil, url, "alice", "password")).UID
	bob, carol := dialUser(t, url, "bob"), dialUser(t, url, "carol")
	b, c := bob.UID(), carol.UID()
	dm := client.DirectConv(a, b)

	// Presence in /convs: carol wrote and went offline; bob is online.
	must[client.Sent](t)(carol.SendTo(ctx, a, "hi from carol"))
	must[[]client.Presence](t)(bob.SubscribePresence(ctx, []int64{c}))
	carol.Close()
	await(t, bob.presence, "carol offline", func(items []client.Presence) bool {
		return slices.ContainsFunc(items, func(p client.Presence) bool { return p.UID == c && !p.Online })
	})
	must[client.Sent](t)(bob.SendTo(ctx, a, "hi alice"))

	p := startPTYChat(t, "--server", url, "--user", "alice")
	p.waitText("logged in as alice")
	p.waitText("@bob (online)")
	p.waitText("@carol (last seen just now)")

	// Read marks: ✓ once alice's message is stored, ✓✓ once bob read it.
	p.typ("/open bob\r")
	p.waitText("-- @bob (online)")
	p.waitWhere("@bob")
	typed := time.Now()
	var frames int
	if fake != nil {
		frames = fake.typingFrames()
	}
	p.typ("are you")
	await(t, bob.typing, "alice typing to bob", func(e client.TypingEvent) bool { return e.Conv == dm && e.UID == a && e.Typing })
	p.typ(" there?\r")
	m := await(t, bob.msgs, "alice's message", func(m client.Message) bool { return m.Body == "are you there?" })
	p.waitWhere("@bob ✓")
	if fake != nil {
		// 14 keys: one frame at once, then at most one per the SDK's
		// TypingInterval (2 s); the message drops a pending one.
		n, limit := fake.typingFrames()-frames, 2+int(time.Since(typed)/(2*time.Second))
		if n < 1 || n > limit {
			t.Errorf("typing 14 keys sent %d typing frames, want 1 to %d", n, limit)
		}
	}
	must[client.ReadMark](t)(bob.MarkRead(ctx, dm, m.Seq))
	p.waitWhere("@bob ✓✓")

	// bob types: the status line says so until his message arrives.
	if err := bob.Typing(dm); err != nil {
		t.Fatal(err)
	}
	p.waitWhere("@bob ✓✓, bob is typing…")
	must[client.Sent](t)(bob.SendTo(ctx, a, "yes"))
	p.waitText("bob: yes")
	p.waitWhere("@bob ✓✓")

	// In history, a line marks how far bob has read.
	p.typ("one more\r")
	p.waitWhere("@bob ✓")
	p.typ("/history 3\r")
	p.waitFor("the read line right above alice's unread message", func() bool {
		rows := p.scr.snapshot()
		for i := 0; i+1 < len(rows); i++ {
			if rows[i] == "-- bob has read up to here" && strings.HasSuffix(rows[i+1], "@bob alice: one more") {
				return true
			}
		}
		return false
	})

	// alice's own public group: every change is a note.
	p.typ(`/create +public "Book club" bob` + "\r")
	gid := p.groupOnScreen(regexp.MustCompile(`^created #Book club \(group (\d+), public, 2 members\); /open #\d+$`))
	p.waitText("#Book club * alice created the public group Book club")
	p.typ("/open #Book club\r")
	p.waitWhere("#Book club")
	p.typ("/add carol, dave\r")
	p.waitText("#Book club * alice added carol, dave")
	p.waitText("-- #Book club has 4 members")
	p.typ("/remove dave\r")
	p.waitText("#Book club * alice removed dave")
	p.typ("/rename Readers\r")
	p.waitText("#Book club * alice renamed the group to Readers")
	p.waitWhere("#Readers")
	p.typ("/members\r")
	p.waitText(fmt.Sprintf("#Readers (group %d): 3 members: alice (owner), bob, carol", gid))

	// bob's private group: only its owner removes and renames.
	must[client.Group](t)(bob.CreateGroup(ctx, "bobs", []int64{a}))
	p.waitText("#bobs * bob created the private group bobs")
	p.typ("/open #bobs\r")
	p.waitWhere("#bobs")
	p.typ("/remove carol\r")
	p.waitText("remove: only the owner of #bobs (bob) can remove members")
	p.typ("/rename mine\r")
	p.waitText("rename: only the owner of #bobs (bob) can rename it")

	// Joining: a private group refuses, a public one takes alice in.
	secret := must[client.Group](t)(bob.CreateGroup(ctx, "secret", []int64{c}))
	p.typ(fmt.Sprintf("/join %d\r", secret.ID))
	p.waitText(fmt.Sprintf("join: group %d is a private group: a member has to /add you", secret.ID))
	house := must[client.Group](t)(bob.CreateGroupWith(ctx, client.NewGroup{Name: "open house", Public: true}))
	p.typ(fmt.Sprintf("/join #%d\r", house.ID))
	p.waitText(fmt.Sprintf("joined #open house (group %d, 2 members)", house.ID))
	p.waitText("#open house * alice joined")

	// The owner leaves: the lowest remaining uid takes over.
	p.typ("/open #Readers\r")
	p.waitWhere("#Readers")
	p.typ("/leave\r")
	p.waitText(fmt.Sprintf("#Readers * alice left; %s is now the owner", "bob"))
	p.waitText("left #Readers (2 members remain)")
	p.waitWhere("-")

	p.typ("/convs\r")
	p.waitFor("the lobby listed as public", func() bool {
		return slices.ContainsFunc(p.scr.snapshot(), func(r string) bool { return strings.Contains(r, "#lobby (group ") && strings.Contains(r, ", public)") })
	})
	p.quit()
}

func TestChatV1Degrades(t *testing.T) {
	srv := testserver.Start(t, "--demo")
	if v := serverVersion(t, srv.HTTPURL()); v != 1 {
		t.Skipf("the server announces protocol version %d; this test needs a version 1 server (the fake's run covers it)", v)
	}
	chatV1(t, srv.HTTPURL(), nil)
}

func TestChatV1DegradesFake(t *testing.T) {
	fs := startFake(t, 1)
	chatV1(t, fs.HTTPURL(), fs)
}

// chatV1 runs `magpie chat` (piped) against a version 1 server: no
// presence, no read marks, and the version 2 commands answered with the
// server's bad_request, said as such. fake, when not nil, is the server:
// it records the version 2 frames it refused.
func chatV1(t *testing.T, url string, fake *fakeServer) {
	ctx := context.Background()
	bob := dialUser(t, url, "bob")
	a := must[*client.LoginResult](t)(client.Login(ctx, nil, url, "alice", "password")).UID
	must[client.Sent](t)(bob.SendTo(ctx, a, "hi alice"))

	inR, inW := io.Pipe()
	defer inW.Close()
	out := &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"--server", url, "--user", "alice"}, inR, out, "password", false)
	}()
	say := func(line string) { fmt.Fprintln(inW, line) }
	waitOutput(t, out, "logged in as alice")
	waitOutput(t, out, "bob: hi alice")
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.Contains(l, "@bob") && strings.Contains(l, "(") {
			t.Errorf("presence shown by a version 1 server: %q", l)
		}
	}
	say("/open #lobby")
	waitOutput(t, out, "-- #lobby")
	for _, cmd := range []string{"add carol", "remove carol", "rename club"} {
		say("/" + cmd)
		name, _, _ := strings.Cut(cmd, " ")
		waitOutput(t, out, name+": this server speaks protocol version 1, which lacks it (magpie: bad_request")
	}
	say("/create +public club bob")
	waitOutput(t, out, "created #club (group ")
	say("/open bob")
	say("sent on v1")
	await(t, bob.msgs, "alice's message", func(m client.Message) bool { return m.Body == "sent on v1" })
	say("/status")
	waitOutput(t, out, "protocol version 1")
	say("/quit")
	waitExit(t, done, out)
	if strings.Contains(out.String(), "✓") {
		t.Errorf("a read mark from a version 1 server:\n%s", out.String())
	}
	if fake != nil {
		if got, want := fake.refusedFrames(), []string{"group_add", "group_remove", "group_rename"}; !slices.Equal(got, want) {
			t.Errorf("version 2 frames sent to a version 1 server: %q, want only the commands' %q", got, want)
		}
	}
}
