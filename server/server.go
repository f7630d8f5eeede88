// Package server is Magpie's server: the gnet event handler and
// per-connection state, sessions and routing, fan-out, ACK windows and
// retransmission, heartbeat and idle handling, rate limits, the HTTP side
// (API, web UI, /metrics, /healthz), flags and graceful shutdown.
//
// # Files
//
//	handler.go  gnet callbacks: accept, read, close
//	conn.go     one connection: request dispatch, send, close, idle/auth timers
//	loop.go     one event loop: its ordered inbox, drain turns, the write queue
//	window.go   ACK window, acks and retransmission
//	router.go   sessions (uid → connections index) and the fan-out router
//	workers.go  the pool for blocking requests and their replies
//	auth.go     tokens, password hashes, login throttle
//	codec.go, encode.go  request decoding, frame encoding
//	http.go, metrics.go, config.go, server.go  HTTP side, metrics, flags, Run and shutdown
//
// # Threads
//
// gnet runs --loops event loops; a connection's state is owned by its loop
// (REQUIRES: owning event loop). The storage committer stores sends and
// hands each batch to the router goroutine (OnSent, which encodes each
// message once); the router resolves recipients through the sessions
// index and puts one entry into the inbox of each loop that has any. A
// bounded worker pool runs the requests that block. Everything that
// reaches a loop from another goroutine goes through its inbox, which the
// loop runs in order (see loop). docs/DESIGN.md describes the whole path.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/magpie-im/magpie/internal/buildinfo"
	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wheel"
	"github.com/magpie-im/magpie/wsproto"
)

// Server is one Magpie node.
type Server struct {
	cfg      Config
	log      *slog.Logger
	store    *storage.Store
	signer   *Signer
	wheel    *wheel.Wheel
	upgrader wsproto.Upgrader
	m        *metrics
	throttle *throttle
	hashSem  chan struct{}
	ui       http.Handler

	eng      gnet.Engine
	bootedCh chan struct{}
	wsPort   int
	// With --listen-fd: the inherited socket's address (checkListenFD),
	// and why OnBoot could not adopt it (read after bootedCh).
	inherited *net.TCPAddr
	bootErr   error
	acceptFD  int // the descriptor gnet accepts the inherited socket from

	loopsMu sync.Mutex
	loops   atomic.Pointer[[]*loop]

	sess      sessions
	rt        *router
	wakeConns atomic.Int64 // wake sockets registered with gnet (not clients)
	wakeOnce  sync.Once

	work     chan func()
	jobs     atomic.Int64 // offloaded requests queued or running (see offload)
	draining atomic.Bool
	ready    atomic.Bool

	// PROTOCOL §14–§16.
	pres  presence       // presence.go
	typ   typingThrottle // typing.go
	rcpt  receiptStats   // receipts.go
	runID int64          // this run's id in the store's last_seen records: its start, Unix ms
}

// Options are what the binary wires in beside Config.
type Options struct {
	Logger *slog.Logger
	UI     http.Handler // served at "/"; nil: a plain notice
	// Started, when set, is called once both listeners accept, with their
	// bound addresses (tests use it with port 0).
	Started func(wsAddr, httpAddr string)
	// Stderr receives the start-up lines; nil: os.Stderr.
	Stderr io.Writer
	// onServer, when set, is called with the server before it starts
	// (in-package tests use it to reach loops and sessions).
	onServer func(*Server)
}

