// Package bench is Magpie's load harness: `magpie bench <scenario>` ramps
// WebSocket clients over several worker processes and source addresses,
// drives one of the scenarios (connect, p2p, fanout, storm) through the
// public protocol only, and reports throughput, HdrHistogram latency
// percentiles and the server's CPU and memory beside them. `magpie bench
// baseline` runs the goroutine-per-connection comparison server.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/magpie-im/magpie/bench/baseline"
	"github.com/magpie-im/magpie/internal/holdsock"
)

const usage = `usage: magpie bench <scenario> [flags]

scenarios:
  connect   ramp N connections, hold them idle with heartbeats; connect rate, server RSS and heap per connection
  p2p       pairs of users exchanging direct messages at a rate or flat out; throughput, sent and end-to-end latency
  fanout    one group with N online members and a sender at rate R; deliveries/s, delivery latency, server CPU per delivery
  storm     N clients connected, the server restarted; time until all are back and caught up, loss and duplicates
  soak      N clients, group and direct traffic while clients drop and reconnect (§9); loss, duplicates, server memory before/peak/after
  baseline  run the goroutine-per-connection comparison server (gorilla/websocket), or its raw-write ceiling mode
  populate  build a data dir of U users, C conversations and M messages, then measure start-up, memory, cold reads and p2p on it

Run "magpie bench <scenario> -h" for the flags. The users come from one of:
  (default)       a running server (--http, default http://127.0.0.1:8080, as
                  "make run" starts it): users PREFIX1 … PREFIXn created through
                  its HTTP API with the password "magpie-bench", their tokens
                  cached under ~/.cache/magpie/bench for reruns
  --tokens FILE   "uid username token" lines, e.g. from "magpie user import --tokens FILE"
  --spawn --data DIR
                  the harness starts the server itself on DIR (importing the
                  users into it when DIR/tokens.txt does not exist yet)
More: docs/bench/harness.md.
`

// Main is `magpie bench`; args excludes "bench".
func Main(args []string) int {
	if len(args) < 1 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "worker":
		return workerMain(os.Stdin, os.Stdout)
	case "baseline":
		return baseline.Main(args[1:])
	case "populate":
		return populateMain(args[1:])
	case "connect", "p2p", "fanout", "storm", "soak":
		o, err := parseOptions(args[0], args[1:])
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "magpie bench %s: %v\n", args[0], err)
			return 2
		}
		rep, err := run(o)
		if rep != nil {
			rep.print(os.Stdout)
			if o.jsonOut != "" {
				if werr := rep.writeJSON(o.jsonOut); werr != nil {
					fmt.Fprintf(os.Stderr, "magpie bench: --json: %v\n", werr)
				}
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "magpie bench %s: %v\n", args[0], err)
			return 1
		}
		return 0
	case "-h", "--help", "help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "magpie bench: unknown scenario %q\n\n%s", args[0], usage)
		return 2
	}
}

type options struct {
	scenario     string
	exe          string
	wsURL        string
	httpURL      string
	serverPID    int
	tokens       string
	password     string
	signupConc   int
	usersCache   string
	spawn        bool
	holdListener bool
	data         string
	serverArgs   []string
	prefix       string
	procs        int
	src          int
	conc         int
	connRate     float64
	heartbeat    time.Duration
	timeout      time.Duration
	jsonOut      string
	target       string
	hold         time.Duration
	conns        int
	pairs        int
	rate         float64
	window       int
	duration     time.Duration
	size         int
	members      int
	messages     int
	kill         string
	wait         time.Duration
	profile      string
	profileSec   int
	ack          bool
	ackMode      string
	publishers   int
	groups       int
	groupSize    int
	groupFrac    float64
	churn        float64
	cleanFrac    float64
	drain        time.Duration
	settle       time.Duration
	sample       time.Duration
}

