// Package chat is `magpie chat`, a line-oriented terminal client built on
// the client SDK: a status prompt with the connection state, the
// conversation list with unread counts, live messages, and commands to
// open a conversation, send, create or join a group, and mark read.
package chat

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/magpie-im/magpie/client"
)

const usage = `usage: magpie chat --server URL --user NAME [--device ID] [--register]

The password comes from $MAGPIE_PASSWORD, or a prompt.

Commands (plain text sends to the open conversation):
  /convs               conversations with unread counts; for direct ones
                       whether the other person is online or when last seen
  /open NAME|#GROUP    open a direct conversation or a group: #name (spaces
                       allowed, e.g. /open #Weekend trip) or #id; a unique
                       prefix of a name is enough
  /send TEXT           send to the open conversation
  /history [N]         the last N messages of the open conversation (default 20)
  /read                mark the open conversation read (shown messages are marked read anyway)
  /create [+public] NAME USER..
                       create a group with these users (spaces or commas
                       between them); +public lets anyone /join it; quote a
                       name with spaces: /create +public "Book club" bob
  /join #GROUP|ID      join a public group (a private one: a member /adds you)
  /leave [#GROUP|ID]   leave a group (default: the open one)
  /members [#GROUP|ID] list the members of a group (default: the open one)
  /add NAME[,NAME..]   add users to the open group
  /remove NAME[,NAME..]
                       remove users from the open group (its owner only)
  /rename NEW NAME     rename the open group (its owner only)
  /users [PREFIX]      list users
  /status              connection state
  /retry               reconnect now instead of waiting for the next attempt
  /help                this text
  /quit                leave (also Ctrl-D)

The status line shows the connection and the open conversation; in a direct
conversation ✓ means your last message is stored and ✓✓ that the other
person has read it; "bob is typing…" while someone types there. Group
changes show as notes: "12:03 #team * alice added bob".
`

// Main runs `magpie chat` with args (the arguments after "chat") on the
// process's terminal and returns the exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	password := os.Getenv("MAGPIE_PASSWORD")
	ansi := term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stdout.Fd()))
	return Run(ctx, args, os.Stdin, os.Stdout, password, ansi)
}

// Run is Main with explicit input, output and password ("" means prompt on
// the terminal). With ansi the input is edited on a terminal (raw mode when
// in is one): the line being typed stays on screen below live output, and
// the prompt line is a status line updated in place. Without it, input is
// read line by line and output is plain lines.
func Run(ctx context.Context, args []string, in io.Reader, out io.Writer, password string, ansi bool) int {
	fset := flag.NewFlagSet("chat", flag.ContinueOnError)
	fset.SetOutput(out)
	fset.Usage = func() { fmt.Fprint(out, usage) }
	server := fset.String("server", "http://127.0.0.1:8080", "HTTP base URL of the server")
	user := fset.String("user", "", "user name")
	device := fset.String("device", "", "device id (a newer connection with the same id replaces this one)")
	register := fset.Bool("register", false, "register the user first")
	if err := fset.Parse(args); err != nil {
		return 2
	}
	if *user == "" {
		fmt.Fprint(out, usage)
		return 2
	}
	if password == "" {
		p, err := promptPassword(in, out)
		if err != nil {
			fmt.Fprintln(out, "password:", err)
			return 1
		}
		password = p
	}
	if *register {
		if _, err := client.Register(ctx, nil, *server, *user, password); err != nil {
			var e *client.Error
			if !errors.As(err, &e) || e.Code != client.CodeExists {
				fmt.Fprintln(out, "register:", err)
				return 1
			}
		}
	}
	u := &ui{out: out, names: map[int64]string{}, groups: map[int64]string{}, convs: map[string]*convState{},
		gmeta: map[int64]groupMeta{}, typers: map[string][]int64{}}
	if ansi {
		restore := u.startTerminal(in, out)
		defer restore()
	}
	c, err := client.New(client.Options{
		Server:    *server,
		Username:  *user,
		Password:  password,
		Device:    *device,
		OnMessage: u.onMessage,
		OnState:   u.onState,
		OnRead:    u.onRead,
		// Version 2 (PROTOCOL §13–§16); a version 1 server sends none.
		OnReceipt: u.onReceipt,
		OnTyping:  u.onTyping,
	})
	if err != nil {
		u.printf("%v", err)
		return 2
	}
	defer c.Close()
	u.c = c
	done := make(chan struct{})
	defer close(done)
	go func() { // the status line's countdown during an outage
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			u.mu.Lock()
			if u.state.State == client.StateReconnecting {
				u.refreshLocked()
			}
			u.mu.Unlock()
		}
	}()
	u.printf("connecting to %s as %s …", *server, *user)
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = c.Connect(cctx)
	cancel()
	switch {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded):
		u.printf("not online yet; still trying in the background (/retry tries now)")
	default:
		u.printf("connect: %v", err)
		return 1
	}
	u.mu.Lock()
	u.me = c.UID()
	u.v2 = c.ServerVersion() >= 2 // before the first convs (onState may come later)
	u.refreshLocked()
	u.mu.Unlock()
	u.printf("logged in as %s (uid %d). /help lists the commands.", *user, c.UID())
	u.loadUsers(ctx, "")
	u.cmdConvs(ctx)

	lines := make(chan string)
	go u.readLines(ctx, in, lines)
	for {
		if u.term == nil {
			u.prompt()
		}
		select {
		case <-ctx.Done():
			u.printf("bye")
			return 0
		case line, ok := <-lines:
			if !ok {
				return 0
			}
			if quit := u.command(ctx, strings.TrimSpace(line)); quit {
				return 0
			}
		}
	}
}