// Run opens the store, starts both listeners, prints their addresses, and
// serves until ctx is done; then it shuts down gracefully (PROTOCOL §12).
// It returns nil after a clean shutdown within --shutdown-grace.
// Any goroutine; it blocks until shutdown.
func Run(ctx context.Context, cfg Config, opt Options) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	bi := buildinfo.Get()
	logStart(log, bi)
	logLimits(log, os.ReadFile)
	s := &Server{
		cfg:      cfg,
		log:      log,
		throttle: newThrottle(),
		hashSem:  make(chan struct{}, max(2, cfg.Loops)),
		ui:       opt.UI,
		bootedCh: make(chan struct{}),
		work:     make(chan func(), cfg.WorkQueue),
		rt: &router{in: make(chan *batch, routerQueue), stop: make(chan struct{}), idle: make(chan struct{}, 1), limit: cfg.Inbox,
			maxBusy: cfg.FanoutLoops, maxDefer: maxDefer},
	}
	s.sess.init()
	if opt.onServer != nil {
		opt.onServer(s)
	}
	key, err := LoadSecret(cfg.Data, cfg.Secret)
	if err != nil {
		return err
	}
	s.signer = NewSigner(key, cfg.TokenTTL)
	var store *storage.Store
	s.m = newMetrics(func() float64 {
		if store == nil {
			return 0
		}
		st := store.Stats()
		return float64(st.QueueLen + st.CtlLen)
	})
	store, err = storage.Open(dbDir(cfg.Data), storage.Options{
		Fsync:     cfg.Fsync,
		QueueSize: cfg.QueueSize,
		MaxBody:   cfg.MaxBody,
		CacheSize: cfg.CacheSize,
		OnSent:    s.onSent,
		OnCommit:  s.onCommit,
		Logger:    log,
	})
	if err != nil {
		return fmt.Errorf("open store in %s: %w", cfg.Data, err)
	}
	s.store = store
	s.registerStoreMetrics(store)
	// The router runs before EnsureDemo: the lobby's system messages go
	// through OnSent (to nobody yet).
	go s.route()
	defer close(s.rt.stop)
	if cfg.Demo {
		if err := store.EnsureDemo(func(pw string) []byte { return HashPassword(pw) }); err != nil {
			store.Close()
			return fmt.Errorf("create demo data: %w", err)
		}
	}
	s.registerLoopCounters()
	s.m.reg.MustRegister(buildInfoGauge(bi))
	s.wheel = wheel.New(wheel.Options{})
	s.wheel.Start()
	s.m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "magpie_timers_armed", Help: "Armed connection timers (auth/idle and ACK retransmit)."},
			func() float64 { return float64(s.wheel.Live()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "magpie_wheel_clock_stalls_total", Help: "Times the wheel's coarse clock fell behind real time (its goroutine was descheduled)."},
			func() float64 { return float64(s.wheel.ClockStalls()) }),
	)
	defer s.wheel.Stop()
	s.runID = time.Now().UnixMilli()
	s.startPresence()
	defer s.stopPresence()
	s.registerPresenceMetrics()
	s.upgrader = wsproto.Upgrader{Path: "/ws", Authorize: s.authorizeURL}
	if len(cfg.Origins) > 0 {
		allowed := make(map[string]bool, len(cfg.Origins))
		for _, o := range cfg.Origins {
			allowed[o] = true
		}
		s.upgrader.AllowOrigin = func(o string) bool { return allowed[o] }
	}
	for i := 0; i < cfg.Workers; i++ {
		go s.worker()
	}
	defer close(s.work)

	// HTTP first (its listener is bound synchronously), then gnet.
	hl, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		store.Close()
		return fmt.Errorf("--http %s: %w", cfg.HTTP, err)
	}
	hs := &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10}
	go func() {
		if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()

	listen, listenFlag := cfg.Listen, "--listen "+cfg.Listen
	if cfg.ListenFD > 0 {
		addr, err := checkListenFD(cfg.ListenFD)
		if err != nil {
			hs.Close()
			store.Close()
			return fmt.Errorf("--listen-fd %d: %w", cfg.ListenFD, err)
		}
		listen, listenFlag = placeholderAddr, "--listen-fd "+strconv.Itoa(cfg.ListenFD)
		s.inherited = addr
	}
	gerr := make(chan error, 1)
	go func() {
		gerr <- gnet.Run(&handler{srv: s}, "tcp://"+listen,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(cfg.Loops),
			gnet.WithReuseAddr(true), // never WithReusePort: --listen-fd swaps gnet's one listener (listenfd.go)
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithLogger(gnetLogger{log}),
		)
	}()
	select {
	case <-s.bootedCh:
		if s.bootErr != nil {
			<-gerr // OnBoot asked gnet to shut down
		}
	case err := <-gerr:
		if err == nil {
			// gnet returns nil at once when OnBoot asks it to shut
			// down: the reason is bootErr.
			<-s.bootedCh
			err = s.bootErr
		}
		if err == nil {
			err = errors.New("gnet stopped during start-up")
		}
		s.bootErr = err
	}
	if s.bootErr != nil {
		hs.Close()
		store.Close()
		return fmt.Errorf("%s: %w", listenFlag, s.bootErr)
	}
	out := opt.Stderr
	if out == nil {
		out = os.Stderr
	}
	host, _, _ := net.SplitHostPort(cfg.Listen)
	if s.inherited != nil {
		host = s.inherited.IP.String()
	}
	if host == "" {
		host = "0.0.0.0"
	}
	fmt.Fprintf(out, "ws listening on %s\n", net.JoinHostPort(host, strconv.Itoa(s.wsPort)))
	fmt.Fprintf(out, "http listening on %s\n", hl.Addr().String())
	if _, port, err := net.SplitHostPort(hl.Addr().String()); err == nil {
		demo := ""
		if cfg.Demo {
			demo = " (demo users: alice, bob, carol; password: password)"
		}
		fmt.Fprintf(out, "web UI at http://localhost:%s/%s\n", port, demo)
	}
	if cfg.Demo {
		ws := map[string]string{"--listen": cfg.Listen, "--http": hl.Addr().String()}
		if s.inherited != nil {
			ws = map[string]string{"--listen-fd": s.inherited.String(), "--http": hl.Addr().String()}
		}
		warnDemoExposure(log, ws)
	}
	s.ready.Store(true)
	if opt.Started != nil {
		opt.Started(net.JoinHostPort(host, strconv.Itoa(s.wsPort)), hl.Addr().String())
	}

	select {
	case <-ctx.Done():
	case err := <-gerr:
		hs.Close()
		store.Close()
		return fmt.Errorf("gnet stopped: %w", err)
	}
	return s.shutdown(hs, gerr)
}