func parseOptions(scenario string, args []string) (*options, error) {
	o := &options{scenario: scenario}
	fs := flag.NewFlagSet("magpie bench "+scenario, flag.ContinueOnError)
	fs.StringVar(&o.wsURL, "url", "ws://127.0.0.1:7070/ws", "WebSocket URL of the server")
	fs.StringVar(&o.httpURL, "http", "http://127.0.0.1:8080", "HTTP base URL of the server (/metrics, /healthz)")
	fs.IntVar(&o.serverPID, "server-pid", 0, "server PID for /proc RSS and CPU (default: the local process listening on the --url port)")
	fs.StringVar(&o.tokens, "tokens", "", `file of "uid username token" lines (magpie user import --tokens); default: users created through the HTTP API of --http`)
	fs.BoolVar(&o.spawn, "spawn", false, "start (and own) the server: magpie serve --data DIR on the --url and --http addresses")
	fs.StringVar(&o.data, "data", "", "with --spawn: the server's data dir")
	fs.BoolVar(&o.holdListener, "hold-listener", false, "with --spawn: bind the --url socket in the harness and pass it to every server it starts (magpie serve --listen-fd 3), as a systemd .socket unit does: clients that connect during a restart wait in its queue instead of being refused")
	sargs := fs.String("server-args", "", "with --spawn: extra flags of magpie serve, space-separated (e.g. \"--send-rate 0 --fsync=false\")")
	fs.StringVar(&o.prefix, "prefix", "bench", "username prefix of the users the harness creates (PREFIX1 …): through the HTTP API, or imported with --spawn")
	fs.StringVar(&o.password, "password", BenchPassword, "password of the users created through the HTTP API (an existing user is logged in with it)")
	fs.StringVar(&o.usersCache, "users-cache", "", "cache of the users created through the HTTP API (default: under the user cache dir, one file per server and prefix)")
	fs.IntVar(&o.signupConc, "signup-conc", 8, "HTTP register/login requests in flight while creating users (the server hashes each password)")
	fs.IntVar(&o.procs, "procs", 0, "worker processes (default: one per 9,000 clients, at least 1)")
	fs.IntVar(&o.src, "src", 4, "source addresses 127.0.0.2 … (0: let the kernel choose)")
	fs.IntVar(&o.conc, "conc", 64, "dials in flight per worker")
	fs.Float64Var(&o.connRate, "connect-rate", 0, "new connections per second over all workers (0: as fast as --conc allows)")
	fs.DurationVar(&o.heartbeat, "heartbeat", 0, "client ping interval when idle (default: the server's heartbeat_ms)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Second, "dial + handshake + welcome timeout")
	fs.StringVar(&o.jsonOut, "json", "", "write the report as JSON to this file")
	fs.StringVar(&o.target, "target", "magpie", "name of the server under test, for the report (magpie, baseline, ceiling)")
	fs.StringVar(&o.profile, "profile", "", "fetch a CPU profile of the server (/debug/pprof/profile) during the measurement into this file")
	fs.IntVar(&o.profileSec, "profile-seconds", 10, "length of that profile")
	fs.IntVar(&o.size, "size", 64, "message body bytes (the first bytes carry the send time)")
	fs.IntVar(&o.window, "window", 64, "outstanding sends (no sent yet) per sender")
	fs.BoolVar(&o.ack, "ack", true, "ack pushes (cumulative); --ack=false only against servers that ignore acks")
	fs.StringVar(&o.ackMode, "ack-mode", "welcome", "now: ack every push at once, one frame each; welcome: coalesce as the server's welcome says (ack_delay_ms, half of max_inflight)")
	switch scenario {
	case "connect":
		fs.IntVar(&o.conns, "conns", 1000, "connections")
		fs.DurationVar(&o.hold, "hold", 10*time.Second, "hold the connections idle this long before measuring")
	case "p2p":
		fs.IntVar(&o.pairs, "pairs", 100, "pairs of users; both of a pair send to the other")
		fs.Float64Var(&o.rate, "rate", 1000, "messages per second over all senders (0: flat out, bounded by --window)")
		fs.DurationVar(&o.duration, "duration", 10*time.Second, "sending time")
	case "fanout":
		fs.IntVar(&o.members, "members", 1000, "online group members (receivers; the publishers are more)")
		fs.IntVar(&o.publishers, "publishers", 1, "publishers: group members that send --messages between them, each with --window outstanding (1: wait for sent before the next send)")
		fs.Float64Var(&o.rate, "rate", 5, "messages per second from the sender (0: a burst bounded by --window)")
		fs.IntVar(&o.messages, "messages", 50, "messages sent")
		fs.DurationVar(&o.wait, "wait", 60*time.Second, "how long to wait for every delivery after the last send")
	case "storm":
		fs.IntVar(&o.conns, "conns", 1000, "clients (group members) that must come back")
		fs.Float64Var(&o.rate, "rate", 20, "group messages per second from the sender, before and after the restart")
		fs.IntVar(&o.messages, "messages", 20, "messages sent before the restart; as many again right after it")
		fs.StringVar(&o.kill, "kill", "kill", "with --spawn: restart by SIGKILL (kill) or SIGTERM (term)")
		fs.DurationVar(&o.wait, "wait", 120*time.Second, "how long to wait for every client to be back and caught up")
	case "soak":
		fs.IntVar(&o.conns, "conns", 10000, "clients")
		fs.DurationVar(&o.duration, "duration", 2*time.Minute, "time messages flow and clients drop and reconnect")
		fs.Float64Var(&o.rate, "rate", 2000, "messages per second over all clients (each client stays within the server's send_rate)")
		fs.Float64Var(&o.groupFrac, "group-frac", 0.02, "fraction of the messages sent to the sender's group; the rest are direct to a random client")
		fs.IntVar(&o.groups, "groups", 4, "groups")
		fs.IntVar(&o.groupSize, "group-size", 250, "members per group (the first groups × group-size clients, round robin)")
		fs.Float64Var(&o.churn, "churn", 40, "connections dropped per second over all clients")
		fs.Float64Var(&o.cleanFrac, "clean-frac", 0.3, "fraction of the drops made with a close frame; the rest close TCP without one")
		fs.DurationVar(&o.drain, "drain", 90*time.Second, "after the soak: at most this long for every client to be back, every send confirmed and every message held")
		fs.DurationVar(&o.settle, "settle", 10*time.Second, "after every client has left: wait this long before sampling the server's memory")
		fs.DurationVar(&o.sample, "sample", 3*time.Second, "memory samples (every 200 ms, minimum kept) before connecting and after leaving last this long")
		o.window = 8
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.ackMode != "now" && o.ackMode != "welcome" {
		return nil, fmt.Errorf("--ack-mode: must be now or welcome, got %q", o.ackMode)
	}
	o.publishers = max(o.publishers, 1)
	o.serverArgs = strings.Fields(*sargs)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	o.exe = exe
	if o.holdListener && !o.spawn {
		return nil, errors.New("--hold-listener needs --spawn")
	}
	if o.spawn && o.data == "" {
		return nil, errors.New("--spawn needs --data")
	}
	if o.tokens == "" && o.spawn {
		o.tokens = filepath.Join(o.data, "tokens.txt")
	}
	if o.procs <= 0 {
		o.procs = max(1, (o.users()+8999)/9000)
	}
	return o, nil
}

// users is how many users (lines of the tokens file) the scenario needs.
func (o *options) users() int {
	switch o.scenario {
	case "p2p":
		return 2 * o.pairs
	case "fanout":
		return o.members + max(o.publishers, 1)
	case "storm", "soak":
		return o.conns + 1
	}
	return o.conns
}

type user struct {
	uid   uint64
	name  string
	token string
	exp   int64 // token expiry, Unix ms; 0 unknown
}

// readTokens reads "uid username token" lines; a fourth field is the
// token's expiry in Unix ms (the HTTP users' cache writes it). Other
// lines (comments) are skipped.
func readTokens(path string) ([]user, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var us []user
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) != 3 && len(fl) != 4 {
			continue
		}
		uid, err := strconv.ParseUint(fl[0], 10, 64)
		if err != nil {
			continue
		}
		u := user{uid: uid, name: fl[1], token: fl[2]}
		if len(fl) == 4 {
			if u.exp, err = strconv.ParseInt(fl[3], 10, 64); err != nil {
				continue
			}
		}
		us = append(us, u)
	}
	return us, sc.Err()
}

