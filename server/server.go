// Package server is Magpie's server: the gnet event handler and
// per-connection state, sessions and auth, the loop-local routers and
// fan-out, ACK windows and retransmission, heartbeat and idle handling,
// rate limits, the HTTP side (API, web UI, /metrics, /healthz), flags and
// graceful shutdown.
//
// # Threads
//
// gnet runs --loops event loops. A connection's state is owned by its loop
// (see conn). Blocking work runs elsewhere: sends go to the storage
// committer, other requests to a bounded worker pool; results come back to
// the owning loop through EventLoop().Execute. Each loop keeps its own
// uid → connections map, so fan-out posts one task per loop per committed
// batch and each loop resolves its own recipients without locks.
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

	loopsMu sync.Mutex
	loops   atomic.Pointer[[]*loop]

	devMu   sync.Mutex
	devices map[devKey]*conn
	userMu  sync.Mutex
	users   map[uint64]int // online connections per uid

	work     chan func()
	jobs     atomic.Int64 // offloaded requests queued or running (see offload)
	draining atomic.Bool
	ready    atomic.Bool
}

type devKey struct {
	uid    uint64
	device string
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
}

// Run opens the store, starts both listeners, prints their addresses, and
// serves until ctx is done; then it shuts down gracefully (PROTOCOL §12).
// It returns nil after a clean shutdown within --shutdown-grace.
func Run(ctx context.Context, cfg Config, opt Options) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:      cfg,
		log:      log,
		throttle: newThrottle(),
		hashSem:  make(chan struct{}, max(2, cfg.Loops)),
		ui:       opt.UI,
		bootedCh: make(chan struct{}),
		devices:  make(map[devKey]*conn),
		users:    make(map[uint64]int),
		work:     make(chan func(), cfg.WorkQueue),
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
		return float64(store.Stats().QueueLen + store.Stats().CtlLen)
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
	if cfg.Demo {
		if err := store.EnsureDemo(func(pw string) []byte { return HashPassword(pw) }); err != nil {
			store.Close()
			return fmt.Errorf("create demo data: %w", err)
		}
	}
	s.registerLoopCounters()
	s.wheel = wheel.New(wheel.Options{})
	s.wheel.Start()
	s.m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "magpie_timers_armed", Help: "Armed connection timers (auth/idle and ACK retransmit)."},
			func() float64 { return float64(s.wheel.Live()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "magpie_wheel_clock_stalls_total", Help: "Times the wheel's coarse clock fell behind real time (its goroutine was descheduled)."},
			func() float64 { return float64(s.wheel.ClockStalls()) }),
	)
	defer s.wheel.Stop()
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

	gerr := make(chan error, 1)
	go func() {
		gerr <- gnet.Run(&handler{srv: s}, "tcp://"+cfg.Listen,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(cfg.Loops),
			gnet.WithReuseAddr(true),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithLogger(gnetLogger{log}),
		)
	}()
	select {
	case <-s.bootedCh:
	case err := <-gerr:
		hs.Close()
		store.Close()
		return fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	out := opt.Stderr
	if out == nil {
		out = os.Stderr
	}
	host, _, _ := net.SplitHostPort(cfg.Listen)
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

func dbDir(data string) string { return data + "/db" }

// shutdown: stop accepting, answer the sends already read, close every
// WebSocket with 1001, flush the store, exit within --shutdown-grace.
func (s *Server) shutdown(hs *http.Server, gerr chan error) error {
	deadline := time.Now().Add(s.cfg.ShutdownGrace)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
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
	// Commit what was already queued; OnSent posts the sent replies to the
	// loops before the close tasks below (loop task queues are FIFO).
	storeErr := make(chan error, 1)
	go func() { storeErr <- s.store.Close() }()
	var err error
	select {
	case err = <-storeErr:
	case <-ctx.Done():
		return errors.New("shutdown grace exceeded while flushing the store")
	}
	var wg sync.WaitGroup
	for _, lp := range s.allLoops() {
		lp := lp
		wg.Add(1)
		if e := lp.el.Execute(ctx, gnet.RunnableFunc(func(context.Context) error {
			defer wg.Done()
			for _, c := range append([]*conn(nil), lp.conns...) {
				switch c.state {
				case stOpen:
					c.closeWith(wsproto.CloseGoingAway, "server shutting down")
				case stHandshake:
					c.dropTCP()
				}
			}
			return nil
		})); e != nil {
			wg.Done()
		}
	}
	wg.Wait()
	// Give close frames a moment to leave, then stop gnet.
	// CountConnections reads gnet's list of loops, which gnet fills after
	// OnBoot, on its own goroutine: only the close tasks above, run by
	// those loops, order this read after that write. Without a loop no
	// connection was ever opened, and the read would be a data race.
	for len(s.allLoops()) > 0 && s.eng.CountConnections() > 0 && time.Until(deadline) > 500*time.Millisecond {
		time.Sleep(10 * time.Millisecond) // polling gnet's count: it has no event for it
	}
	if e := s.eng.Stop(ctx); e != nil && err == nil && ctx.Err() == nil {
		s.log.Warn("gnet stop", "err", e)
	}
	select {
	case <-gerr:
	case <-ctx.Done():
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

func (s *Server) booted(eng gnet.Engine) {
	s.eng = eng
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
	close(s.bootedCh)
}

// loopOf returns the state of a gnet loop, creating it on first use.
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
	lp := &loop{srv: s, el: el, users: make(map[uint64][]*conn)}
	next := append(append([]*loop(nil), cur...), lp)
	s.loops.Store(&next)
	return lp
}

func (s *Server) allLoops() []*loop {
	if lps := s.loops.Load(); lps != nil {
		return *lps
	}
	return nil
}

func (s *Server) worker() {
	for fn := range s.work {
		fn()
		s.jobs.Add(-1)
	}
}

// authorizeURL checks a token given in the upgrade URL.
func (s *Server) authorizeURL(r *wsproto.Request) bool {
	uid, err := s.signer.Verify(r.Token)
	if err != nil {
		return false
	}
	r.UID = uid
	return true
}

func (s *Server) countHandshake(status int) {
	s.m.handshakes.WithLabelValues(strconv.Itoa(status)).Inc()
}

// online registers an authenticated connection: device replacement (4004)
// and the online gauges. Called on c's loop.
func (s *Server) online(c *conn) {
	s.m.onlineConns.Inc()
	s.userMu.Lock()
	s.users[c.uid]++
	if s.users[c.uid] == 1 {
		s.m.onlineUsers.Inc()
	}
	s.userMu.Unlock()
	if c.device == "" {
		return
	}
	k := devKey{c.uid, c.device}
	s.devMu.Lock()
	old := s.devices[k]
	s.devices[k] = c
	s.devMu.Unlock()
	if old != nil && old != c {
		_ = old.gc.EventLoop().Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			old.closeWith(closeReplaced, "replaced by a newer connection")
			old.lp.flush()
			return nil
		}))
	}
}

