package bench

import (
	"sync"
	"sync/atomic"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, 1 µs … 5 min, 3 significant
// digits.
const (
	histMin    = 1
	histMax    = 300_000_000
	histDigits = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histDigits) }

// shardedHist spreads RecordValue over a few locked histograms so that
// thousands of reader goroutines do not queue on one mutex.
type shardedHist struct {
	shards [8]struct {
		mu sync.Mutex
		h  *hdrhistogram.Histogram
		_  [48]byte
	}
}

func newShardedHist() *shardedHist {
	s := &shardedHist{}
	for i := range s.shards {
		s.shards[i].h = newHist()
	}
	return s
}

func (s *shardedHist) record(shard int, us int64) {
	if us < histMin {
		us = histMin
	}
	if us > histMax {
		us = histMax
	}
	sh := &s.shards[shard&7]
	sh.mu.Lock()
	_ = sh.h.RecordValue(us)
	sh.mu.Unlock()
}

func (s *shardedHist) merged() *hdrhistogram.Histogram {
	out := newHist()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		out.Merge(sh.h)
		sh.mu.Unlock()
	}
	return out
}

func (s *shardedHist) reset() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.h.Reset()
		sh.mu.Unlock()
	}
}

// counters are a worker's running totals, sent to the coordinator in every
// progress line and summed there.
type counters struct {
	Online      int64 `json:"online"`       // connections past welcome now
	Welcomes    int64 `json:"welcomes"`     // welcomes received (reconnects included)
	ConnFail    int64 `json:"conn_fail"`    // dials or handshakes that failed
	Disconnects int64 `json:"disconnects"`  // connections lost after welcome
	Joined      int64 `json:"joined"`       // group_join answered
	Sends       int64 `json:"sends"`        // send frames written
	SentOK      int64 `json:"sent_ok"`      // sent frames received
	Errors      int64 `json:"errors"`       // error frames received
	RateLimited int64 `json:"rate_limited"` // of which rate_limited
	Pushes      int64 `json:"pushes"`       // msg frames received (duplicates included)
	Dups        int64 `json:"dups"`         // msg frames for a (conv, seq) already held
	AckFrames   int64 `json:"ack_frames"`   // ack frames written
	Pings       int64 `json:"pings"`        // ping frames written
	Pongs       int64 `json:"pongs"`        // pong frames received
	CaughtUp    int64 `json:"caught_up"`    // storm: clients holding 1..final
	History     int64 `json:"history"`      // history requests written
	LastRecvNs  int64 `json:"last_recv_ns"` // unix ns of the latest msg received
	GroupSent   int64 `json:"group_sent"`   // soak: sent frames for group messages
	Resent      int64 `json:"resent"`       // soak: sends written again with their cmid
	Kills       int64 `json:"kills"`        // soak: connections dropped without a close frame
	CleanCloses int64 `json:"clean_closes"` // soak: connections closed with a close frame
	OutOfOrder  int64 `json:"out_of_order"` // first transmissions of the tracked group after a higher seq
	// CloseCodes counts close codes received ("4008") and failed
	// connection attempts by kind ("fail:refused", "fail:timeout", …).
	CloseCodes map[string]int64 `json:"close_codes,omitempty"`
}

func (c *counters) add(o counters) {
	c.Online += o.Online
	c.Welcomes += o.Welcomes
	c.ConnFail += o.ConnFail
	c.Disconnects += o.Disconnects
	c.Joined += o.Joined
	c.Sends += o.Sends
	c.SentOK += o.SentOK
	c.Errors += o.Errors
	c.RateLimited += o.RateLimited
	c.Pushes += o.Pushes
	c.Dups += o.Dups
	c.AckFrames += o.AckFrames
	c.Pings += o.Pings
	c.Pongs += o.Pongs
	c.CaughtUp += o.CaughtUp
	c.History += o.History
	c.LastRecvNs = max(c.LastRecvNs, o.LastRecvNs)
	c.GroupSent += o.GroupSent
	c.Resent += o.Resent
	c.Kills += o.Kills
	c.CleanCloses += o.CleanCloses
	c.OutOfOrder += o.OutOfOrder
	for k, v := range o.CloseCodes {
		if c.CloseCodes == nil {
			c.CloseCodes = map[string]int64{}
		}
		c.CloseCodes[k] += v
	}
}

// liveCounters is the atomic form kept by a worker.
type liveCounters struct {
	online, welcomes, connFail, disconnects, joined        atomic.Int64
	sends, sentOK, errors, rateLimited, pushes, dups       atomic.Int64
	ackFrames, pings, pongs, caughtUp, history, lastRecvNs atomic.Int64
	groupSent, resent, kills, cleanCloses                  atomic.Int64
	outOfOrder                                             atomic.Int64

	mu         sync.Mutex
	closeCodes map[string]int64
}

func (l *liveCounters) closeCode(code string) {
	l.mu.Lock()
	if l.closeCodes == nil {
		l.closeCodes = map[string]int64{}
	}
	l.closeCodes[code]++
	l.mu.Unlock()
}

func (l *liveCounters) snapshot() counters {
	c := counters{
		Online: l.online.Load(), Welcomes: l.welcomes.Load(), ConnFail: l.connFail.Load(),
		Disconnects: l.disconnects.Load(), Joined: l.joined.Load(), Sends: l.sends.Load(),
		SentOK: l.sentOK.Load(), Errors: l.errors.Load(), RateLimited: l.rateLimited.Load(),
		Pushes: l.pushes.Load(), Dups: l.dups.Load(), AckFrames: l.ackFrames.Load(),
		Pings: l.pings.Load(), Pongs: l.pongs.Load(), CaughtUp: l.caughtUp.Load(),
		History: l.history.Load(), LastRecvNs: l.lastRecvNs.Load(),
		GroupSent: l.groupSent.Load(), Resent: l.resent.Load(), Kills: l.kills.Load(), CleanCloses: l.cleanCloses.Load(),
		OutOfOrder: l.outOfOrder.Load(),
	}
	l.mu.Lock()
	if len(l.closeCodes) > 0 {
		c.CloseCodes = make(map[string]int64, len(l.closeCodes))
		for k, v := range l.closeCodes {
			c.CloseCodes[k] = v
		}
	}
	l.mu.Unlock()
	return c
}

func storeMax(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}