// env is what every scenario works with.
type env struct {
	o      *options
	users  []user
	u      *url.URL
	probe  *probe
	srv    *spawned
	rep    *Report
	ini    workerInit
	status func(string)
}

func run(o *options) (*Report, error) {
	e := &env{o: o, probe: &probe{pid: o.serverPID, httpURL: strings.TrimSuffix(o.httpURL, "/")}}
	e.status = func(s string) { fmt.Fprintf(os.Stderr, "bench: %s\n", s) }
	var err error
	if e.u, err = url.Parse(o.wsURL); err != nil {
		return nil, fmt.Errorf("--url: %v", err)
	}
	if o.spawn {
		if err := e.spawnServer(); err != nil {
			return nil, err
		}
		defer e.srv.stop(syscall.SIGTERM)
	}
	if o.tokens == "" {
		if e.users, err = e.httpUsers(); err != nil {
			return nil, err
		}
	} else if e.users, err = readTokens(o.tokens); err != nil {
		return nil, fmt.Errorf("--tokens: %v", err)
	}
	if len(e.users) < o.users() {
		return nil, fmt.Errorf("--tokens %s has %d users, the scenario needs %d", o.tokens, len(e.users), o.users())
	}
	if e.probe.pid == 0 && e.srv != nil {
		e.probe.pid = e.srv.pid()
	}
	if e.probe.pid == 0 {
		if port, err := strconv.Atoi(e.u.Port()); err == nil {
			e.probe.pid = findListenerPID(port)
		}
	}
	e.rep = newReport(o)
	e.rep.ServerBuild = e.probe.buildInfo()
	e.rep.param("server_pid", e.probe.pid)
	e.rep.param("users", o.tokens)
	e.ini = workerInit{
		URL: o.wsURL, HeartbeatMs: o.heartbeat.Milliseconds(), TimeoutMs: o.timeout.Milliseconds(),
		Body: o.size, Conc: o.conc, NoAck: !o.ack, AckNow: o.ackMode == "now",
	}
	if o.connRate > 0 {
		e.ini.Rate = o.connRate / float64(o.procs)
	}
	switch o.scenario {
	case "connect":
		err = e.connect()
	case "p2p":
		err = e.p2p()
	case "fanout":
		err = e.fanout()
	case "storm":
		err = e.storm()
	case "soak":
		err = e.soak()
	}
	e.rep.finish()
	return e.rep, err
}

