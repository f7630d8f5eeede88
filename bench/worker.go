package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// The coordinator re-executes the magpie binary as `magpie bench worker`
// (the per-process open-file cap is 20,000, so big runs need several
// processes). It writes one JSON workerInit line, then workerCmd lines, to
// the worker's stdin; the worker writes workerEvent lines to stdout:
// "progress" four times a second, "done" after each command, "result" on
// request. stderr is passed through.

type workerInit struct {
	URL         string       `json:"url"`
	HeartbeatMs int64        `json:"heartbeat_ms"`
	TimeoutMs   int64        `json:"timeout_ms"`
	Body        int          `json:"body"`
	Conc        int          `json:"conc"`
	Rate        float64      `json:"rate"` // connects/s of this worker
	NoAck       bool         `json:"no_ack,omitempty"`
	AckNow      bool         `json:"ack_now,omitempty"`
	Clients     []clientSpec `json:"clients"`
}

type workerCmd struct {
	Op         string  `json:"op"` // connect, join, track, p2p, storm, final, soak, drain, sentmax, soakcheck, reset, result, quit
	Group      uint64  `json:"group,omitempty"`
	Rate       float64 `json:"rate,omitempty"` // p2p: per sender
	Window     int     `json:"window,omitempty"`
	DurationMs int64   `json:"duration_ms,omitempty"`
	Final      uint64  `json:"final,omitempty"`
	TimeoutMs  int64   `json:"timeout_ms,omitempty"`
	Frac       float64 `json:"frac,omitempty"` // connect: only this leading fraction of the clients (0: all)
	// soak
	Peers     []uint64          `json:"peers,omitempty"` // uids direct messages go to
	GroupFrac float64           `json:"group_frac,omitempty"`
	Churn     float64           `json:"churn,omitempty"` // connections dropped per second
	CleanFrac float64           `json:"clean_frac,omitempty"`
	Lasts     map[string]uint64 `json:"lasts,omitempty"` // soakcheck: last seq with a sent per conv
}

type workerEvent struct {
	Ev     string        `json:"ev"` // progress, done, result
	Op     string        `json:"op,omitempty"`
	C      counters      `json:"c"`
	Result *workerResult `json:"result,omitempty"`
	Err    string        `json:"err,omitempty"`
}

type workerResult struct {
	Conn    *hdrhistogram.Snapshot `json:"conn"`
	Sent    *hdrhistogram.Snapshot `json:"sent"`
	E2E     *hdrhistogram.Snapshot `json:"e2e"`
	Catch   *hdrhistogram.Snapshot `json:"catch"`
	Missing int64                  `json:"missing"` // seqs of 1..final not held, over all clients
	Clients int                    `json:"clients"`
	// MaxWelcomeNs is the latest welcome of any client; MaxCaughtNs the
	// latest time a client came to hold 1..final (unix ns).
	MaxWelcomeNs int64 `json:"max_welcome_ns"`
	MaxCaughtNs  int64 `json:"max_caught_ns"`
	// soak
	SentMax    map[string]uint64 `json:"sent_max,omitempty"`   // highest seq with a sent per conv
	Deliveries int64             `json:"deliveries,omitempty"` // member × seq pairs checked
	Convs      int               `json:"convs,omitempty"`
	Pending    int64             `json:"pending,omitempty"`  // sends still without sent
	Examples   []string          `json:"examples,omitempty"` // a few losses, for the report
}