// offline undoes online. Called on c's loop from OnClose.
func (s *Server) offline(c *conn) {
	s.m.onlineConns.Dec()
	s.userMu.Lock()
	if s.users[c.uid]--; s.users[c.uid] <= 0 {
		delete(s.users, c.uid)
		s.m.onlineUsers.Dec()
	}
	s.userMu.Unlock()
	if c.device != "" {
		k := devKey{c.uid, c.device}
		s.devMu.Lock()
		if s.devices[k] == c {
			delete(s.devices, k)
		}
		s.devMu.Unlock()
	}
}

func (s *Server) appendWelcome(dst []byte, uid uint64) []byte {
	dst = append(dst, `{"type":"welcome","version":1`...)
	dst = appendKeyUint(dst, `,"uid":`, uid)
	dst = appendKeyUint(dst, `,"heartbeat_ms":`, uint64(s.cfg.Heartbeat.Milliseconds()))
	dst = appendKeyUint(dst, `,"idle_timeout_ms":`, uint64(s.cfg.IdleTimeout.Milliseconds()))
	dst = appendKeyUint(dst, `,"ack_timeout_ms":`, uint64(s.cfg.AckTimeout.Milliseconds()))
	dst = appendKeyUint(dst, `,"send_rate":`, uint64(s.cfg.SendRate))
	dst = appendKeyUint(dst, `,"max_body":`, uint64(s.cfg.MaxBody))
	dst = appendKeyUint(dst, `,"server_time":`, uint64(time.Now().UnixMilli()))
	return append(dst, '}')
}

func (s *Server) onCommit(batch int, commit, sync time.Duration) {
	s.m.batchSize.Observe(float64(batch))
	s.m.commitLat.Observe(commit.Seconds())
	if sync > 0 {
		s.m.syncLat.Observe(sync.Seconds())
	}
}

// gnetLogger routes gnet's logs to slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