// readLines sends each input line to lines and closes it at the end of
// the input (Ctrl-D, or Ctrl-C on a terminal in raw mode).
func (u *ui) readLines(ctx context.Context, in io.Reader, lines chan<- string) {
	defer close(lines)
	next := func() (string, bool) {
		l, err := u.term.ReadLine()
		return l, err == nil
	}
	if u.term == nil {
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		next = func() (string, bool) {
			ok := sc.Scan()
			return sc.Text(), ok
		}
	}
	for {
		l, ok := next()
		if !ok {
			return
		}
		select {
		case lines <- l:
		case <-ctx.Done():
			return
		}
	}
}

// startTerminal puts in into raw mode (when it is a terminal) and makes
// a line editor on in and out; the returned func ends both.
func (u *ui) startTerminal(in io.Reader, out io.Writer) (restore func()) {
	var undo func()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if old, err := term.MakeRaw(int(f.Fd())); err == nil {
			undo = func() { _ = term.Restore(int(f.Fd()), old) }
		}
	}
	u.term = term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{in, out}, "[connecting] -> ")
	resize := func() {}
	if f, ok := out.(*os.File); ok {
		resize = func() {
			if w, h, err := term.GetSize(int(f.Fd())); err == nil {
				_ = u.term.SetSize(w, h)
			}
		}
	}
	resize()
	// Called for each key, before the editor applies it, with the editor's
	// lock released.
	u.term.AutoCompleteCallback = func(line string, pos int, key rune) (string, int, bool) {
		if typingKey(line, pos, key) {
			u.typed()
		}
		return "", 0, false
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		for range winch {
			resize()
		}
	}()
	return func() {
		signal.Stop(winch)
		close(winch)
		u.mu.Lock()
		u.closed = true // no more output through the editor
		u.mu.Unlock()
		fmt.Fprint(out, "\r\n")
		if undo != nil {
			undo()
		}
	}
}