// httpUsers creates (or reuses) the scenario's users through the HTTP API
// of the running server.
func (e *env) httpUsers() ([]user, error) {
	o := e.o
	p := &provisioner{
		base: e.probe.httpURL, prefix: o.prefix, password: o.password, conc: o.signupConc,
		cache: o.usersCache, hc: &http.Client{Timeout: 2 * time.Minute},
		progress: progressLine("users ready"),
	}
	if p.cache == "" {
		p.cache = defaultCachePath(p.base, o.prefix)
	}
	e.status(fmt.Sprintf("users %s1 … %s%d of %s (password %q; tokens cached in %s)", o.prefix, o.prefix, o.users(), p.base, o.password, p.cache))
	us, err := p.users(context.Background(), o.users())
	if err != nil {
		return nil, fmt.Errorf("creating users through the HTTP API: %w", err)
	}
	o.tokens = p.cache
	return us, nil
}

// spawnServer imports users when the tokens file is missing (the server
// must be stopped for that), then starts magpie serve.
func (e *env) spawnServer() error {
	o := e.o
	if err := os.MkdirAll(o.data, 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(o.tokens); os.IsNotExist(err) {
		n := o.users()
		e.status(fmt.Sprintf("importing %d users into %s", n, o.data))
		cmd := exec.Command(o.exe, "user", "import", "--data", o.data, "--prefix", o.prefix,
			"--count", strconv.Itoa(n), "--tokens", o.tokens)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("magpie user import: %v", err)
		}
	}
	h, err := url.Parse(o.httpURL)
	if err != nil {
		return fmt.Errorf("--http: %v", err)
	}
	e.srv = &spawned{exe: o.exe, data: o.data, listen: e.u.Host, http: h.Host, args: o.serverArgs}
	if o.holdListener {
		f, _, err := holdsock.Listen(e.u.Host)
		if err != nil {
			return fmt.Errorf("--hold-listener: %v", err)
		}
		e.srv.held = f
	}
	t0 := time.Now()
	if err := e.srv.start(); err != nil {
		return err
	}
	e.status(fmt.Sprintf("server pid %d healthy in %v", e.srv.pid(), time.Since(t0).Round(time.Millisecond)))
	return nil
}

// specs builds clients for users[from:from+n].
func (e *env) specs(from, n int, peer func(i int) uint64) []clientSpec {
	out := make([]clientSpec, n)
	for i := range out {
		u := e.users[from+i]
		s := clientSpec{Idx: from + i, UID: u.uid, Token: u.token}
		if e.o.src > 0 {
			s.Src = "127.0.0." + strconv.Itoa(2+(from+i)%e.o.src)
		}
		if peer != nil {
			s.Peer = peer(i)
		}
		out[i] = s
	}
	return out
}

func (e *env) startFleet(specs []clientSpec) (*fleet, error) {
	parts := make([][]clientSpec, e.o.procs)
	for i, s := range specs {
		parts[i%e.o.procs] = append(parts[i%e.o.procs], s)
	}
	e.status(fmt.Sprintf("starting %d worker processes for %d clients", e.o.procs, len(specs)))
	return startFleet(e.o.exe, e.ini, parts)
}

// connectFleet runs the connect phase and records the connect figures.
func (e *env) connectFleet(f *fleet, n int) error {
	t0 := time.Now()
	if _, err := f.do(workerCmd{Op: "connect"}, 10*time.Minute); err != nil {
		return err
	}
	el := time.Since(t0)
	c := f.totals()
	e.rep.result("connected", c.Online)
	e.rep.result("connect_failures", c.ConnFail)
	e.rep.result("connect_seconds", el.Seconds())
	e.rep.result("connects_per_second", float64(c.Welcomes)/el.Seconds())
	if c.Online < int64(n) {
		return fmt.Errorf("only %d of %d clients connected (%d failed attempts)", c.Online, n, c.ConnFail)
	}
	return nil
}

