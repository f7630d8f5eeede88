package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/magpie-im/magpie/server"
	"github.com/magpie-im/magpie/storage"
)

// `magpie bench populate`: the data-scale scenario (issue 12). It builds a
// data dir of U users, C direct conversations and M messages through the
// storage bulk path (storage.Populate), unless DIR already holds one, and
// then measures a server on it: start-up time to `ws listening`, RSS and
// Go heap before any connection, convs and history latency for users whose
// conversations are cold, and p2p throughput and sent latency on
// conversations that are cold (never touched since the start) and warm
// (the same ones again).

const populateUsage = `usage: magpie bench populate --data DIR [flags]

Builds DIR (unless it holds a populated store) with --users, --convs and
--messages, then (unless --measure=false) starts --exe serve on it and
measures. --format v1 writes the format of the release before the cache
(for /work/before/magpie). Flags:
`

type popOptions struct {
	data                    string
	users, convs, messages  int
	body                    int
	format                  string
	measure                 bool
	exe                     string
	wsURL, httpURL          string
	serverArgs              []string
	coldUsers, readConc     int
	pairs, window           int
	rate                    float64
	duration                time.Duration
	procs, src              int
	jsonOut                 string
	smallCache              int64
	startTimeout, readyWait time.Duration
}

// popMeta is DIR/populate.json: what the data dir holds.
type popMeta struct {
	Users, Convs, Messages, Body int
	Format                       string
	Seconds                      float64
	Bytes                        int64
}

func populateMain(args []string) int {
	o := &popOptions{}
	fs := flag.NewFlagSet("magpie bench populate", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), populateUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.data, "data", "", "data dir (created and populated when it holds no store)")
	fs.IntVar(&o.users, "users", 100000, "users")
	fs.IntVar(&o.convs, "convs", 100000, "direct conversations")
	fs.IntVar(&o.messages, "messages", 1000000, "messages, spread evenly over the conversations")
	fs.IntVar(&o.body, "body", 60, "message body bytes")
	fs.StringVar(&o.format, "format", "v2", "data format to write: v2 (this release) or v1 (the release before the cache)")
	fs.BoolVar(&o.measure, "measure", true, "start a server on the data dir and measure")
	fs.StringVar(&o.exe, "exe", "", "magpie binary to run `serve` with (default: this one; /work/before/magpie for before figures)")
	fs.StringVar(&o.wsURL, "url", "ws://127.0.0.1:7070/ws", "WebSocket URL the server listens on")
	fs.StringVar(&o.httpURL, "http", "http://127.0.0.1:8080", "HTTP base URL of the server")
	sargs := fs.String("server-args", "", "extra flags of magpie serve, space-separated, after --send-rate 0 (e.g. \"--cache-size 16777216\")")
	fs.IntVar(&o.coldUsers, "cold-users", 500, "users whose convs and history are read cold (each once)")
	fs.IntVar(&o.readConc, "read-conc", 4, "of them, reading at once")
	fs.IntVar(&o.pairs, "pairs", 500, "p2p pairs of users (each pair has a conversation in the data set)")
	fs.IntVar(&o.window, "window", 16, "p2p outstanding sends per sender")
	fs.Float64Var(&o.rate, "rate", 0, "p2p messages per second over all senders (0: flat out, bounded by the window of 64)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "p2p sending time per run")
	fs.IntVar(&o.procs, "procs", 1, "p2p worker processes")
	fs.IntVar(&o.src, "src", 4, "p2p source addresses 127.0.0.2 … (0: the kernel's choice)")
	fs.Int64Var(&o.smallCache, "small-cache", 0, "also restart the server with --cache-size N and run p2p on new pairs (0: skip; this release only)")
	fs.StringVar(&o.jsonOut, "json", "", "write the report as JSON to this file")
	fs.DurationVar(&o.startTimeout, "start-timeout", 10*time.Minute, "longest start-up to wait for (the release before the cache loads everything)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	// p2p runs flat out: no per-connection send rate (later flags win).
	o.serverArgs = append([]string{"--send-rate", "0"}, strings.Fields(*sargs)...)
	if o.data == "" || fs.NArg() > 0 {
		fmt.Fprint(os.Stderr, "magpie bench populate: --data is required\n")
		return 2
	}
	if o.format != "v1" && o.format != "v2" {
		fmt.Fprint(os.Stderr, "magpie bench populate: --format is v1 or v2\n")
		return 2
	}
	if o.exe == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(os.Stderr, "magpie bench populate: %v\n", err)
			return 1
		}
		o.exe = exe
	}
	rep := &Report{Scenario: "populate", Target: filepath.Base(o.exe), Start: time.Now(),
		Machine: Machine{NProc: runtime.NumCPU(), CPU: cpuModel(), LoadBefore: loadavg(), Go: runtime.Version()},
		Params:  map[string]any{}, Results: map[string]any{}, Latency: map[string]LatencyStat{}}
	err := o.run(rep)
	rep.finish()
	rep.print(os.Stdout)
	if o.jsonOut != "" {
		if werr := rep.writeJSON(o.jsonOut); werr != nil {
			fmt.Fprintf(os.Stderr, "magpie bench populate: --json: %v\n", werr)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "magpie bench populate: %v\n", err)
		return 1
	}
	return 0
}

