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
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/magpie-im/magpie/client"
)

const usage = `usage: magpie chat --server URL --user NAME [--device ID] [--register]

The password comes from $MAGPIE_PASSWORD, or a prompt.

Commands (plain text sends to the open conversation):
  /convs               conversations with unread counts
  /open NAME|#GROUP    open a direct conversation or a group (#name or #id)
  /send TEXT           send to the open conversation
  /history [N]         the last N messages of the open conversation (default 20)
  /read                mark the open conversation read
  /create NAME USER..  create a group with these users
  /join ID             join group ID
  /leave ID            leave group ID
  /members ID          list the members of group ID
  /users [PREFIX]      list users
  /status              connection state
  /help                this text
  /quit                leave (also Ctrl-D)
`

// Main runs `magpie chat` with args (the arguments after "chat") on the
// process's terminal and returns the exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	password := os.Getenv("MAGPIE_PASSWORD")
	return Run(ctx, args, os.Stdin, os.Stdout, password, term.IsTerminal(int(os.Stdout.Fd())))
}

// Run is Main with explicit input, output and password ("" means prompt on
// the terminal). ansi enables redrawing the prompt around live output.
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
	u := &ui{out: out, ansi: ansi, names: map[int64]string{}, groups: map[int64]string{}, unread: map[string]int64{}}
	c, err := client.New(client.Options{
		Server:    *server,
		Username:  *user,
		Password:  password,
		Device:    *device,
		OnMessage: u.onMessage,
		OnState:   u.onState,
		OnRead:    u.onRead,
	})
	if err != nil {
		fmt.Fprintln(out, err)
		return 2
	}
	defer c.Close()
	u.c = c
	u.printf("connecting to %s as %s …", *server, *user)
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = c.Connect(cctx)
	cancel()
	switch {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded):
		u.printf("not online yet; still trying in the background")
	default:
		fmt.Fprintln(out, "connect:", err)
		return 1
	}
	u.mu.Lock()
	u.me = c.UID()
	u.mu.Unlock()
	u.printf("logged in as %s (uid %d). /help lists the commands.", *user, c.UID())
	u.loadUsers(ctx, "")
	u.cmdConvs(ctx)

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		u.prompt()
		select {
		case <-ctx.Done():
			u.printf("bye")
			return 0
		case line, ok := <-lines:
			if !ok {
				return 0
			}
			u.lineDone()
			if quit := u.command(ctx, strings.TrimSpace(line)); quit {
				return 0
			}
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
	ansi bool

	mu       sync.Mutex
	me       int64
	state    string
	names    map[int64]string // uid → username
	groups   map[int64]string // gid → name
	unread   map[string]int64 // conv → unread, from convs and live messages
	open     string           // the open conversation
	openPeer int64            // its peer (direct) or 0
	openGID  int64            // its group or 0
	lastSeen map[string]int64
	prompted bool // a prompt is on screen
	loading  bool // a user list refresh runs
}

// printf prints a line of output, keeping the prompt below it.
func (u *ui) printf(format string, a ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.printLocked(fmt.Sprintf(format, a...))
}

func (u *ui) printLocked(line string) {
	if u.prompted && u.ansi {
		fmt.Fprint(u.out, "\r\x1b[K")
	}
	fmt.Fprintln(u.out, line)
	if u.prompted && u.ansi {
		fmt.Fprint(u.out, u.promptLocked())
	}
}

func (u *ui) promptLocked() string {
	state := u.state
	if state == "" {
		state = "connecting"
	}
	var total int64
	for _, n := range u.unread {
		total += n
	}
	where := "-"
	if u.open != "" {
		where = u.convNameLocked(u.open)
	}
	s := fmt.Sprintf("[%s] %s", state, where)
	if total > 0 {
		s += fmt.Sprintf(" (%d unread)", total)
	}
	return s + "> "
}

func (u *ui) prompt() {
	u.mu.Lock()
	defer u.mu.Unlock()
	fmt.Fprint(u.out, u.promptLocked())
	u.prompted = true
}

