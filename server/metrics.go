package server

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are Magpie's Prometheus series. Counters are atomic adds: safe
// and cheap from any goroutine, event loops included.
type metrics struct {
	reg *prometheus.Registry

	connsOpen     prometheus.Gauge
	connsAccepted prometheus.Counter
	onlineConns   prometheus.Gauge
	onlineUsers   prometheus.Gauge
	closes        *prometheus.CounterVec
	closeByCode   map[uint16]prometheus.Counter

	msgsStored  prometheus.Counter
	errors      *prometheus.CounterVec
	batchSize   prometheus.Histogram
	commitLat   prometheus.Histogram
	syncLat     prometheus.Histogram
	queueDepth  prometheus.GaugeFunc
	handshakes  *prometheus.CounterVec
	httpLogins  *prometheus.CounterVec
	workDropped prometheus.Counter
	routerWaits prometheus.Counter
}

var closeCodes = []uint16{1000, 1001, 1002, 1003, 1007, 1009, 4001, 4002, 4003, 4004, 4005, 4008, 4029}

// newMetrics registers Magpie's series. Run, once.
func newMetrics(queueDepth func() float64) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.connsOpen = prometheus.NewGauge(prometheus.GaugeOpts{Name: "magpie_connections_open", Help: "TCP connections open on the WebSocket listener."})
	m.connsAccepted = prometheus.NewCounter(prometheus.CounterOpts{Name: "magpie_connections_accepted_total", Help: "TCP connections accepted."})
	m.onlineConns = prometheus.NewGauge(prometheus.GaugeOpts{Name: "magpie_online_connections", Help: "Authenticated WebSocket connections."})
	m.onlineUsers = prometheus.NewGauge(prometheus.GaugeOpts{Name: "magpie_online_users", Help: "Users with at least one authenticated connection."})
	m.closes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "magpie_closes_total", Help: "WebSocket closes sent by the server, by close code."}, []string{"code"})
	m.closeByCode = make(map[uint16]prometheus.Counter, len(closeCodes))
	for _, c := range closeCodes {
		m.closeByCode[c] = m.closes.WithLabelValues(strconv.Itoa(int(c)))
	}
	m.msgsStored = prometheus.NewCounter(prometheus.CounterOpts{Name: "magpie_messages_stored_total", Help: "Messages committed to the store."})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "magpie_error_frames_total", Help: "error frames sent, by code."}, []string{"code"})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "magpie_commit_batch_size", Help: "Operations per commit batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 14)})
	m.commitLat = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "magpie_commit_seconds", Help: "Commit latency of a batch, fsync included.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)})
	m.syncLat = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "magpie_fsync_seconds", Help: "fsync latency of a batch.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)})
	m.queueDepth = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "magpie_committer_queue_depth", Help: "Operations waiting for the committer."}, queueDepth)
	m.handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "magpie_handshakes_total", Help: "WebSocket handshakes by HTTP status."}, []string{"status"})
	m.httpLogins = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "magpie_logins_total", Help: "Login attempts by result."}, []string{"result"})
	m.workDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "magpie_work_rejected_total", Help: "Requests answered rate_limited because the worker queue was full."})
	m.routerWaits = prometheus.NewCounter(prometheus.CounterOpts{Name: "magpie_router_waits_total", Help: "Times the committer waited for room in the router's queue (OnSent)."})
	m.reg.MustRegister(m.connsOpen, m.connsAccepted, m.onlineConns, m.onlineUsers,
		m.closes, m.msgsStored, m.errors, m.batchSize,
		m.commitLat, m.syncLat, m.queueDepth, m.handshakes, m.httpLogins, m.workDropped, m.routerWaits,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// closed counts a close code. Any goroutine.
func (m *metrics) closed(code uint16) {
	if c, ok := m.closeByCode[code]; ok {
		c.Inc()
		return
	}
	m.closes.WithLabelValues(strconv.Itoa(int(code))).Inc()
}

// loopStats are the hot-path counters of one event loop. Each loop adds to
// its own (uncontended atomics, no cache line shared between loops); a
// scrape sums them.
type loopStats struct {
	framesIn, framesOut, bytesIn, bytesOut atomic.Uint64
	pushes, acks, resends                  atomic.Uint64
	_                                      [64]byte // keep loops' counters off each other's cache lines
}

// loopCollector exports each loop's inbox as series labelled by loop index.
type loopCollector struct {
	s                                           *Server
	depth, waits, wakes, wakeErrs, drop, fanout *prometheus.Desc
}

// newLoopCollector returns the per-loop collector. Run, once.
func newLoopCollector(s *Server) *loopCollector {
	l := []string{"loop"}
	return &loopCollector{s: s,
		depth:    prometheus.NewDesc("magpie_loop_inbox_items", "Items (pushes, replies, expiries) queued in a loop's inbox.", l, nil),
		waits:    prometheus.NewDesc("magpie_loop_inbox_waits_total", "Times a producer (router, worker) waited for room in a loop's inbox.", l, nil),
		wakes:    prometheus.NewDesc("magpie_loop_wakeups_total", "Wake-ups sent to a loop (one per non-empty inbox, one per further drain slice).", l, nil),
		wakeErrs: prometheus.NewDesc("magpie_loop_wake_errors_total", "Wake-ups gnet refused (engine stopping); the inbox was dropped.", l, nil),
		drop:     prometheus.NewDesc("magpie_loop_inbox_dropped_total", "Items dropped because the loop had stopped.", l, nil),
		fanout:   prometheus.NewDesc("magpie_loop_fanout_entries_total", "Fan-out entries (one per committed batch with recipients on the loop) a loop received.", l, nil),
	}
}

// Describe is prometheus.Collector's. Any goroutine.
func (lc *loopCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{lc.depth, lc.waits, lc.wakes, lc.wakeErrs, lc.drop, lc.fanout} {
		ch <- d
	}
}

// Collect is prometheus.Collector's: it reads the inboxes' atomics. Any goroutine.
func (lc *loopCollector) Collect(ch chan<- prometheus.Metric) {
	for _, lp := range lc.s.allLoops() {
		l := strconv.Itoa(lp.idx)
		ib := &lp.ib
		ch <- prometheus.MustNewConstMetric(lc.depth, prometheus.GaugeValue, float64(ib.depth.Load()), l)
		ch <- prometheus.MustNewConstMetric(lc.waits, prometheus.CounterValue, float64(ib.waits.Load()), l)
		ch <- prometheus.MustNewConstMetric(lc.wakes, prometheus.CounterValue, float64(ib.wakes.Load()), l)
		ch <- prometheus.MustNewConstMetric(lc.wakeErrs, prometheus.CounterValue, float64(ib.wakeErrs.Load()), l)
		ch <- prometheus.MustNewConstMetric(lc.drop, prometheus.CounterValue, float64(ib.dropped.Load()), l)
		ch <- prometheus.MustNewConstMetric(lc.fanout, prometheus.CounterValue, float64(ib.fanouts.Load()), l)
	}
}

// registerLoopCounters publishes the per-loop counters as sums, the
// inboxes per loop, and the router's queue depth.
// Run, once.
func (s *Server) registerLoopCounters() {
	counter := func(name, help string, field func(*loopStats) *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			var sum uint64
			for _, lp := range s.allLoops() {
				sum += field(&lp.st).Load()
			}
			return float64(sum)
		})
	}
	s.m.reg.MustRegister(
		counter("magpie_frames_in_total", "WebSocket frames received.", func(st *loopStats) *atomic.Uint64 { return &st.framesIn }),
		counter("magpie_frames_out_total", "WebSocket frames sent (each push to each connection counts).", func(st *loopStats) *atomic.Uint64 { return &st.framesOut }),
		counter("magpie_bytes_in_total", "Bytes received on WebSocket connections.", func(st *loopStats) *atomic.Uint64 { return &st.bytesIn }),
		counter("magpie_bytes_out_total", "Bytes written to WebSocket connections.", func(st *loopStats) *atomic.Uint64 { return &st.bytesOut }),
		counter("magpie_pushes_total", "First transmissions of msg frames to connections.", func(st *loopStats) *atomic.Uint64 { return &st.pushes }),
		counter("magpie_acks_total", "Pushes acknowledged.", func(st *loopStats) *atomic.Uint64 { return &st.acks }),
		counter("magpie_resends_total", "msg frames sent again after the ACK timeout.", func(st *loopStats) *atomic.Uint64 { return &st.resends }),
		newLoopCollector(s),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "magpie_router_queue_depth", Help: "Committed batches waiting for the fan-out router."},
			func() float64 { return float64(len(s.rt.in)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "magpie_router_open_items", Help: "Items (pushes, replies) in the router's open fan-out entries, not yet in a loop's inbox; at most about --inbox per loop."},
			func() float64 { return float64(s.rt.openItems.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "magpie_router_deferred_total", Help: "Fan-out entries the router held back because --fanout-loops loops were already working on fan-out (only when --loops exceeds --fanout-loops); they go on merging batches, for at most 50 ms."},
			func() float64 { return float64(s.rt.deferred.Load()) }),
	)
}