func promptPassword(in io.Reader, out io.Writer) (string, error) {
	fmt.Fprint(out, "password: ")
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(out)
		return string(b), err
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && line == "" {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// ui is the terminal state. Callbacks from the SDK and the command loop
// share it under mu.
type ui struct {
	c    *client.Client
	out  io.Writer
	term *term.Terminal // the line editor (ansi); nil: plain lines

	mu       sync.Mutex
	closed   bool // Run returned: print nothing more
	me       int64
	state    client.StateEvent // the latest
	retryAt  time.Time         // while reconnecting: when the next attempt starts
	lostAt   time.Time         // start of the current outage (zero: none)
	online   bool              // was online at least once
	names    map[int64]string  // uid → username
	groups   map[int64]string  // gid → name
	convs    map[string]*convState
	open     string           // the open conversation
	openPeer int64            // its peer (direct) or 0
	openGID  int64            // its group or 0
	loading  bool             // a user list refresh runs
	learned  time.Time        // when a message last waited for a name refresh
	marking  map[string]int64 // conv → seq a running mark-read goroutine is to reach
	epoch    uint64           // messages handled so far (see convState.epoch)

	// Version 2 (PROTOCOL §13–§16).
	v2      bool                // the last welcome said version 2
	gmeta   map[int64]groupMeta // gid → owner and visibility
	typers  map[string][]int64  // conv → who types there now (OnTyping), ascending
	presSub []int64             // the presence subscription asked for last, ascending
}

// groupMeta is what version 2 adds to a group (§13).
type groupMeta struct {
	owner  int64 // 0: empty, or not known
	public bool
}

// convState is what the unread count of a conversation derives from
// (PROTOCOL §10: unread = last_seq − read_seq): the highest seq seen, and
// the read mark from convs, read frames, the user's own messages (sending
// moves the sender's read mark) and messages shown in the open
// conversation (marked read). Both only grow, so the order in which these
// sources arrive does not matter.
//
// For direct conversations of a version 2 server it also keeps what the
// read marks of the status line derive from (§14): the seq of the user's
// own last message and the peer's read_seq (from convs, receipts, and the
// peer's own messages, since sending moves the sender's read mark).
type convState struct {
	last, read int64
	mine       int64  // seq of the user's own last message; 0: none known
	peerRead   int64  // direct: the peer's read_seq
	ts         int64  // store time of the last message known (recency)
	left       bool   // a group the user is no longer in: no unread counted
	epoch      uint64 // ui.epoch at the last message handled
}

func (u *ui) conv(conv string) *convState {
	cs := u.convs[conv]
	if cs == nil {
		cs = &convState{}
		u.convs[conv] = cs
	}
	return cs
}

func (u *ui) unreadLocked(conv string) int64 {
	if cs := u.convs[conv]; cs != nil && !cs.left && cs.last > cs.read {
		return cs.last - cs.read
	}
	return 0
}

// printf prints a line of output, keeping the prompt and the typed input
// below it.
func (u *ui) printf(format string, a ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.printLocked(fmt.Sprintf(format, a...))
}

func (u *ui) printLocked(line string) {
	switch {
	case u.closed:
	case u.term != nil:
		// The editor clears the prompt and the typed input, writes the
		// line above them and draws them again.
		_, _ = u.term.Write([]byte(line + "\n"))
	default:
		fmt.Fprintln(u.out, line)
	}
}

// refreshLocked redraws the prompt (the status line) in place.
func (u *ui) refreshLocked() {
	if u.term == nil || u.closed {
		return
	}
	u.term.SetPrompt(u.promptLocked())
	_, _ = u.term.Write(nil)
}

func (u *ui) promptLocked() string {
	var total int64
	for conv := range u.convs {
		total += u.unreadLocked(conv)
	}
	where := "-"
	if u.open != "" {
		where = u.convNameLocked(u.open)
		if mark := u.readMarkLocked(u.open); mark != "" {
			where += " " + mark
		}
		if t := u.typingLocked(u.open); t != "" {
			where += ", " + t
		}
	}
	s := fmt.Sprintf("[%s] %s", u.statusLocked(), where)
	if total > 0 {
		s += fmt.Sprintf(" (%d unread)", total)
	}
	return s + "> "
}

// statusLocked is the connection part of the prompt: during an outage the
// next attempt and a countdown to it.
func (u *ui) statusLocked() string {
	switch u.state.State {
	case client.StateOnline:
		return "online"
	case client.StateReconnecting:
		s := fmt.Sprintf("offline %s, try %d", time.Since(u.lostAt).Round(time.Second), u.state.Attempt)
		if d := time.Until(u.retryAt); d > 0 {
			s += fmt.Sprintf(" in %ds", int(d.Seconds()+0.999))
		} else {
			s += " now"
		}
		return s + ", /retry"
	case client.StateOffline:
		if u.state.Err != nil || u.online {
			return "offline"
		}
	}
	return "connecting"
}

func (u *ui) prompt() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.closed {
		fmt.Fprint(u.out, u.promptLocked())
	}
}

func (u *ui) nameLocked(uid int64) string {
	if n, ok := u.names[uid]; ok {
		return n
	}
	return "#" + strconv.FormatInt(uid, 10)
}

func (u *ui) convNameLocked(conv string) string {
	a, b, gid, ok := client.ParseConv(conv)
	switch {
	case !ok:
		return clean(conv)
	case gid != 0:
		if n := u.groups[gid]; n != "" {
			return "#" + clean(n)
		}
		return "#" + strconv.FormatInt(gid, 10)
	case a == u.me:
		return "@" + u.nameLocked(b)
	default:
		return "@" + u.nameLocked(a)
	}
}

func (u *ui) onMessage(m client.Message) {
	u.learnNames(m)
	u.mu.Lock()
	defer u.mu.Unlock()
	_, known := u.names[m.From]
	_, _, gid, _ := client.ParseConv(m.Conv)
	if gid != 0 && u.groups[gid] == "" {
		known = false // a group this UI has not seen yet: refresh its name too
	}
	if !known && !u.loading {
		u.loading = true
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			u.loadUsers(ctx, "")
			u.cmdConvsQuiet(ctx)
			u.mu.Lock()
			u.loading = false
			u.refreshLocked()
			u.mu.Unlock()
		}()
	}
	u.epoch++
	newConv := u.convs[m.Conv] == nil
	cs := u.conv(m.Conv)
	cs.last = max(cs.last, m.Seq)
	cs.ts = max(cs.ts, m.TS)
	cs.epoch = u.epoch
	switch {
	case m.From == u.me:
		cs.read = max(cs.read, m.Seq) // sending moved our read mark (§10)
		cs.mine = max(cs.mine, m.Seq)
	case m.Conv == u.open:
		cs.read = max(cs.read, m.Seq) // shown: mark it read
		u.markReadLocked(m.Conv, m.Seq)
	}
	if gid == 0 && m.From != u.me {
		cs.peerRead = max(cs.peerRead, m.Seq) // the peer's send moved their read mark
		if newConv && u.v2 && !slices.Contains(u.presSub, m.From) {
			go u.syncPresence(context.Background()) // a new peer
		}
	}
	ev := m.Event
	if ev != nil && ev.Event == client.EventCreated {
		u.groups[gid] = ev.Name // the note names the group
	}
	u.printLocked(u.formatLocked(m))
	if ev != nil {
		u.groupEventLocked(cs, ev)
	}
	u.refreshLocked()
}