func (u *ui) lineDone() {
	u.mu.Lock()
	u.prompted = false
	u.mu.Unlock()
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
		return conv
	case gid != 0:
		if n := u.groups[gid]; n != "" {
			return "#" + n
		}
		return "#" + strconv.FormatInt(gid, 10)
	case a == u.me:
		return "@" + u.nameLocked(b)
	default:
		return "@" + u.nameLocked(a)
	}
}

func (u *ui) onMessage(m client.Message) {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, known := u.names[m.From]
	if _, _, gid, _ := client.ParseConv(m.Conv); gid != 0 && u.groups[gid] == "" {
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
			u.mu.Unlock()
		}()
	}
	if m.From != u.me && m.Conv != u.open {
		u.unread[m.Conv]++
	}
	if u.lastSeen == nil {
		u.lastSeen = map[string]int64{}
	}
	u.lastSeen[m.Conv] = m.Seq
	u.printLocked(u.formatLocked(m))
}

func (u *ui) formatLocked(m client.Message) string {
	ts := time.UnixMilli(m.TS).Format("15:04")
	return fmt.Sprintf("%s %s %s: %s", ts, u.convNameLocked(m.Conv), u.nameLocked(m.From), m.Body)
}

func (u *ui) onState(e client.StateEvent) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.state = e.State.String()
	switch e.State {
	case client.StateOnline:
		u.printLocked("-- online")
	case client.StateReconnecting:
		msg := fmt.Sprintf("-- connection lost (close %d, %s); reconnecting in %v", e.Code, client.CloseCodeName(e.Code), e.Delay.Round(time.Millisecond))
		if e.Code == 0 && e.Err != nil {
			msg = fmt.Sprintf("-- %v; retrying in %v", e.Err, e.Delay.Round(time.Millisecond))
		}
		u.printLocked(msg)
	case client.StateOffline:
		if e.Err != nil && !errors.Is(e.Err, client.ErrClosed) {
			u.printLocked(fmt.Sprintf("-- offline: %v", e.Err))
		}
	}
}

func (u *ui) onRead(r client.ReadMark) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.unread[r.Conv] = r.Unread
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
		if len(args) != 1 {
			u.printf("usage: /open NAME or /open #GROUP")
			return false
		}
		u.cmdOpen(rctx, args[0])
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
		if len(args) < 1 {
			u.printf("usage: /create NAME USER...")
			return false
		}
		u.cmdCreate(rctx, args[0], args[1:])
	case "/join", "/leave", "/members":
		if len(args) != 1 {
			u.printf("usage: %s GROUP-ID", cmd)
			return false
		}
		gid, err := strconv.ParseInt(strings.TrimPrefix(args[0], "#"), 10, 64)
		if err != nil || gid <= 0 {
			u.printf("not a group id: %s", args[0])
			return false
		}
		u.cmdGroup(rctx, cmd, gid)
	case "/users", "/u":
		u.cmdUsers(rctx, rest)
	case "/status":
		u.mu.Lock()
		u.printLocked(fmt.Sprintf("state: %s, uid %d, open: %s", u.c.State(), u.me, u.open))
		u.mu.Unlock()
	default:
		u.printf("unknown command %s (try /help)", cmd)
	}
	return false
}

func (u *ui) fail(what string, err error) { u.printf("%s: %v", what, err) }

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

