package chat

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magpie-im/magpie/client"
	"github.com/magpie-im/magpie/internal/testserver"
)

const ptyRows, ptyCols = 80, 120

// openPTY opens a pseudo-terminal pair (/dev/ptmx) of ptyRows × ptyCols.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil { // unlockpt
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: ptyRows, Col: ptyCols}); err != nil {
		t.Fatal(err)
	}
	return m, s
}

// ptyChat is `magpie chat` running on a pseudo-terminal, its output drawn
// on a screen.
type ptyChat struct {
	t      *testing.T
	master *os.File
	scr    *screen
	cmd    *exec.Cmd
	exited chan struct{}
}

func startPTYChat(t *testing.T, args ...string) *ptyChat {
	t.Helper()
	m, s := openPTY(t)
	cmd := exec.Command(testserver.Binary(t), append([]string{"chat"}, args...)...)
	cmd.Env = append(os.Environ(), "MAGPIE_PASSWORD=password", "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	p := &ptyChat{t: t, master: m, scr: newScreen(ptyRows, ptyCols), cmd: cmd, exited: make(chan struct{})}
	go func() { _, _ = io.Copy(p.scr, m) }() // ends with EIO when the client exits
	go func() { _ = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		m.Close()
	})
	return p
}

// typ sends keystrokes, as a user types them.
func (p *ptyChat) typ(s string) {
	p.t.Helper()
	if _, err := p.master.Write([]byte(s)); err != nil {
		p.t.Fatal(err)
	}
}

// waitFor waits until cond holds on the screen, re-checking on each
// output of the client.
func (p *ptyChat) waitFor(what string, cond func() bool) {
	p.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		p.scr.mu.Lock()
		changed, bad := p.scr.changed, append([]string(nil), p.scr.bad...)
		p.scr.mu.Unlock()
		if len(bad) > 0 {
			p.t.Fatalf("the client wrote what this test's terminal cannot show: %q", bad)
		}
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			p.t.Fatalf("never on screen: %s\n--- screen (cursor line %q):\n%s", what, p.scr.cursorLine(), p.scr)
		}
	}
}

func (p *ptyChat) waitText(sub string) {
	p.t.Helper()
	p.waitFor(fmt.Sprintf("%q", sub), func() bool { return p.scr.count(sub) > 0 })
}

// prompt matches the status line: [STATE] WHERE (N unread)> INPUT
var promptRE = regexp.MustCompile(`^\[([^\]]*)\] (.*?)(?: \((\d+) unread\))?>(?: (.*))?$`)

type promptLine struct {
	state, where, input string
	unread              int
}

func (p *ptyChat) prompt() (promptLine, bool) {
	m := promptRE.FindStringSubmatch(p.scr.cursorLine())
	if m == nil {
		return promptLine{}, false
	}
	n, _ := strconv.Atoi(m[3])
	return promptLine{state: m[1], where: m[2], unread: n, input: m[4]}, true
}

// waitPrompt waits until the status line satisfies cond.
func (p *ptyChat) waitPrompt(what string, cond func(promptLine) bool) promptLine {
	p.t.Helper()
	var got promptLine
	p.waitFor("status line: "+what, func() bool {
		pl, ok := p.prompt()
		got = pl
		return ok && cond(pl)
	})
	return got
}