func status(s string) { fmt.Fprintf(os.Stderr, "bench: %s\n", s) }

func (o *popOptions) run(rep *Report) error {
	meta, err := o.populate()
	if err != nil {
		return err
	}
	o.users, o.convs, o.messages = meta.Users, meta.Convs, meta.Messages
	rep.param("users", meta.Users)
	rep.param("convs", meta.Convs)
	rep.param("messages", meta.Messages)
	rep.param("format", meta.Format)
	rep.param("exe", o.exe)
	rep.param("server_args", strings.Join(o.serverArgs, " "))
	rep.param("pairs", o.pairs)
	rep.param("window", o.window)
	rep.param("duration", o.duration.String())
	rep.result("populate_seconds", meta.Seconds)
	rep.result("data_dir_bytes", dirBytes(filepath.Join(o.data, "db")))
	if !o.measure {
		return nil
	}
	key, err := server.LoadSecret(o.data, "")
	if err != nil {
		return err
	}
	signer := server.NewSigner(key, 24*time.Hour)
	u, err := url.Parse(o.wsURL)
	if err != nil {
		return fmt.Errorf("--url: %v", err)
	}
	h, err := url.Parse(o.httpURL)
	if err != nil {
		return fmt.Errorf("--http: %v", err)
	}

	// 1. Start-up and memory before any connection.
	srv, startup, err := o.startServer(u.Host, h.Host, o.serverArgs)
	if err != nil {
		return err
	}
	defer srv.stop(syscall.SIGTERM)
	pr := &probe{pid: srv.pid(), httpURL: strings.TrimSuffix(o.httpURL, "/")}
	rep.result("startup_to_ws_listening_seconds", startup.Seconds())
	s0 := pr.minSnap(3 * time.Second)
	rep.result("rss_before_connections_bytes", s0.rss)
	rep.result("heap_inuse_before_connections_bytes", s0.heap)

	// 2. convs and history of users whose conversations are cold.
	cv, hs, n, err := o.coldReads(u, signer)
	if err != nil {
		return err
	}
	rep.result("cold_readers", n)
	rep.latency("convs_cold", cv)
	rep.latency("history_cold", hs)

	// 3. p2p on cold conversations, then on the same ones warm.
	tokens, err := o.pairTokens(signer, o.p2pFrom(2), "cold")
	if err != nil {
		return err
	}
	for _, phase := range []string{"cold", "warm"} {
		if err := o.p2p(rep, phase, tokens, srv.pid()); err != nil {
			return err
		}
	}
	s1 := pr.snap()
	rep.result("rss_after_bytes", s1.rss)
	rep.result("heap_inuse_after_bytes", s1.heap)
	srv.stop(syscall.SIGTERM)

	// 4. Optionally: a cache too small for anything.
	if o.smallCache > 0 {
		args := append(append([]string(nil), o.serverArgs...), "--cache-size", strconv.FormatInt(o.smallCache, 10))
		srv2, _, err := o.startServer(u.Host, h.Host, args)
		if err != nil {
			return err
		}
		defer srv2.stop(syscall.SIGTERM)
		tokens, err := o.pairTokens(signer, o.p2pFrom(4), "small")
		if err != nil {
			return err
		}
		if err := o.p2p(rep, "small_cache", tokens, srv2.pid()); err != nil {
			return err
		}
	}
	return nil
}