func (u *ui) cmdConvs(ctx context.Context) {
	list, err := u.c.Convs(ctx)
	if err != nil {
		u.fail("convs", err)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, it := range list.Items {
		if it.Group != 0 {
			u.groups[it.Group] = it.Name
		}
		u.unread[it.Conv] = it.Unread
	}
	if len(list.Items) == 0 {
		u.printLocked("no conversations yet: /users lists people, /open NAME starts one")
		return
	}
	u.printLocked(fmt.Sprintf("conversations (%d unread):", list.TotalUnread))
	for _, it := range list.Items {
		name := u.convNameLocked(it.Conv)
		if it.Group != 0 {
			name += fmt.Sprintf(" (group %d)", it.Group)
		}
		line := fmt.Sprintf("  %-24s %3d unread", name, it.Unread)
		if it.Last != nil {
			body := it.Last.Body
			if len(body) > 40 {
				body = body[:40] + "…"
			}
			line += fmt.Sprintf("  %s: %s", u.nameLocked(it.Last.From), body)
		}
		u.printLocked(line)
	}
}

func (u *ui) cmdOpen(ctx context.Context, target string) {
	var conv string
	var peer, gid int64
	if g, ok := strings.CutPrefix(target, "#"); ok {
		if id, err := strconv.ParseInt(g, 10, 64); err == nil && id > 0 {
			gid = id
		} else {
			u.mu.Lock()
			for id, n := range u.groups {
				if strings.EqualFold(n, g) {
					gid = id
				}
			}
			u.mu.Unlock()
			if gid == 0 {
				u.cmdConvsQuiet(ctx)
				u.mu.Lock()
				for id, n := range u.groups {
					if strings.EqualFold(n, g) {
						gid = id
					}
				}
				u.mu.Unlock()
			}
			if gid == 0 {
				u.printf("no group named %s among yours (use /join ID)", g)
				return
			}
		}
		conv = client.GroupConv(gid)
	} else {
		uid, err := u.lookupUser(ctx, strings.TrimPrefix(target, "@"))
		if err != nil {
			u.fail("open", err)
			return
		}
		peer = uid
		conv = client.DirectConv(u.me, uid)
	}
	u.mu.Lock()
	u.open, u.openPeer, u.openGID = conv, peer, gid
	u.mu.Unlock()
	u.cmdHistory(ctx, 10)
}

func (u *ui) cmdConvsQuiet(ctx context.Context) {
	list, err := u.c.Convs(ctx)
	if err != nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, it := range list.Items {
		if it.Group != 0 {
			u.groups[it.Group] = it.Name
		}
	}
}

func (u *ui) lookupUser(ctx context.Context, name string) (int64, error) {
	for _, us := range u.loadUsers(ctx, name) {
		if strings.EqualFold(us.Username, name) {
			return us.UID, nil
		}
	}
	return 0, fmt.Errorf("no user %q", name)
}

func (u *ui) cmdHistory(ctx context.Context, n int) {
	u.mu.Lock()
	conv := u.open
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
	u.printLocked(fmt.Sprintf("-- %s", u.convNameLocked(conv)))
	if len(page.Messages) == 0 {
		u.printLocked("(no messages yet)")
	}
	for _, m := range page.Messages {
		u.printLocked(u.formatLocked(m))
	}
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
	u.mu.Lock()
	u.unread[conv] = r.Unread
	u.mu.Unlock()
	u.printf("marked read up to %d (%d unread in total)", r.Seq, r.TotalUnread)
}

func (u *ui) cmdCreate(ctx context.Context, name string, users []string) {
	var uids []int64
	for _, n := range users {
		uid, err := u.lookupUser(ctx, strings.TrimPrefix(n, "@"))
		if err != nil {
			u.fail("create", err)
			return
		}
		uids = append(uids, uid)
	}
	g, err := u.c.CreateGroup(ctx, name, uids)
	if err != nil {
		u.fail("create", err)
		return
	}
	u.mu.Lock()
	u.groups[g.ID] = g.Name
	u.mu.Unlock()
	u.printf("created #%s (group %d, %d members); /open #%d", g.Name, g.ID, g.Count, g.ID)
}

func (u *ui) cmdGroup(ctx context.Context, cmd string, gid int64) {
	var g client.Group
	var err error
	switch cmd {
	case "/join":
		g, err = u.c.JoinGroup(ctx, gid)
	case "/leave":
		g, err = u.c.LeaveGroup(ctx, gid)
	default:
		g, err = u.c.GroupMembers(ctx, gid, 0, 1000)
	}
	if err != nil {
		u.fail(cmd[1:], err)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if g.Name != "" {
		u.groups[g.ID] = g.Name
	}
	switch cmd {
	case "/join":
		u.printLocked(fmt.Sprintf("joined #%s (group %d, %d members)", g.Name, g.ID, g.Count))
	case "/leave":
		u.printLocked(fmt.Sprintf("left group %d (%d members remain)", g.ID, g.Count))
	default:
		names := make([]string, 0, len(g.Members))
		for _, m := range g.Members {
			names = append(names, u.nameLocked(m))
		}
		sort.Strings(names)
		u.printLocked(fmt.Sprintf("group %d: %d members: %s", g.ID, g.Count, strings.Join(names, ", ")))
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