// dbDir is the Pebble directory under --data. Any goroutine.
func dbDir(data string) string { return data + "/db" }

// shutdown: stop accepting, answer the sends already read, close every
// WebSocket with 1001, flush the store, exit within --shutdown-grace.
// Run's goroutine.
func (s *Server) shutdown(hs *http.Server, gerr chan error) error {
	deadline := time.Now().Add(s.cfg.ShutdownGrace)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if s.inherited != nil {
		// Under socket activation new connections wait in the
		// supervisor's socket for the next server (released before
		// draining is set: fewer are accepted only to be closed).
		if err := releaseListener(s.acceptFD, s.inherited); err != nil {
			s.log.Warn("could not stop accepting from the inherited socket; new connections are closed until exit", "err", err)
		}
	}
	s.ready.Store(false)
	s.draining.Store(true)
	s.log.Info("shutting down")
	// Workers read Pebble directly (history), and Pebble panics when used
	// after Close: let the requests already offloaded finish (their
	// replies reach the loops before the 1001 below); offload refuses new
	// ones once draining is set.
	for s.jobs.Load() > 0 {
		if ctx.Err() != nil {
			return errors.New("shutdown grace exceeded while finishing requests")
		}
		time.Sleep(time.Millisecond) // polling a counter: shutdown only
	}
	// last_seen: everything pending, and every user online now as seen at
	// the shutdown (PROTOCOL §16), before the store closes.
	s.stopPresence()
	if err := s.checkpoint(true); err != nil {
		s.log.Error("final presence checkpoint", "err", err)
	}
	// Commit what was already queued: the store's last OnSent hands its
	// batch to the router. The barrier returns once the router has put
	// every batch into the loops' inboxes; the 1001 entries go in after
	// them, and each inbox runs in order, so every sent precedes the 1001.
	storeErr := make(chan error, 1)
	go func() { storeErr <- s.store.Close() }()
	var err error
	select {
	case err = <-storeErr:
	case <-ctx.Done():
		return errors.New("shutdown grace exceeded while flushing the store")
	}
	if !s.routerBarrier(ctx) {
		return errors.New("shutdown grace exceeded while delivering the last batches")
	}
	var wg sync.WaitGroup
	for _, lp := range s.allLoops() {
		wg.Add(1)
		if !lp.put(entry{kind: entShutdown, done: wg.Done}, false) {
			wg.Done()
		}
	}
	closed := make(chan struct{})
	go func() { wg.Wait(); close(closed) }()
	select {
	case <-closed:
	case <-ctx.Done():
		return errors.New("shutdown grace exceeded while closing connections")
	}
	// Give close frames a moment to leave, then stop gnet.
	// CountConnections reads gnet's list of loops, which gnet fills after
	// OnBoot, on its own goroutine: only the shutdown entries above, run
	// by those loops, order this read after that write. Without a loop no
	// connection was ever opened, and the read would be a data race. The
	// loops' wake sockets are gnet connections too: they do not count.
	for len(s.allLoops()) > 0 && int64(s.eng.CountConnections()) > s.wakeConns.Load() && time.Until(deadline) > 500*time.Millisecond {
		time.Sleep(10 * time.Millisecond) // polling gnet's count: it has no event for it
	}
	if e := s.eng.Stop(ctx); e != nil && err == nil && ctx.Err() == nil {
		s.log.Warn("gnet stop", "err", e)
	}
	select {
	case <-gerr:
	case <-ctx.Done():
	}
	for _, lp := range s.allLoops() {
		lp.closeWake()
	}
	hctx, hcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_ = hs.Shutdown(hctx)
	hcancel()
	if err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	if time.Now().After(deadline) {
		return errors.New("shutdown grace exceeded")
	}
	return nil
}