// TestChatTerminal drives `magpie chat` through a pseudo-terminal as a
// user would: the half-typed line stays on screen while messages arrive,
// conversations open by a group name with spaces and by a unique prefix,
// the prompt's unread count follows the server's, and a server outage
// shows as one status line, updated in place, that /retry cuts short.
func TestChatTerminal(t *testing.T) {
	srv := testserver.Start(t, "--demo")
	ctx := context.Background()
	bobGot := make(chan client.Message, 1000)
	bob, err := client.Dial(ctx, client.Options{
		Server: srv.HTTPURL(), Username: "bob", Password: "password",
		OnMessage: func(m client.Message) { bobGot <- m },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	// alice's other device: the server's view of her unread counts, and
	// sends that move her read marks.
	reads := make(chan client.ReadMark, 1000) // read marks alice sets, on any device
	alice2, err := client.Dial(ctx, client.Options{Server: srv.HTTPURL(), Username: "alice", Password: "password", Device: "phone",
		OnRead: func(r client.ReadMark) { reads <- r }})
	if err != nil {
		t.Fatal(err)
	}
	defer alice2.Close()
	aliceUID := alice2.UID()
	trip, err := bob.CreateGroup(ctx, "Weekend trip", []int64{aliceUID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.CreateGroup(ctx, "Weekday plans", []int64{aliceUID}); err != nil {
		t.Fatal(err)
	}
	serverUnread := func() int {
		t.Helper()
		l, err := alice2.Convs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return int(l.TotalUnread)
	}
	// waitRead waits until the terminal has marked conv read on the server.
	waitRead := func(conv, what string) {
		t.Helper()
		for deadline := time.After(30 * time.Second); ; {
			select {
			case r := <-reads:
				if r.Conv != conv || r.Unread != 0 {
					continue
				}
			case <-deadline:
				t.Fatalf("%s did not mark it read on the server", what)
			}
			return
		}
	}
	var p *ptyChat
	// The prompt must come to show the server's count.
	unreadRight := func(when string) {
		t.Helper()
		want := serverUnread()
		p.waitPrompt(fmt.Sprintf("%d unread %s", want, when), func(pl promptLine) bool { return pl.unread == want })
	}

	p = startPTYChat(t, "--server", srv.HTTPURL(), "--user", "alice")
	p.waitText("logged in as alice")
	p.waitPrompt("online", func(pl promptLine) bool { return pl.state == "online" })
	unreadRight("at start")

	// Open by a name with a space; opening marks it read.
	p.typ("/open #Weekend trip\r")
	p.waitText("-- #Weekend trip")
	p.waitPrompt("in #Weekend trip", func(pl promptLine) bool { return pl.where == "#Weekend trip" })
	if alice2.ServerVersion() >= 2 {
		// The group's "created" is unread for alice, whom bob put in
		// (PROTOCOL §13): opening marks it read on the server.
		waitRead(client.GroupConv(trip.ID), "opening #Weekend trip")
	}
	unreadRight("after opening #Weekend trip")

	// Type half a line; a message arrives; the typed part stays.
	p.typ("hello wor")
	p.waitPrompt("typed input", func(pl promptLine) bool { return pl.input == "hello wor" })
	if _, err := bob.Send(ctx, client.Outgoing{Group: trip.ID, Body: "incoming while you type"}); err != nil {
		t.Fatal(err)
	}
	// The editor writes the message and then draws the prompt and the
	// input again: wait for the screen to settle with both on it.
	p.waitFor("bob's message above the prompt, the typed input still on it", func() bool {
		pl, ok := p.prompt()
		return p.scr.count("bob: incoming while you type") == 1 && ok && pl.input == "hello wor"
	})
	p.typ("ld\r")
	p.waitText("alice: hello world")
	for waitBob := time.After(30 * time.Second); ; {
		select {
		case m := <-bobGot:
			if m.Body != "hello world" {
				continue
			}
		case <-waitBob:
			t.Fatal("bob never got hello world")
		}
		break
	}
	unreadRight("after receiving and sending in the open conversation")

	// Messages elsewhere count; a send from another device of alice moves
	// her read mark (PROTOCOL §10) and the prompt follows.
	for i := 0; i < 2; i++ {
		if _, err := bob.SendTo(ctx, aliceUID, fmt.Sprintf("direct %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	p.waitText("bob: direct 1")
	unreadRight("after two direct messages")
	if _, err := alice2.SendTo(ctx, bob.UID(), "answered from the phone"); err != nil {
		t.Fatal(err)
	}
	p.waitText("alice: answered from the phone")
	unreadRight("after alice sent from her phone")
	if _, err := bob.SendTo(ctx, aliceUID, "one more"); err != nil {
		t.Fatal(err)
	}
	p.waitText("bob: one more")
	others := 0 // unread outside @bob
	if alice2.ServerVersion() >= 2 {
		others = 1 // #Weekday plans' "created", unread since bob put alice in
	}
	p.waitPrompt(fmt.Sprintf("%d unread", 1+others), func(pl promptLine) bool { return pl.unread == 1+others })
	p.typ("/open bo\r") // a unique prefix; opening marks it read
	p.waitText("-- @bob")
	waitRead(client.DirectConv(aliceUID, bob.UID()), "opening @bob")
	unreadRight("after opening @bob")

	// Unique prefixes open; an ambiguous one lists the candidates.
	p.typ("/open #Week\r")
	p.waitText(`#Week matches 2 groups: #Weekday plans, #Weekend trip`)
	p.typ("/open #Weekd\r")
	p.waitText("-- #Weekday plans")
	p.typ("/open ca\r")
	p.waitText("-- @carol")
	p.waitPrompt("in @carol", func(pl promptLine) bool { return pl.where == "@carol" })

	// Outage: one status line, updated in place.
	srv.Kill()
	p.waitText("connection lost")
	tryRE := regexp.MustCompile(`try (\d+) in (\d+)s`)
	try := func(pl promptLine) (n, in int) {
		m := tryRE.FindStringSubmatch(pl.state)
		if m == nil {
			return 0, 0
		}
		n, _ = strconv.Atoi(m[1])
		in, _ = strconv.Atoi(m[2])
		return n, in
	}
	// Wait for a wait long enough to tell /retry from the timer.
	pl := p.waitPrompt("a retry 4 s or more away", func(pl promptLine) bool { n, in := try(pl); return n >= 2 && in >= 4 })
	// Attempts 1 and 2 have failed by now, and nothing was printed for
	// them: the line about the loss is right above the status line.
	p.waitFor("the loss line right above the status line", func() bool {
		row, cur := p.scr.rowOf("connection lost")
		_, ok := p.prompt()
		return p.scr.count("connection lost") == 1 && row == cur-1 && ok
	})
	// The countdown shows whole seconds rounded up: the timer had more
	// than in−1 s to go.
	n, in := try(pl)
	t0 := time.Now()
	p.typ("/retry\r")
	p.waitPrompt(fmt.Sprintf("try %d", n+1), func(pl promptLine) bool { m, _ := try(pl); return m > n })
	if el := time.Since(t0); el >= time.Duration(in-1)*time.Second-200*time.Millisecond {
		t.Errorf("/retry: the next attempt came after %v, as the timer (%ds) would have", el, in)
	}
	srv.Restart()
	p.typ("/retry\r")
	p.waitPrompt("online again", func(pl promptLine) bool { return pl.state == "online" })
	p.waitText("-- online again")
	if c := p.scr.count("connection lost"); c != 1 {
		t.Fatalf("%d lines say the connection was lost, want 1:\n%s", c, p.scr)
	}
	p.typ("after the outage\r")
	p.waitText("alice: after the outage")

	p.quit()
}

// quit types /quit and waits for the client to exit 0.
func (p *ptyChat) quit() {
	p.t.Helper()
	p.t.Logf("screen before /quit:\n%s", p.scr)
	p.typ("/quit\r")
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("chat did not quit:\n%s", p.scr)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		p.t.Fatalf("exit %d:\n%s", code, p.scr)
	}
}