// learnNames refreshes the user list (and the group list) before m is
// printed when m names a user or a group this UI does not know, so the
// line reads "dave: hi" rather than "#4: hi". It waits at most 3 s and
// runs at most once every 2 s; other misses are refreshed in the
// background by onMessage, for the lines after.
func (u *ui) learnNames(m client.Message) {
	u.mu.Lock()
	uids := []int64{m.From}
	if ev := m.Event; ev != nil {
		uids = append(uids, ev.Members...)
		if ev.OwnerChanged && ev.NewOwner != 0 {
			uids = append(uids, ev.NewOwner)
		}
	}
	var users bool
	for _, uid := range uids {
		if _, ok := u.names[uid]; !ok {
			users = true
		}
	}
	_, _, gid, _ := client.ParseConv(m.Conv)
	groups := gid != 0 && u.groups[gid] == "" && (m.Event == nil || m.Event.Event != client.EventCreated)
	if !users && !groups || time.Since(u.learned) < 2*time.Second {
		u.mu.Unlock()
		return
	}
	u.learned = time.Now()
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if users {
		u.loadUsers(ctx, "")
	}
	if groups {
		u.cmdConvsQuiet(ctx)
	}
}

// markReadLocked marks conv read up to seq in the background: one
// goroutine per conversation at a time, which goes on to the highest seq
// asked for meanwhile.
func (u *ui) markReadLocked(conv string, seq int64) {
	if u.marking == nil {
		u.marking = map[string]int64{}
	}
	if cur, ok := u.marking[conv]; ok {
		u.marking[conv] = max(cur, seq)
		return
	}
	u.marking[conv] = seq
	go func() {
		var done int64
		for {
			u.mu.Lock()
			want := u.marking[conv]
			if want <= done {
				delete(u.marking, conv)
				u.mu.Unlock()
				return
			}
			u.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := u.c.MarkRead(ctx, conv, want)
			cancel()
			if err != nil {
				u.mu.Lock()
				delete(u.marking, conv)
				u.mu.Unlock()
				if !errors.Is(err, client.ErrClosed) {
					u.fail("read", err)
				}
				return
			}
			done = want
		}
	}()
}

// formatLocked is a message's line in the transcript; a group's system
// message is a note: "12:03 #team * alice added bob, carol".
func (u *ui) formatLocked(m client.Message) string {
	ts := time.UnixMilli(m.TS).Format("15:04")
	if m.Event != nil {
		return fmt.Sprintf("%s %s * %s", ts, u.convNameLocked(m.Conv), noteText(m.Event, u.nameLocked))
	}
	return fmt.Sprintf("%s %s %s: %s", ts, u.convNameLocked(m.Conv), u.nameLocked(m.From), clean(m.Body))
}

