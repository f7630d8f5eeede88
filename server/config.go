package server

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/magpie-im/magpie/storage"
)

// Config holds every tunable of `magpie serve`. Each field names its flag
// and default; Validate reports every bad value at once, naming the flags.
type Config struct {
	Listen        string        // --listen; default ":7070"
	ListenFD      int           // --listen-fd; default 0 (none): serve WebSocket on this inherited listening socket instead (listenfd.go)
	HTTP          string        // --http; default ":8080"
	WSURL         string        // --ws-url; default "" (derived from the login request)
	Data          string        // --data; default "./data"
	Loops         int           // --loops; default GOMAXPROCS
	FanoutLoops   int           // --fanout-loops; default GOMAXPROCS: most loops handed fan-out at once (router.go)
	Heartbeat     time.Duration // --heartbeat; default 30s
	IdleTimeout   time.Duration // --idle-timeout; default (and 0 here) 3 × Heartbeat
	AuthTimeout   time.Duration // --auth-timeout; default 10s
	AckTimeout    time.Duration // --ack-timeout; default 5s
	AckRetries    int           // --ack-retries; default 3 (0: no resend)
	AckDelay      time.Duration // --ack-delay; default 500ms: ack coalescing delay announced in welcome (capped at AckTimeout/10)
	MaxInflight   int           // --max-inflight; default 1024
	MaxOutbound   int           // --max-outbound; default 4 MiB
	MaxMessage    int           // --max-message; default 65536
	MaxBody       int           // --max-body; default 16384
	SendRate      int           // --send-rate; default 100 (0: unlimited)
	Fsync         bool          // --fsync; default true
	Secret        string        // --secret; default generated once in the data dir
	TokenTTL      time.Duration // --token-ttl; default 24h
	Origins       []string      // --origins; default any
	Demo          bool          // --demo; default false
	ShutdownGrace time.Duration // --shutdown-grace; default 5s
	QueueSize     int           // --queue; committer queue bound, default 65536
	Workers       int           // --workers; pool for blocking requests, default 4 × GOMAXPROCS
	WorkQueue     int           // --work-queue; bound of that pool's queue, default 16384
	Inbox         int           // --inbox; items a loop's inbox holds before the router and workers wait, default 262144
	CacheSize     int64         // --cache-size; the store's metadata cache in bytes, default storage.DefaultCacheSize (64 MiB)
	// PROTOCOL §14–§16.
	ReceiptMembers     int           // --receipt-members; default 100: largest group with receipts and typing (0: none)
	PresenceGrace      time.Duration // --presence-grace; default 5s: how long a user stays online after their last connection closed
	PresenceCheckpoint time.Duration // --presence-checkpoint; default 10s: how often changed last_seen values are written to the store
	LogLevel           string        // --log-level; default "info"
	Pprof              bool          // --pprof; default false: serve net/http/pprof under /debug/pprof/ on --http
}

// DefaultConfig returns the defaults of PROTOCOL §12.
// Any goroutine.
func DefaultConfig() Config {
	return Config{
		Listen:        ":7070",
		HTTP:          ":8080",
		Data:          "./data",
		Loops:         runtime.GOMAXPROCS(0),
		FanoutLoops:   runtime.GOMAXPROCS(0),
		Heartbeat:     30 * time.Second,
		AuthTimeout:   10 * time.Second,
		AckTimeout:    5 * time.Second,
		AckRetries:    3,
		AckDelay:      500 * time.Millisecond,
		MaxInflight:   1024,
		MaxOutbound:   4 << 20,
		MaxMessage:    65536,
		MaxBody:       16384,
		SendRate:      100,
		Fsync:         true,
		TokenTTL:      24 * time.Hour,
		ShutdownGrace: 5 * time.Second,
		QueueSize:     65536,
		Workers:       4 * runtime.GOMAXPROCS(0),
		WorkQueue:     16384,
		Inbox:         1 << 18,
		CacheSize:     storage.DefaultCacheSize,
		LogLevel:      "info",

		ReceiptMembers:     100,
		PresenceGrace:      5 * time.Second,
		PresenceCheckpoint: 10 * time.Second,
	}
}