// workerMain is `magpie bench worker`.
func workerMain(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	if !sc.Scan() {
		fmt.Fprintln(os.Stderr, "bench worker: no init line")
		return 2
	}
	var ini workerInit
	if err := json.Unmarshal(sc.Bytes(), &ini); err != nil {
		fmt.Fprintln(os.Stderr, "bench worker: init:", err)
		return 2
	}
	u, err := url.Parse(ini.URL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench worker: url:", err)
		return 2
	}
	p := newPool(u, time.Duration(ini.HeartbeatMs)*time.Millisecond, time.Duration(ini.TimeoutMs)*time.Millisecond, ini.Body)
	p.noAck = ini.NoAck
	p.ackNow = ini.AckNow
	for _, s := range ini.Clients {
		p.clients = append(p.clients, p.newClient(s))
	}
	var omu sync.Mutex
	enc := json.NewEncoder(out)
	emit := func(e workerEvent) {
		omu.Lock()
		_ = enc.Encode(e)
		omu.Unlock()
	}
	go p.tick(250*time.Millisecond, func() { emit(workerEvent{Ev: "progress", C: p.lc.snapshot()}) })
	hbStarted := false
	var lasts map[string]uint64 // soakcheck
	for sc.Scan() {
		var cmd workerCmd
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			emit(workerEvent{Ev: "done", Err: err.Error()})
			continue
		}
		ev := workerEvent{Ev: "done", Op: cmd.Op}
		switch cmd.Op {
		case "connect":
			p.connectAll(ini.Conc, ini.Rate, cmd.Frac)
			if !hbStarted {
				hbStarted = true
				go p.heartbeats()
				if !p.noAck && !p.ackNow {
					go p.ackTicker()
				}
			}
		case "join":
			p.group.Store(cmd.Group)
			p.joinAll(cmd.Group, 64)
		case "track":
			p.group.Store(cmd.Group) // the coordinator adds the members (addMembers)
		case "p2p":
			runP2P(p, cmd)
		case "storm":
			p.group.Store(cmd.Group)
			p.catchupReq.Store(true)
			p.reconnect.Store(true)
		case "final":
			p.final.Store(cmd.Final)
			for _, c := range p.clients {
				c.checkCaught()
			}
			deadline := time.Now().Add(time.Duration(cmd.TimeoutMs) * time.Millisecond)
			for p.lc.caughtUp.Load() < int64(len(p.clients)) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
		case "soakprep":
			prepSoak(p)
		case "soak":
			runSoak(p, cmd)
		case "drain":
			p.soakDrain(time.Now().Add(time.Duration(cmd.TimeoutMs) * time.Millisecond))
		case "sentmax":
			ev.Result = &workerResult{SentMax: p.sentMax()}
		case "soakcheck":
			if cmd.Lasts != nil {
				lasts = cmd.Lasts
			}
			ev.Result = p.soakCheck(lasts)
		case "reset":
			p.conn.reset()
			p.sent.reset()
			p.e2e.reset()
			p.catch.reset()
		case "result":
			ev.Ev = "result"
			ev.Result = p.result(cmd.Final)
		case "quit":
			p.close()
			ev.C = p.lc.snapshot()
			emit(ev)
			return 0
		default:
			ev.Err = "unknown op " + cmd.Op
		}
		ev.C = p.lc.snapshot()
		emit(ev)
	}
	p.close()
	return 0
}

func runP2P(p *pool, cmd workerCmd) {
	end := time.Now().Add(time.Duration(cmd.DurationMs) * time.Millisecond)
	var wg sync.WaitGroup
	for _, c := range p.clients {
		if c.spec.Peer == 0 {
			continue
		}
		wg.Add(1)
		go c.sendLoop(&wg, `"to":`+strconv.FormatUint(c.spec.Peer, 10), end, 0, cmd.Rate, cmd.Window)
	}
	wg.Wait()
	p.waitDrained(time.Now().Add(10 * time.Second))
}

func (p *pool) result(final uint64) *workerResult {
	r := &workerResult{
		Conn: p.conn.merged().Export(), Sent: p.sent.merged().Export(),
		E2E: p.e2e.merged().Export(), Catch: p.catch.merged().Export(),
		Clients: len(p.clients),
	}
	for _, c := range p.clients {
		r.MaxWelcomeNs = max(r.MaxWelcomeNs, c.welcomeAt.Load())
	}
	if final > 0 {
		for _, c := range p.clients {
			r.Missing += c.missing(final)
			if c.contig.Load() >= final {
				r.MaxCaughtNs = max(r.MaxCaughtNs, c.contigAt.Load(), c.welcomeAt.Load())
			}
		}
	}
	return r
}