// onState keeps the status line current. An outage prints one line when
// it starts and one when it ends; in between only the status line changes
// (attempt and countdown), in place.
func (u *ui) onState(e client.StateEvent) {
	u.mu.Lock()
	defer u.mu.Unlock()
	prev := u.state.State
	u.state = e
	switch e.State {
	case client.StateOnline:
		u.v2 = u.c.ServerVersion() >= 2
		if !u.lostAt.IsZero() {
			u.printLocked(fmt.Sprintf("-- online again (offline %v)", time.Since(u.lostAt).Round(time.Second)))
			u.lostAt = time.Time{}
			go func() { // read marks and groups that changed meanwhile
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				u.cmdConvsQuiet(ctx)
			}()
		} else {
			u.printLocked("-- online")
		}
		u.online = true
	case client.StateReconnecting:
		u.retryAt = time.Now().Add(e.Delay)
		if prev != client.StateReconnecting {
			u.lostAt = time.Now()
			why := fmt.Sprintf("connection lost (close %d, %s)", e.Code, client.CloseCodeName(e.Code))
			if e.Code == 0 && e.Err != nil {
				why = fmt.Sprintf("cannot connect: %v", e.Err)
			}
			u.printLocked(fmt.Sprintf("-- %s %s; reconnecting, /retry tries at once", time.Now().Format("15:04:05"), why))
		}
	case client.StateOffline:
		if e.Err != nil && !errors.Is(e.Err, client.ErrClosed) {
			u.printLocked(fmt.Sprintf("-- offline: %v", e.Err))
		}
	}
	u.refreshLocked()
}

func (u *ui) onRead(r client.ReadMark) {
	u.mu.Lock()
	defer u.mu.Unlock()
	cs := u.conv(r.Conv)
	cs.read = max(cs.read, r.Seq)
	cs.last = max(cs.last, r.Seq+r.Unread)
	u.refreshLocked()
}

// command runs one input line; it reports whether to quit.
func (u *ui) command(ctx context.Context, line string) bool {
	if line == "" {
		return false
	}
	if !strings.HasPrefix(line, "/") {
		u.cmdSend(ctx, line)
		return false
	}
	cmd, rest, _ := strings.Cut(line, " ")
	rest = strings.TrimSpace(rest)
	args := strings.Fields(rest)
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	switch cmd {
	case "/quit", "/exit", "/q":
		return true
	case "/help", "/h", "/?":
		u.printf("%s", strings.TrimRight(usage[strings.Index(usage, "Commands"):], "\n"))
	case "/convs", "/c":
		u.cmdConvs(rctx)
	case "/open", "/o":
		if rest == "" {
			u.printf("usage: /open NAME or /open #GROUP (a group name may have spaces)")
			return false
		}
		u.cmdOpen(rctx, rest)
	case "/send", "/s":
		u.cmdSend(rctx, rest)
	case "/history":
		n := 20
		if len(args) == 1 {
			if v, err := strconv.Atoi(args[0]); err == nil && v > 0 {
				n = v
			}
		}
		u.cmdHistory(rctx, n)
	case "/read", "/r":
		u.cmdRead(rctx)
	case "/create":
		a, err := parseCreate(rest)
		if err != nil {
			u.printf("create: %v (usage: /create [+public] NAME USER...)", err)
			return false
		}
		u.cmdCreate(rctx, a)
	case "/join":
		if rest == "" {
			u.printf("usage: /join #GROUP or /join ID (a public group)")
			return false
		}
		if gid, ok := u.resolveGroup(rctx, rest); ok {
			u.cmdGroup(rctx, cmd, gid)
		}
	case "/leave", "/members":
		gid := int64(0)
		if rest == "" {
			if gid = u.openGroup(cmd); gid == 0 {
				return false
			}
		} else if id, ok := u.resolveGroup(rctx, rest); ok {
			gid = id
		} else {
			return false
		}
		u.cmdGroup(rctx, cmd, gid)
	case "/add", "/remove":
		u.cmdMembers(rctx, cmd, rest)
	case "/rename":
		u.cmdRename(rctx, rest)
	case "/users", "/u":
		u.cmdUsers(rctx, rest)
	case "/status":
		u.mu.Lock()
		st := fmt.Sprintf("state: %s, protocol version %d, uid %d, open: %s", u.c.State(), u.c.ServerVersion(), u.me, u.open)
		if u.state.State == client.StateReconnecting && u.state.Err != nil {
			st += fmt.Sprintf(", last error: %v", u.state.Err)
		}
		u.printLocked(st)
		u.mu.Unlock()
	case "/retry":
		if !u.c.RetryNow() {
			u.printf("not waiting to reconnect (%s)", u.c.State())
		}
	default:
		u.printf("unknown command %s (try /help)", cmd)
	}
	return false
}

func (u *ui) fail(what string, err error) { u.printf("%s: %v", what, err) }

// shorten cuts s to at most n bytes at a character boundary, marking the
// cut with "…".
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func (u *ui) loadUsers(ctx context.Context, prefix string) []client.User {
	var all []client.User
	var after int64
	for len(all) < 10000 {
		page, err := u.c.ListUsers(ctx, client.UsersQuery{Prefix: prefix, After: after, Limit: 200})
		if err != nil {
			break
		}
		all = append(all, page...)
		if len(page) < 200 {
			break
		}
		after = page[len(page)-1].UID
	}
	u.mu.Lock()
	for _, us := range all {
		u.names[us.UID] = us.Username
	}
	u.mu.Unlock()
	return all
}