// ParseFlags parses the `serve` flags in args into a Config. Errors name the
// flag; -h prints the usage to out and returns flag.ErrHelp.
// Any goroutine (the binary calls it once).
func ParseFlags(args []string, out io.Writer) (Config, error) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("magpie serve", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Listen, "listen", c.Listen, "WebSocket address (gnet)")
	fs.IntVar(&c.ListenFD, "listen-fd", 0, "serve WebSocket on this inherited listening socket (socket activation, e.g. 3 under a systemd .socket unit) instead of --listen; 0: none")
	fs.StringVar(&c.HTTP, "http", c.HTTP, "HTTP address: API, web UI, /metrics, /healthz")
	fs.StringVar(&c.WSURL, "ws-url", "", "public WebSocket URL returned by login (behind a proxy); default ws://HOST:PORT/ws from the request")
	fs.StringVar(&c.Data, "data", c.Data, "data directory (Pebble store and token secret)")
	fs.IntVar(&c.Loops, "loops", c.Loops, "gnet event loops")
	fs.IntVar(&c.FanoutLoops, "fanout-loops", c.FanoutLoops, "most event loops working on fan-out at once; the others wait for a turn (at most 50 ms) and merge batches into one write per connection meanwhile")
	fs.DurationVar(&c.Heartbeat, "heartbeat", c.Heartbeat, "heartbeat_ms announced in welcome")
	idle := fs.Duration("idle-timeout", 0, "server-side idle close, 4003 (default 3 × --heartbeat)")
	fs.DurationVar(&c.AuthTimeout, "auth-timeout", c.AuthTimeout, "accept-to-auth deadline, 4002")
	fs.DurationVar(&c.AckTimeout, "ack-timeout", c.AckTimeout, "T of the ACK resend schedule")
	fs.IntVar(&c.AckRetries, "ack-retries", c.AckRetries, "resends before closing 4005 (0: none)")
	fs.DurationVar(&c.AckDelay, "ack-delay", c.AckDelay, "ack coalescing delay announced in welcome as ack_delay_ms (at most --ack-timeout/10; 0: ack at once)")
	fs.IntVar(&c.MaxInflight, "max-inflight", c.MaxInflight, "unacked pushes per connection (4008)")
	fs.IntVar(&c.MaxOutbound, "max-outbound", c.MaxOutbound, "unwritten bytes per connection (4008)")
	fs.IntVar(&c.MaxMessage, "max-message", c.MaxMessage, "WebSocket message limit in bytes (1009)")
	fs.IntVar(&c.MaxBody, "max-body", c.MaxBody, "send body limit in bytes (too_large)")
	fs.IntVar(&c.SendRate, "send-rate", c.SendRate, "sends per second per connection, burst 2×; 0 = unlimited (4029)")
	fs.BoolVar(&c.Fsync, "fsync", c.Fsync, "fsync each commit batch before sent")
	fs.StringVar(&c.Secret, "secret", "", "token signing key (default: generated once, kept in the data dir)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", c.TokenTTL, "token lifetime")
	origins := fs.String("origins", "", "comma-separated allowed Origin values (default any)")
	fs.BoolVar(&c.Demo, "demo", false, "create demo users alice, bob, carol (password \"password\") and group lobby")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace, "time to drain on SIGTERM before exit 1")
	fs.IntVar(&c.QueueSize, "queue", c.QueueSize, "committer queue bound; a full queue answers rate_limited")
	fs.IntVar(&c.Workers, "workers", c.Workers, "goroutines serving blocking requests (history, convs, groups, read)")
	fs.IntVar(&c.WorkQueue, "work-queue", c.WorkQueue, "queue bound of that pool; a full queue answers rate_limited")
	fs.IntVar(&c.Inbox, "inbox", c.Inbox, "items (pushes, replies) an event loop's inbox holds before fan-out waits (then sends get rate_limited)")
	fs.Int64Var(&c.CacheSize, "cache-size", c.CacheSize, "bytes of conversation heads, memberships, users… the store keeps in memory (docs/STORAGE.md)")
	fs.IntVar(&c.ReceiptMembers, "receipt-members", c.ReceiptMembers, "largest group with read receipts and typing (0: none; direct conversations always have them)")
	fs.DurationVar(&c.PresenceGrace, "presence-grace", c.PresenceGrace, "a user stays online this long after their last connection closed (a reconnect does not flicker)")
	fs.DurationVar(&c.PresenceCheckpoint, "presence-checkpoint", c.PresenceCheckpoint, "how often changed last_seen values are written to the store (lost on a crash since the last one)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ on --http (for profiling; keep off in production)")
	// Errors are returned (the caller prints them once, naming the flag);
	// the usage is printed only for -h.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(out, "Usage: magpie serve [flags]")
			fs.SetOutput(out)
			fs.PrintDefaults()
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c.IdleTimeout = *idle
	explicitIdle := false
	fs.Visit(func(f *flag.Flag) { explicitIdle = explicitIdle || f.Name == "idle-timeout" })
	explicitListen := false
	fs.Visit(func(f *flag.Flag) { explicitListen = explicitListen || f.Name == "listen" })
	if explicitIdle && *idle <= 0 {
		return c, fmt.Errorf("--idle-timeout: must be positive, got %v", *idle)
	}
	if *origins != "" {
		for _, o := range strings.Split(*origins, ",") {
			if o = strings.TrimSpace(o); o != "" {
				c.Origins = append(c.Origins, o)
			}
		}
	}
	err := c.Validate()
	if explicitListen && c.ListenFD != 0 {
		err = errors.Join(err, errors.New("--listen-fd: the WebSocket socket comes from --listen-fd or --listen, not both"))
	}
	return c, err
}