// populate builds the data dir unless it holds a store.
func (o *popOptions) populate() (popMeta, error) {
	var meta popMeta
	mp := filepath.Join(o.data, "populate.json")
	if b, err := os.ReadFile(mp); err == nil {
		if err := json.Unmarshal(b, &meta); err != nil {
			return meta, fmt.Errorf("%s: %v", mp, err)
		}
		status(fmt.Sprintf("%s holds %d users, %d conversations, %d messages (format %s): not populating", o.data, meta.Users, meta.Convs, meta.Messages, meta.Format))
		return meta, nil
	}
	if _, err := os.Stat(filepath.Join(o.data, "db")); err == nil {
		return meta, fmt.Errorf("%s/db exists but %s does not: not a populated data dir", o.data, mp)
	}
	if err := os.MkdirAll(o.data, 0o755); err != nil {
		return meta, err
	}
	if _, err := server.LoadSecret(o.data, ""); err != nil { // the server's secret, for tokens
		return meta, err
	}
	status(fmt.Sprintf("populating %s: %d users, %d conversations, %d messages (format %s)", o.data, o.users, o.convs, o.messages, o.format))
	t0 := time.Now()
	err := storage.Populate(filepath.Join(o.data, "db"), storage.PopulateSpec{
		Users: o.users, Convs: o.convs, Messages: o.messages, BodySize: o.body,
		Hash: server.HashPassword("password"), FormatV1: o.format == "v1",
		Progress: func(s string) { status(fmt.Sprintf("%s (%v)", s, time.Since(t0).Round(time.Second))) },
	})
	if err != nil {
		return meta, err
	}
	meta = popMeta{Users: o.users, Convs: o.convs, Messages: o.messages, Body: o.body, Format: o.format,
		Seconds: time.Since(t0).Seconds(), Bytes: dirBytes(filepath.Join(o.data, "db"))}
	b, _ := json.MarshalIndent(meta, "", "  ")
	return meta, os.WriteFile(mp, append(b, '\n'), 0o644)
}

// startServer runs exe serve and returns the time from exec to its
// `ws listening` line (it also waits for /healthz).
func (o *popOptions) startServer(listen, httpAddr string, args []string) (*spawned, time.Duration, error) {
	s := &spawned{exe: o.exe, data: o.data, listen: listen, http: httpAddr, args: args}
	lf, err := os.OpenFile(filepath.Join(o.data, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, err
	}
	s.log = lf
	argv := append([]string{"serve", "--data", o.data, "--listen", listen, "--http", httpAddr}, args...)
	cmd := exec.Command(o.exe, argv...)
	cmd.Stdout = lf
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	listening := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(lf, line)
			if strings.HasPrefix(line, "ws listening") {
				select {
				case listening <- time.Now():
				default:
				}
			}
		}
	}()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { _ = cmd.Wait(); pw.Close(); close(s.done) }()
	status(fmt.Sprintf("started %s serve (pid %d) on %s", o.exe, cmd.Process.Pid, o.data))
	var tl time.Time
	select {
	case tl = <-listening:
	case <-s.done:
		return nil, 0, fmt.Errorf("magpie serve exited at start; see %s", lf.Name())
	case <-time.After(o.startTimeout):
		s.stop(syscall.SIGKILL)
		return nil, 0, fmt.Errorf("no `ws listening` within %v", o.startTimeout)
	}
	startup := tl.Sub(t0)
	status(fmt.Sprintf("ws listening after %v", startup.Round(time.Millisecond)))
	for deadline := time.Now().Add(time.Minute); ; {
		if (&env{probe: &probe{httpURL: "http://" + httpAddr}}).healthy() {
			break
		}
		if time.Now().After(deadline) {
			s.stop(syscall.SIGKILL)
			return nil, 0, errors.New("not healthy a minute after `ws listening`")
		}
		time.Sleep(20 * time.Millisecond) // polling another process
	}
	return s, startup, nil
}

// coldReads connects users that no one touched since the start, each
// once, and times their convs and then the newest page of history of
// their newest conversation.
func (o *popOptions) coldReads(u *url.URL, signer *server.Signer) (cv, hs *hdrhistogram.Histogram, n int, err error) {
	rng := rand.New(rand.NewPCG(42, uint64(o.users)))
	conv, hist := newShardedHist(), newShardedHist()
	seen := map[uint64]bool{}
	var uids []uint64
	for len(uids) < o.coldUsers && len(seen) < o.users {
		uid := 1 + rng.Uint64N(uint64(o.users))
		// Keep away from the p2p users.
		if seen[uid] || o.p2pUser(uid) {
			continue
		}
		seen[uid] = true
		if storage.PopulateHasConv(o.users, o.convs, uid, 1) || uid > 1 && storage.PopulateHasConv(o.users, o.convs, uid-1, 1) {
			uids = append(uids, uid)
		}
	}
	status(fmt.Sprintf("reading convs and history of %d cold users, %d at a time", len(uids), o.readConc))
	work := make(chan uint64)
	errs := make(chan error, o.readConc)
	var wg sync.WaitGroup
	for w := range o.readConc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for uid := range work {
				if e := coldRead(u, signer, uid, w, conv, hist); e != nil {
					select {
					case errs <- fmt.Errorf("uid %d: %v", uid, e):
					default:
					}
				}
			}
		}()
	}
	for _, uid := range uids {
		work <- uid
	}
	close(work)
	wg.Wait()
	select {
	case err = <-errs:
		return cv, hs, 0, err
	default:
	}
	return conv.merged(), hist.merged(), len(uids), nil
}