// convsLocked takes group names and read state from a convs reply; epoch
// is u.epoch when the request went out. Every group the user is in is
// listed (PROTOCOL §4), so a group that is not, and had no message since
// the request, is one the user left or was removed from meanwhile.
func (u *ui) convsLocked(list client.ConvList, epoch uint64) {
	listed := map[string]bool{}
	for _, it := range list.Items {
		listed[it.Conv] = true
		if it.Group != 0 {
			u.groups[it.Group] = it.Name
			if u.v2 {
				u.gmeta[it.Group] = groupMeta{owner: it.Owner, public: it.Public}
			}
		}
		cs := u.conv(it.Conv)
		cs.last = max(cs.last, it.LastSeq)
		cs.read = max(cs.read, it.ReadSeq)
		cs.peerRead = max(cs.peerRead, it.PeerReadSeq)
		if m := it.Last; m != nil {
			cs.ts = max(cs.ts, m.TS)
			if m.From == u.me {
				cs.mine = max(cs.mine, m.Seq)
			}
		}
	}
	for conv, cs := range u.convs {
		if _, _, gid, _ := client.ParseConv(conv); gid != 0 && cs.epoch <= epoch {
			cs.left = !listed[conv]
			if cs.left && u.open == conv {
				u.open, u.openPeer, u.openGID = "", 0, 0
			}
		}
	}
}

// fetchConvs fetches the conversation list, applies it and renews the presence
// subscription for the direct peers in it.
func (u *ui) fetchConvs(ctx context.Context) (client.ConvList, error) {
	u.mu.Lock()
	epoch := u.epoch
	u.mu.Unlock()
	list, err := u.c.Convs(ctx)
	if err != nil {
		return list, err
	}
	u.mu.Lock()
	u.convsLocked(list, epoch)
	u.refreshLocked()
	u.mu.Unlock()
	u.syncPresence(ctx)
	return list, nil
}