// booted records the engine and the bound port. gnet's OnBoot.
func (s *Server) booted(eng gnet.Engine) gnet.Action {
	s.eng = eng
	defer close(s.bootedCh)
	if s.inherited != nil {
		dup, err := eng.Dup()
		if err == nil {
			s.acceptFD, err = adoptListener(dup, s.cfg.ListenFD)
			unix.Close(dup)
		}
		if err != nil {
			s.bootErr = err
			return gnet.Shutdown
		}
		s.wsPort = s.inherited.Port
		return gnet.None
	}
	if fd, err := eng.Dup(); err == nil {
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				s.wsPort = a.Port
			case *unix.SockaddrInet6:
				s.wsPort = a.Port
			}
		}
		unix.Close(fd)
	}
	return gnet.None
}

// loopOf returns the state of a gnet loop, creating it on first use.
// REQUIRES: el's goroutine (OnOpen).
func (s *Server) loopOf(el gnet.EventLoop) *loop {
	if lps := s.loops.Load(); lps != nil {
		for _, lp := range *lps {
			if lp.el == el {
				return lp
			}
		}
	}
	s.loopsMu.Lock()
	defer s.loopsMu.Unlock()
	var cur []*loop
	if lps := s.loops.Load(); lps != nil {
		cur = *lps
	}
	for _, lp := range cur {
		if lp.el == el {
			return lp
		}
	}
	lp := newLoop(s, el, len(cur))
	next := append(append([]*loop(nil), cur...), lp)
	s.loops.Store(&next)
	return lp
}

// allLoops returns every loop created so far, in index order. Safe from
// any goroutine; the slice is never modified.
func (s *Server) allLoops() []*loop {
	if lps := s.loops.Load(); lps != nil {
		return *lps
	}
	return nil
}

// authorizeURL checks a token given in the upgrade URL. Owning event loop
// (it is the upgrader's callback).
func (s *Server) authorizeURL(r *wsproto.Request) bool {
	uid, err := s.signer.Verify(r.Token)
	if err != nil {
		return false
	}
	r.UID = uid
	return true
}

// countHandshake counts a handshake by status. Any goroutine.
func (s *Server) countHandshake(status int) {
	s.m.handshakes.WithLabelValues(strconv.Itoa(status)).Inc()
}

// wakeFailed records a wake-up that gnet refused (the engine is stopping):
// logged once, counted in magpie_loop_wake_errors_total. Any goroutine.
func (s *Server) wakeFailed(err error) {
	s.wakeOnce.Do(func() { s.log.Warn("event loop wake-up failed; its inbox is dropped", "err", err) })
}

// ackDelay is the ack coalescing delay announced in welcome: --ack-delay,
// at most a tenth of --ack-timeout.
// Any goroutine.
func (s *Server) ackDelay() time.Duration {
	return min(s.cfg.AckDelay, s.cfg.AckTimeout/10)
}

// appendWelcome appends the welcome frame (PROTOCOL §3; ack_delay_ms and
// max_inflight are Magpie extensions, docs/PROTOCOL.md). Any goroutine.
func (s *Server) appendWelcome(dst []byte, uid uint64) []byte {
	dst = append(dst, `{"type":"welcome","version":2`...)
	dst = appendKeyUint(dst, `,"uid":`, uid)
	dst = appendKeyUint(dst, `,"heartbeat_ms":`, uint64(s.cfg.Heartbeat.Milliseconds()))
	dst = appendKeyUint(dst, `,"idle_timeout_ms":`, uint64(s.cfg.IdleTimeout.Milliseconds()))
	dst = appendKeyUint(dst, `,"ack_timeout_ms":`, uint64(s.cfg.AckTimeout.Milliseconds()))
	dst = appendKeyUint(dst, `,"send_rate":`, uint64(s.cfg.SendRate))
	dst = appendKeyUint(dst, `,"max_body":`, uint64(s.cfg.MaxBody))
	dst = appendKeyUint(dst, `,"ack_delay_ms":`, uint64(s.ackDelay().Milliseconds()))
	dst = appendKeyUint(dst, `,"max_inflight":`, uint64(s.cfg.MaxInflight))
	dst = appendKeyUint(dst, `,"server_time":`, uint64(time.Now().UnixMilli()))
	return append(dst, '}')
}

// onCommit is the store's OnCommit (committer goroutine).
func (s *Server) onCommit(batch int, commit, sync time.Duration) {
	s.m.batchSize.Observe(float64(batch))
	s.m.commitLat.Observe(commit.Seconds())
	if sync > 0 {
		s.m.syncLat.Observe(sync.Seconds())
	}
}

// gnetLogger routes gnet's logs to slog. Its methods are safe from any
// goroutine (slog is).
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