func coldRead(u *url.URL, signer *server.Signer, uid uint64, shard int, conv, hist *shardedHist) error {
	tok, _ := signer.Mint(uid)
	q := *u
	q.RawQuery = url.Values{"token": {tok}}.Encode()
	wc, err := dialWS(&q, nil, 15*time.Second)
	if err != nil {
		return err
	}
	defer wc.close()
	_ = wc.nc.SetDeadline(time.Now().Add(60 * time.Second))
	await := func(typ string) ([]byte, error) {
		for {
			m, err := wc.readMessage()
			if err != nil {
				return nil, err
			}
			switch t := string(frameType(m)); t {
			case typ:
				return m, nil
			case "error":
				return nil, fmt.Errorf("%s", m)
			}
		}
	}
	if _, err := await("welcome"); err != nil {
		return err
	}
	t0 := time.Now()
	if err := wc.writeText([]byte(`{"type":"convs","rid":"c"}`)); err != nil {
		return err
	}
	m, err := await("convs")
	if err != nil {
		return err
	}
	conv.record(shard, time.Since(t0).Microseconds())
	var r struct {
		Items []struct {
			Conv string `json:"conv"`
		} `json:"items"`
	}
	if err := json.Unmarshal(m, &r); err != nil || len(r.Items) == 0 {
		return fmt.Errorf("convs: %d items, %v", len(r.Items), err)
	}
	t0 = time.Now()
	if err := wc.writeText([]byte(`{"type":"history","rid":"h","conv":"` + r.Items[0].Conv + `","limit":50}`)); err != nil {
		return err
	}
	if _, err := await("history"); err != nil {
		return err
	}
	hist.record(shard, time.Since(t0).Microseconds())
	return nil
}

// p2pFrom is where the p2p pairs start: 1/div of the way to the last user
// a that has a conversation with a+1.
func (o *popOptions) p2pFrom(div int) int {
	lo, hi := 1, o.users-1 // (lo, lo+1) exists; find the last a that has it
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if storage.PopulateHasConv(o.users, o.convs, uint64(mid), 1) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return max(1, lo/div)
}

// p2pUser reports whether uid may be one of the p2p pairs' users.
func (o *popOptions) p2pUser(uid uint64) bool {
	for _, div := range []int{2, 4} {
		from := uint64(o.p2pFrom(div))
		if uid >= from && uid < from+uint64(4*o.pairs)+2 {
			return true
		}
	}
	return false
}

// pairTokens writes a tokens file of 2 × pairs users (a, a+1) from uid
// from on, each pair with a conversation in the data set, so that the
// p2p scenario's pairs (2i, 2i+1) talk in existing conversations.
func (o *popOptions) pairTokens(signer *server.Signer, from int, name string) (string, error) {
	path := filepath.Join(o.data, "tokens-"+name+".txt")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	n := 0
	for a := uint64(max(from, 1)); n < o.pairs && a < uint64(o.users); a += 2 {
		if !storage.PopulateHasConv(o.users, o.convs, a, 1) {
			continue
		}
		for _, uid := range []uint64{a, a + 1} {
			tok, _ := signer.Mint(uid)
			fmt.Fprintf(w, "%d %s %s\n", uid, storage.PopulateName("p", o.users, uid), tok)
		}
		n++
	}
	if n < o.pairs {
		return "", fmt.Errorf("only %d pairs with a conversation from uid %d", n, from)
	}
	return path, w.Flush()
}

// p2p runs the harness's p2p scenario against the running server.
func (o *popOptions) p2p(rep *Report, phase, tokens string, pid int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	po := &options{scenario: "p2p", exe: exe, wsURL: o.wsURL, httpURL: o.httpURL, serverPID: pid, tokens: tokens,
		procs: o.procs, src: o.src, conc: 64, timeout: 15 * time.Second, target: "magpie", size: 64, window: o.window, ack: true,
		pairs: o.pairs, rate: o.rate, duration: o.duration}
	status(fmt.Sprintf("p2p %s: %d pairs, rate %v, %v", phase, o.pairs, o.rate, o.duration))
	r, err := run(po)
	if err != nil {
		return fmt.Errorf("p2p %s: %v", phase, err)
	}
	for _, k := range []string{"messages_per_second", "server_cpu_us_per_message", "messages_sent_ok", "errors", "rate_limited"} {
		if v, ok := r.Results[k]; ok {
			rep.result("p2p_"+phase+"_"+k, v)
		}
	}
	if l, ok := r.Latency["sent"]; ok {
		rep.Latency["p2p_"+phase+"_sent"] = l
		rep.latKeys = append(rep.latKeys, "p2p_"+phase+"_sent")
	}
	return nil
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