func (u *ui) cmdConvs(ctx context.Context) {
	list, err := u.fetchConvs(ctx)
	if err != nil {
		u.fail("convs", err)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(list.Items) == 0 {
		u.printLocked("no conversations yet: /users lists people, /open NAME starts one")
		return
	}
	u.printLocked(fmt.Sprintf("conversations (%d unread):", list.TotalUnread))
	labels := make([]string, len(list.Items))
	width := 24 // the names' column: as wide as the widest, within 24 to 40
	for i, it := range list.Items {
		labels[i] = u.convLabelLocked(it)
		width = max(width, min(40, utf8.RuneCountInString(labels[i])))
	}
	for i, it := range list.Items {
		line := fmt.Sprintf("  %s%s %3d unread", labels[i], strings.Repeat(" ", max(0, width-utf8.RuneCountInString(labels[i]))), it.Unread)
		if m := it.Last; m != nil && m.Event != nil {
			line += "  * " + noteText(m.Event, u.nameLocked)
		} else if m != nil {
			line += fmt.Sprintf("  %s: %s", u.nameLocked(m.From), shorten(clean(m.Body), 40))
		}
		u.printLocked(line)
	}
}

// convLabelLocked names a conversation in /convs: "@bob (online)",
// "@carol (last seen 5 min ago)", "#lobby (group 1, public)".
func (u *ui) convLabelLocked(it client.Conv) string {
	name := u.convNameLocked(it.Conv)
	switch {
	case it.Group != 0 && it.Public:
		name += fmt.Sprintf(" (group %d, public)", it.Group)
	case it.Group != 0:
		name += fmt.Sprintf(" (group %d)", it.Group)
	case it.Peer != 0:
		if p := u.presenceLocked(it.Peer); p != "" {
			name += " (" + p + ")"
		}
	}
	return name
}

func (u *ui) cmdConvsQuiet(ctx context.Context) {
	_, _ = u.fetchConvs(ctx)
}

// pick chooses among names (id → name) the one named q (case-insensitive),
// else the only one whose name starts with q. It returns the candidates
// when q is ambiguous.
func pick(names map[int64]string, q string) (id int64, ambiguous []string) {
	var prefixed []int64
	for i, n := range names {
		if strings.EqualFold(n, q) {
			return i, nil
		}
		if len(n) >= len(q) && strings.EqualFold(n[:len(q)], q) {
			prefixed = append(prefixed, i)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0], nil
	}
	for _, i := range prefixed {
		ambiguous = append(ambiguous, names[i])
	}
	sort.Strings(ambiguous)
	return 0, ambiguous
}

// cmdOpen opens "#group name", "#gid", "@user" or "user"; a unique prefix
// of a name is enough. A bare name that is no user's opens a group of
// that name.
func (u *ui) cmdOpen(ctx context.Context, target string) {
	var conv string
	var peer, gid int64
	g, isGroup := strings.CutPrefix(target, "#")
	if !isGroup {
		name := strings.TrimPrefix(target, "@")
		uid, amb, err := u.lookupUser(ctx, name)
		switch {
		case uid != 0:
			peer, conv = uid, client.DirectConv(u.me, uid)
		case len(amb) > 0:
			u.printf("%q matches %d users: %s; type more of the name", name, len(amb), strings.Join(amb, ", "))
			return
		case strings.HasPrefix(target, "@"):
			u.fail("open", err)
			return
		default:
			g, isGroup = target, true
		}
	}
	if isGroup {
		if id, err := strconv.ParseInt(g, 10, 64); err == nil && id > 0 {
			gid = id
		} else {
			var amb []string
			u.mu.Lock()
			gid, amb = pick(u.groups, g)
			u.mu.Unlock()
			if gid == 0 && len(amb) == 0 {
				u.cmdConvsQuiet(ctx) // a group joined elsewhere
				u.mu.Lock()
				gid, amb = pick(u.groups, g)
				u.mu.Unlock()
			}
			if len(amb) > 0 {
				u.printf("#%s matches %d groups: #%s; type more of the name", g, len(amb), strings.Join(amb, ", #"))
				return
			}
			if gid == 0 {
				u.printf("no user or group named %s among yours (/users lists users, /convs your groups, /join ID joins one)", target)
				return
			}
		}
		conv = client.GroupConv(gid)
	}
	u.mu.Lock()
	u.open, u.openPeer, u.openGID = conv, peer, gid
	if cs := u.convs[conv]; cs != nil && cs.last > cs.read {
		cs.read = cs.last // shown below: mark it read
		u.markReadLocked(conv, cs.last)
	}
	u.refreshLocked()
	u.mu.Unlock()
	switch {
	case peer == 0:
	case u.c.State() == client.StateOnline:
		u.syncPresence(ctx) // the header says whether the peer is online
	default:
		go u.syncPresence(context.Background()) // sent once online; the history waits anyway
	}
	u.cmdHistory(ctx, 10)
}

// lookupUser finds a user by name or unique name prefix (not the user
// itself, unless named in full).
func (u *ui) lookupUser(ctx context.Context, name string) (uid int64, ambiguous []string, err error) {
	if name == "" {
		return 0, nil, errors.New("no name")
	}
	cands := map[int64]string{}
	for _, us := range u.loadUsers(ctx, name) {
		if strings.EqualFold(us.Username, name) {
			return us.UID, nil, nil
		}
		if us.UID != u.me {
			cands[us.UID] = us.Username
		}
	}
	if uid, ambiguous = pick(cands, name); uid != 0 || len(ambiguous) > 0 {
		return uid, ambiguous, nil
	}
	return 0, nil, fmt.Errorf("no user %q", name)
}

// cmdHistory prints the last n messages of the open conversation under a
// header ("-- @bob (online)"). In a direct conversation of a version 2
// server, a line "-- bob has read up to here" goes before the first
// message the peer has not read, when messages of the user's own are
// among those.
func (u *ui) cmdHistory(ctx context.Context, n int) {
	u.mu.Lock()
	conv, peer := u.open, u.openPeer
	u.mu.Unlock()
	if conv == "" {
		u.printf("no open conversation: /open NAME or /open #GROUP")
		return
	}
	page, err := u.c.HistoryLatest(ctx, conv, n)
	if err != nil {
		var e *client.Error
		if errors.As(err, &e) && e.Code == client.CodeNotFound {
			u.printf("(no messages yet)")
			return
		}
		u.fail("history", err)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	head := "-- " + u.convNameLocked(conv)
	if peer != 0 {
		if p := u.presenceLocked(peer); p != "" {
			head += " (" + p + ")"
		}
	}
	u.printLocked(head)
	if len(page.Messages) == 0 {
		u.printLocked("(no messages yet)")
	}
	cs := u.conv(conv)
	for _, m := range page.Messages {
		if m.From == u.me {
			cs.mine = max(cs.mine, m.Seq)
		} else if peer != 0 {
			cs.peerRead = max(cs.peerRead, m.Seq)
		}
	}
	marker := -1 // index of the first message the peer has not read
	if u.v2 && peer != 0 {
		for i, m := range page.Messages {
			if m.Seq > cs.peerRead {
				if marker < 0 {
					marker = i
				}
				if m.From == u.me {
					break
				}
			}
			if i == len(page.Messages)-1 {
				marker = -1 // none of the user's own unread: nothing to say
			}
		}
	}
	for i, m := range page.Messages {
		if i == marker {
			u.printLocked(fmt.Sprintf("-- %s has read up to here", u.nameLocked(peer)))
		}
		u.printLocked(u.formatLocked(m))
	}
	u.refreshLocked()
}

func (u *ui) cmdSend(ctx context.Context, text string) {
	u.mu.Lock()
	peer, gid := u.openPeer, u.openGID
	u.mu.Unlock()
	if peer == 0 && gid == 0 {
		u.printf("no open conversation: /open NAME or /open #GROUP")
		return
	}
	if text == "" {
		return
	}
	if _, err := u.c.Send(ctx, client.Outgoing{To: peer, Group: gid, Body: text}); err != nil {
		u.fail("send", err)
	}
}

func (u *ui) cmdRead(ctx context.Context) {
	u.mu.Lock()
	conv := u.open
	u.mu.Unlock()
	if conv == "" {
		u.printf("no open conversation")
		return
	}
	r, err := u.c.MarkRead(ctx, conv, 1<<52)
	if err != nil {
		u.fail("read", err)
		return
	}
	u.onRead(r)
	u.printf("marked read up to %d (%d unread in total)", r.Seq, r.TotalUnread)
}

func (u *ui) cmdCreate(ctx context.Context, a createArgs) {
	uids, ok := u.resolveUsers(ctx, "create", a.users)
	if !ok {
		return
	}
	g, err := u.c.CreateGroupWith(ctx, client.NewGroup{Name: a.name, Members: uids, Public: a.public})
	if err != nil {
		u.fail("create", err)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.groupReplyLocked(g, false)
	kind := ""
	if u.v2 && g.Public {
		kind = "public, "
	} else if u.v2 {
		kind = "private, "
	}
	u.printLocked(fmt.Sprintf("created #%s (group %d, %s%d members); /open #%d", clean(g.Name), g.ID, kind, g.Count, g.ID))
}

// cmdGroup runs /join, /leave, /members, and /add and /remove of uids.
func (u *ui) cmdGroup(ctx context.Context, cmd string, gid int64, uids ...int64) {
	var g client.Group
	var err error
	switch cmd {
	case "/add":
		g, err = u.c.AddMembers(ctx, gid, uids)
	case "/remove":
		g, err = u.c.RemoveMembers(ctx, gid, uids)
	case "/join":
		g, err = u.c.JoinGroup(ctx, gid)
	case "/leave":
		g, err = u.c.LeaveGroup(ctx, gid)
	default:
		g, err = u.c.GroupMembers(ctx, gid, 0, 1000)
	}
	if err != nil {
		u.groupFail(cmd[1:], gid, err)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.groupReplyLocked(g, false)
	switch cmd {
	case "/add", "/remove":
		u.printLocked(fmt.Sprintf("-- %s has %d members", u.groupLabelLocked(gid), g.Count))
	case "/join":
		if cs := u.convs[client.GroupConv(gid)]; cs != nil {
			cs.left = false
		}
		u.printLocked(fmt.Sprintf("joined %s (group %d, %d members); /open #%d", u.groupLabelLocked(gid), g.ID, g.Count, g.ID))
	case "/leave":
		if cs := u.convs[client.GroupConv(gid)]; cs != nil {
			cs.left = true
		}
		if u.openGID == gid {
			u.open, u.openPeer, u.openGID = "", 0, 0
		}
		u.printLocked(fmt.Sprintf("left %s (%d members remain)", u.groupLabelLocked(gid), g.Count))
		u.refreshLocked()
	default:
		names := make([]string, 0, len(g.Members))
		for _, m := range g.Members {
			n := u.nameLocked(m)
			if u.v2 && m == g.Owner {
				n += " (owner)"
			}
			names = append(names, n)
		}
		sort.Strings(names)
		more := ""
		if g.More {
			more = ", …"
		}
		u.printLocked(fmt.Sprintf("%s (group %d): %d members: %s%s", u.groupLabelLocked(gid), g.ID, g.Count, strings.Join(names, ", "), more))
	}
}

func (u *ui) cmdUsers(ctx context.Context, prefix string) {
	users := u.loadUsers(ctx, prefix)
	if len(users) == 0 {
		u.printf("no users")
		return
	}
	names := make([]string, 0, len(users))
	for _, us := range users {
		names = append(names, fmt.Sprintf("%s (%d)", us.Username, us.UID))
	}
	u.printf("users: %s", strings.Join(names, ", "))
}