// startProfile fetches a CPU profile of the server in the background.
func (e *env) startProfile() func() {
	if e.o.profile == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", e.probe.httpURL, e.o.profileSec)
		resp, err := http.Get(u)
		if err != nil {
			e.status("profile: " + err.Error())
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			e.status(fmt.Sprintf("profile: HTTP %d (is the server running with --pprof?)", resp.StatusCode))
			return
		}
		f, err := os.Create(e.o.profile)
		if err != nil {
			e.status("profile: " + err.Error())
			return
		}
		_, _ = io.Copy(f, resp.Body)
		f.Close()
		e.status("profile written to " + e.o.profile)
	}()
	return wg.Wait
}

// inproc is a pool of one client in the coordinator (the sender).
func (e *env) inproc(idx int) (*pool, *client, error) {
	p := newPool(e.u, e.o.heartbeat, e.o.timeout, e.o.size)
	p.noAck, p.ackNow = !e.o.ack, e.o.ackMode == "now"
	spec := e.specs(idx, 1, nil)[0]
	spec.Src = "" // the sender uses the kernel's choice
	c := p.newClient(spec)
	c.errs = make(chan string, 1024)
	p.clients = []*client{c}
	if err := c.connect(); err != nil {
		return nil, nil, fmt.Errorf("sender connect: %v", err)
	}
	go p.heartbeats()
	if !p.noAck && !p.ackNow {
		go p.ackTicker()
	}
	return p, c, nil
}

// createGroup creates a public group (PROTOCOL §13: members may join it
// by id).
func createGroup(c *client, name string) (uint64, error) {
	r, err := c.request([]byte(`{"type":"group_create","rid":"gc","name":"`+name+`","members":[],"public":true}`), 30*time.Second)
	if err != nil {
		return 0, fmt.Errorf("group_create: %v", err)
	}
	g, ok := jsonUint(r, "group")
	if !ok {
		return 0, fmt.Errorf("group_create: bad reply %s", r)
	}
	return g, nil
}

// addMembers adds uids to group g through c, a member, with group_add,
// 1,000 per request (PROTOCOL §13's bound), and returns the group's
// member count after the last. Adding is how the fan-out scenarios fill a
// large group: one system message per request, where joining one by one
// would push a "joined" to every member for every join (quadratic).
func addMembers(c *client, g uint64, uids []uint64) (uint64, error) {
	var count uint64
	for len(uids) > 0 {
		n := min(len(uids), 1000)
		b := make([]byte, 0, 64+12*n)
		b = append(b, `{"type":"group_add","rid":"ga","group":`...)
		b = strconv.AppendUint(b, g, 10)
		b = append(b, `,"members":[`...)
		for i, u := range uids[:n] {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, u, 10)
		}
		b = append(b, "]}"...)
		r, err := c.request(b, 30*time.Second)
		if err != nil {
			return 0, fmt.Errorf("group_add: %v", err)
		}
		var ok bool
		if count, ok = jsonUint(r, "count"); !ok || !bytes.Contains(r, []byte(`"type":"group"`)) {
			return 0, fmt.Errorf("group_add: %s", r)
		}
		uids = uids[n:]
	}
	return count, nil
}

// lastSeq returns group g's last seq, read through c (a member), given
// that sent messages of the scenario went to it. A server of protocol
// version 1 stores nothing but those: there it is sent.
func lastSeq(c *client, g uint64, sent int64) (uint64, error) {
	if c.version.Load() < 2 {
		return uint64(sent), nil
	}
	r, err := c.request([]byte(`{"type":"history","rid":"ls","conv":"g:`+strconv.FormatUint(g, 10)+`","limit":1}`), 30*time.Second)
	if err != nil {
		return 0, fmt.Errorf("history: %v", err)
	}
	var h struct {
		Type     string `json:"type"`
		Messages []struct {
			Seq uint64 `json:"seq"`
		} `json:"messages"`
	}
	if json.Unmarshal(r, &h) != nil || h.Type != "history" || len(h.Messages) != 1 {
		return 0, fmt.Errorf("history: %s", r)
	}
	return h.Messages[0].Seq, nil
}

// settle waits until the fleet's pushes stop growing for 300 ms (at most
// 30 s): the pushes of a set-up phase have all arrived.
func (f *fleet) settle() {
	last := f.totals().Pushes
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		n := f.totals().Pushes
		if n == last {
			return
		}
		last = n
	}
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