// Validate reports every invalid field, naming its flag, and resolves
// IdleTimeout 0 to 3 × Heartbeat.
// Any goroutine; it writes IdleTimeout, so not concurrently with readers of c.
func (c *Config) Validate() error {
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 3 * c.Heartbeat
	}
	var errs []error
	bad := func(flag, why string) { errs = append(errs, fmt.Errorf("--%s: %s", flag, why)) }
	if c.Listen == "" {
		bad("listen", "must not be empty")
	}
	if c.ListenFD < 0 || c.ListenFD == 1 || c.ListenFD == 2 {
		bad("listen-fd", fmt.Sprintf("must be 0 (none) or a descriptor of 3 or more, got %d", c.ListenFD))
	}
	if c.HTTP == "" {
		bad("http", "must not be empty")
	}
	if c.Data == "" {
		bad("data", "must not be empty")
	}
	if c.WSURL != "" && !strings.HasPrefix(c.WSURL, "ws://") && !strings.HasPrefix(c.WSURL, "wss://") {
		bad("ws-url", "must start with ws:// or wss://")
	}
	pos := func(flag string, d time.Duration) {
		if d <= 0 {
			bad(flag, fmt.Sprintf("must be positive, got %v", d))
		}
	}
	pos("heartbeat", c.Heartbeat)
	if c.IdleTimeout < 0 {
		bad("idle-timeout", fmt.Sprintf("must be positive, got %v", c.IdleTimeout))
	}
	pos("auth-timeout", c.AuthTimeout)
	pos("ack-timeout", c.AckTimeout)
	pos("token-ttl", c.TokenTTL)
	pos("shutdown-grace", c.ShutdownGrace)
	atLeast := func(flag string, v, min int) {
		if v < min {
			bad(flag, fmt.Sprintf("must be at least %d, got %d", min, v))
		}
	}
	atLeast("loops", c.Loops, 1)
	atLeast("fanout-loops", c.FanoutLoops, 1)
	atLeast("ack-retries", c.AckRetries, 0)
	if c.AckRetries > 20 {
		bad("ack-retries", fmt.Sprintf("must be at most 20, got %d", c.AckRetries))
	}
	atLeast("max-inflight", c.MaxInflight, 1)
	atLeast("max-outbound", c.MaxOutbound, 1)
	atLeast("max-message", c.MaxMessage, 1)
	atLeast("max-body", c.MaxBody, 1)
	atLeast("send-rate", c.SendRate, 0)
	atLeast("queue", c.QueueSize, 1)
	atLeast("workers", c.Workers, 1)
	atLeast("work-queue", c.WorkQueue, 1)
	atLeast("inbox", c.Inbox, 1)
	if c.AckDelay < 0 {
		bad("ack-delay", fmt.Sprintf("must not be negative, got %v", c.AckDelay))
	}
	atLeast("receipt-members", c.ReceiptMembers, 0)
	if c.PresenceGrace < 0 {
		bad("presence-grace", fmt.Sprintf("must not be negative, got %v", c.PresenceGrace))
	}
	pos("presence-checkpoint", c.PresenceCheckpoint)
	if c.CacheSize < 1 {
		bad("cache-size", fmt.Sprintf("must be at least 1, got %d", c.CacheSize))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", fmt.Sprintf("must be debug, info, warn or error, got %q", c.LogLevel))
	}
	return errors.Join(errs...)
}
