package bench

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// soak: N clients, a few groups and random direct pairs; messages flow at
// a modest rate while clients drop their connections (abruptly, or with a
// close frame) and come back following PROTOCOL §9: backoff with full
// jitter, re-send of every send without its sent (same cmid), then convs
// and history for the gaps. After a quiet drain every member of every
// conversation must hold each seq 1..last that got a `sent` (client-side
// dedup by (conv, seq)); duplicates pushes are counted, not failed. The
// server's RSS and Go heap are sampled before any connection, at the peak
// and after every client has left.

// soakClient is a client's soak state, guarded by its mu.
type soakClient struct {
	mu      sync.Mutex
	convs   map[string]*seqSet // held seqs per conversation
	sentMax map[string]uint64  // highest seq of a sent per conversation
	pending map[string]*pendingSend
	tokens  float64 // send budget, refilled at the server's send_rate
	tokAt   time.Time
	prefix  string             // cmid prefix, set before sending starts
	conn    uint32             // connections welcomed so far (the current one's number)
	trace   *[soakTrace]soakEv // made on the first event: only soak clients pay for it
	traceN  int                // events recorded; the last soakTrace are in trace
}

// soakTrace is how many of a client's latest events its trace keeps: a
// loss report shows those of the lost conversation, to tell a push the
// server skipped from one the client dropped or a catch-up that missed.
const soakTrace = 96

// soakEv is one traced event: a push (p), sent (s) or history message (h)
// of conv's seq, a convs item (c, seq = last_seq), or a welcome (w) or
// disconnect (x) of connection number conn.
type soakEv struct {
	at   int64 // unix ms
	kind byte
	conn uint32
	conv string
	seq  uint64
}

// note records an event. REQUIRES: k.mu held.
func (k *soakClient) note(kind byte, conv string, seq uint64) {
	if k.trace == nil {
		k.trace = new([soakTrace]soakEv)
	}
	k.trace[k.traceN%soakTrace] = soakEv{at: time.Now().UnixMilli(), kind: kind, conn: k.conn, conv: conv, seq: seq}
	k.traceN++
}

// traceOf formats the traced events of conv (and every welcome and
// disconnect), oldest first. REQUIRES: k.mu held.
func (k *soakClient) traceOf(conv string) string {
	var b strings.Builder
	if k.trace == nil {
		return ""
	}
	for i := max(0, k.traceN-soakTrace); i < k.traceN; i++ {
		e := &k.trace[i%soakTrace]
		if e.conv != conv && e.kind != 'w' && e.kind != 'x' {
			continue
		}
		fmt.Fprintf(&b, " %d%c%d", e.at%100000, e.kind, e.conn)
		if e.conv != "" {
			fmt.Fprintf(&b, ":%d", e.seq)
		}
	}
	return b.String()
}

// soakEvent records a welcome (w) or disconnect (x) in the trace.
func (c *client) soakEvent(kind byte) {
	k := &c.sk
	k.mu.Lock()
	if kind == 'w' {
		k.conn++
	}
	k.note(kind, "", 0)
	k.mu.Unlock()
}

// pendingSend is a send with no sent yet; it is re-sent (same cmid) after
// every welcome, and each second while marked retry.
type pendingSend struct {
	frame []byte
	retry bool // rate_limited or internal, or its write failed
}

// soakHold marks (conv, seq) held, traced as kind, and reports whether it
// already was.
func (c *client) soakHold(conv []byte, seq uint64, kind byte) bool {
	k := &c.sk
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.set(conv)
	k.note(kind, s.name, seq)
	return s.add(seq)
}

// set returns conv's seq set, made on first use. REQUIRES: k.mu held.
func (k *soakClient) set(conv []byte) *seqSet {
	s := k.convs[string(conv)]
	if s == nil {
		if k.convs == nil {
			k.convs = map[string]*seqSet{}
		}
		s = &seqSet{name: string(conv)}
		k.convs[s.name] = s
	}
	return s
}

// held is the highest seq of conv up to which the client holds everything.
func (c *client) held(conv string) uint64 {
	if !c.p.soak.Load() {
		return c.contig.Load()
	}
	c.sk.mu.Lock()
	defer c.sk.mu.Unlock()
	if s := c.sk.convs[conv]; s != nil {
		return s.contig
	}
	return 0
}

// onSoakSent settles a pending send; false for a second sent of one cmid
// (it was re-sent before the first sent arrived).
func (c *client) onSoakSent(m []byte) bool {
	cmid, _ := jsonStr(m, "cmid")
	conv, _ := jsonStr(m, "conv")
	seq, _ := jsonUint(m, "seq")
	k := &c.sk
	k.mu.Lock()
	_, ok := k.pending[string(cmid)]
	if ok {
		delete(k.pending, string(cmid))
		if k.sentMax == nil {
			k.sentMax = map[string]uint64{}
		}
		k.sentMax[string(conv)] = max(k.sentMax[string(conv)], seq)
	}
	k.mu.Unlock()
	if !ok {
		return false
	}
	if bytes.HasPrefix(conv, []byte("g:")) {
		c.p.lc.groupSent.Add(1)
	}
	c.soakHold(conv, seq, 's') // the sender holds its own message
	return true
}

// onSoakError retries a send refused for load; other refusals stored
// nothing and are dropped (and counted as errors).
func (c *client) onSoakError(cmid, code []byte) {
	k := &c.sk
	k.mu.Lock()
	defer k.mu.Unlock()
	if ps := k.pending[string(cmid)]; ps != nil {
		if string(code) == "rate_limited" || string(code) == "internal" {
			ps.retry = true
		} else {
			delete(k.pending, string(cmid))
		}
	}
}

// resendPending writes every unconfirmed send again (§9), or those marked
// retry only.
func (c *client) resendPending(wc *wsConn, retryOnly bool) {
	k := &c.sk
	k.mu.Lock()
	var frames [][]byte
	for _, ps := range k.pending {
		if ps.retry || !retryOnly {
			ps.retry = false
			frames = append(frames, ps.frame)
		}
	}
	k.mu.Unlock()
	if len(frames) == 0 {
		return
	}
	c.lastWrite.Store(time.Now().UnixNano())
	if wc.writeTexts(frames...) == nil {
		c.p.lc.resent.Add(int64(len(frames)))
	}
}

// soakSend sends one message to target if the client is online, has fewer
// than window sends unconfirmed and has budget under the server's
// send_rate (welcome); false when it may not send now.
func (c *client) soakSend(target string, window int) bool {
	c.mu.Lock()
	wc, rate := c.c, c.sendRate
	c.mu.Unlock()
	if wc == nil {
		return false
	}
	k := &c.sk
	k.mu.Lock()
	if len(k.pending) >= window {
		k.mu.Unlock()
		return false
	}
	if rate > 0 {
		now := time.Now()
		// Half the server's bucket (capacity 2R): re-sends after a
		// welcome must fit too.
		k.tokens = min(float64(rate), k.tokens+now.Sub(k.tokAt).Seconds()*float64(rate))
		k.tokAt = now
		if k.tokens < 1 {
			k.mu.Unlock()
			return false
		}
		k.tokens--
	}
	frame := c.appendSend(make([]byte, 0, 128+c.p.bodySize), k.prefix, target) // kept until its sent
	cmid, _ := jsonStr(frame, "cmid")
	ps := &pendingSend{frame: frame}
	if k.pending == nil {
		k.pending = map[string]*pendingSend{}
	}
	k.pending[string(cmid)] = ps
	k.mu.Unlock()
	c.p.lc.sends.Add(1)
	c.lastWrite.Store(time.Now().UnixNano())
	if wc.writeText(frame) != nil {
		k.mu.Lock()
		ps.retry = true // a welcome may have re-sent before we added it
		k.mu.Unlock()
	}
	return true
}

func (c *client) pendingCount() int {
	c.sk.mu.Lock()
	defer c.sk.mu.Unlock()
	return len(c.sk.pending)
}

// drop closes the client's connection: abruptly (no close frame; RST when
// rst) or with a close frame 1000 that the server echoes.
func (c *client) drop(clean, rst bool) bool {
	wc := c.conn()
	if wc == nil {
		return false
	}
	if clean {
		c.p.lc.cleanCloses.Add(1)
		_ = wc.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_ = wc.writeControl(0x8, []byte{0x03, 0xE8})
		return true
	}
	c.p.lc.kills.Add(1)
	if tc, ok := wc.nc.(*net.TCPConn); ok && rst {
		_ = tc.SetLinger(0)
	}
	wc.close()
	return true
}

// --- worker side ---

// prepSoak puts the worker's clients in soak mode: from now on every push
// and history message is recorded per conversation, and a lost connection
// comes back and catches up. The coordinator runs it on every worker
// before any worker starts sending ("soakprep"): a push that reached a
// worker still outside soak mode was not recorded, and the client, online
// throughout, then missed that seq for good (TestSoak failed about once in
// a hundred runs so).
func prepSoak(p *pool) {
	for _, c := range p.clients {
		c.sk.mu.Lock()
		if c.sk.prefix == "" {
			c.sk.prefix = c.sendPrefix() + "s"
		}
		c.sk.mu.Unlock()
	}
	p.soak.Store(true)
	p.catchupReq.Store(true)
	p.reconnect.Store(true)
	if !p.retrying.Swap(true) {
		go p.retryLoop()
	}
}

// runSoak sends at cmd.Rate msgs/s (this worker's share) from random
// online clients, cmd.GroupFrac of them to the client's group and the rest
// to a random uid of cmd.Peers, and drops cmd.Churn connections a second,
// cmd.CleanFrac of them with a close frame, until cmd.DurationMs is over.
// prepSoak must have run on every worker.
func runSoak(p *pool, cmd workerCmd) {
	prepSoak(p) // already done by soakprep; kept for a lone worker
	end := time.Now().Add(time.Duration(cmd.DurationMs) * time.Millisecond)
	var members []*client
	for _, c := range p.clients {
		if c.spec.Group != 0 {
			members = append(members, c)
		}
	}
	var wg sync.WaitGroup
	if cmd.Churn > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			every(end, cmd.Churn, p.quit, func() {
				for try := 0; try < 8; try++ {
					c := p.clients[rand.IntN(len(p.clients))]
					if c.drop(rand.Float64() < cmd.CleanFrac, rand.IntN(2) == 0) {
						return
					}
				}
			})
		}()
	}
	if cmd.Rate > 0 && len(cmd.Peers) > 1 {
		every(end, cmd.Rate, p.quit, func() {
			for try := 0; try < 8; try++ {
				c := p.clients[rand.IntN(len(p.clients))]
				target := ""
				if len(members) > 0 && rand.Float64() < cmd.GroupFrac {
					c = members[rand.IntN(len(members))]
					target = `"group":` + strconv.FormatUint(c.spec.Group, 10)
				} else {
					to := cmd.Peers[rand.IntN(len(cmd.Peers))]
					if to == c.spec.UID {
						continue
					}
					target = `"to":` + strconv.FormatUint(to, 10)
				}
				if c.soakSend(target, cmd.Window) {
					return
				}
			}
		})
	}
	wg.Wait()
}

// every calls f rate times a second until end or quit.
func every(end time.Time, rate float64, quit chan struct{}, f func()) {
	interval := time.Duration(float64(time.Second) / rate)
	next := time.Now()
	for time.Now().Before(end) {
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(d):
			case <-quit:
				return
			}
		}
		next = next.Add(interval)
		f()
	}
}

// retryLoop re-sends the sends marked retry once a second, until quit.
func (p *pool) retryLoop() {
	p.tick(time.Second, func() {
		for _, c := range p.clients {
			if wc := c.conn(); wc != nil {
				c.resendPending(wc, true)
			}
		}
	})
}

// soakDrain waits until every client is online with no unconfirmed send,
// or the deadline.
func (p *pool) soakDrain(deadline time.Time) {
	for time.Now().Before(deadline) {
		busy := p.lc.online.Load() < int64(len(p.clients))
		for _, c := range p.clients {
			if busy {
				break
			}
			busy = c.pendingCount() > 0
		}
		if !busy {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sentMax merges every client's highest sent seq per conversation.
func (p *pool) sentMax() map[string]uint64 {
	out := map[string]uint64{}
	for _, c := range p.clients {
		c.sk.mu.Lock()
		for k, v := range c.sk.sentMax {
			out[k] = max(out[k], v)
		}
		c.sk.mu.Unlock()
	}
	return out
}

// soakCheck counts, for every conversation of lasts and every member
// client of this worker, the seqs 1..last it does not hold.
func (p *pool) soakCheck(lasts map[string]uint64) *workerResult {
	byUID := make(map[uint64]*client, len(p.clients))
	byGroup := map[uint64][]*client{}
	for _, c := range p.clients {
		byUID[c.spec.UID] = c
		if c.spec.Group != 0 {
			byGroup[c.spec.Group] = append(byGroup[c.spec.Group], c)
		}
	}
	r := &workerResult{Clients: len(p.clients)}
	for _, c := range p.clients {
		r.Pending += int64(c.pendingCount())
	}
	for conv, last := range lasts {
		var members []*client
		if g, ok := strings.CutPrefix(conv, "g:"); ok {
			gid, _ := strconv.ParseUint(g, 10, 64)
			members = byGroup[gid]
		} else if a, b, ok := strings.Cut(strings.TrimPrefix(conv, "d:"), ":"); ok {
			for _, s := range []string{a, b} {
				uid, _ := strconv.ParseUint(s, 10, 64)
				if c := byUID[uid]; c != nil {
					members = append(members, c)
				}
			}
		}
		r.Convs++
		for _, c := range members {
			c.sk.mu.Lock()
			s := c.sk.convs[conv]
			if s == nil {
				s = &seqSet{}
			}
			n := s.missing(last)
			if n > 0 {
				r.Missing += n
				if len(r.Examples) < 10 {
					r.Examples = append(r.Examples, fmt.Sprintf("uid %d %s: %d of 1..%d not held; trace (ms%%1e5, event, conn:seq):%s",
						c.spec.UID, conv, n, last, c.sk.traceOf(conv)))
				}
			}
			c.sk.mu.Unlock()
			r.Deliveries += int64(last)
		}
	}
	return r
}

// --- coordinator ---

func (e *env) soak() error {
	o := e.o
	n := o.conns
	// A creator (user 0, not a soak client) makes the groups and leaves
	// them, so that every member is a soak client.
	groups := make([]uint64, 0, o.groups)
	if o.groups > 0 && o.groupSize > 0 {
		sp, creator, err := e.inproc(0)
		if err != nil {
			return err
		}
		for i := 0; i < o.groups; i++ {
			g, err := createGroup(creator, fmt.Sprintf("soak-%d-%s", i, strconv.FormatInt(time.Now().UnixNano(), 36)))
			if err != nil {
				sp.close()
				return err
			}
			if _, err := creator.request([]byte(`{"type":"group_leave","rid":"gl","group":`+strconv.FormatUint(g, 10)+`}`), 30*time.Second); err != nil {
				sp.close()
				return fmt.Errorf("group_leave: %v", err)
			}
			groups = append(groups, g)
		}
		sp.close()
	}
	e.rep.param("groups_created", groups)
	specs := e.specs(1, n, nil)
	peers := make([]uint64, n)
	wantJoined := 0
	for i := range specs {
		peers[i] = specs[i].UID
		if len(groups) > 0 && i < len(groups)*o.groupSize {
			specs[i].Group = groups[i%len(groups)]
			wantJoined++
		}
	}
	mem := &memWatch{p: e.probe}
	gcForced := mem.forceGC()
	e.rep.result("server_gc_forced_via_pprof", gcForced)
	base := e.probe.minSnap(o.sample)
	f, err := e.startFleet(specs)
	if err != nil {
		return err
	}
	defer f.quit()
	stopWatch := mem.watch(time.Second)
	defer stopWatch()
	if err := e.connectFleet(f, n); err != nil {
		return err
	}
	if wantJoined > 0 {
		if _, err := f.do(workerCmd{Op: "join"}, 10*time.Minute); err != nil {
			return err
		}
		if j := f.totals().Joined; j < int64(wantJoined) {
			return fmt.Errorf("only %d of %d group members joined", j, wantJoined)
		}
	}
	if _, err := f.do(workerCmd{Op: "reset"}, time.Minute); err != nil {
		return err
	}
	c0 := f.totals()
	before := e.probe.snap()
	stopProf := e.startProfile()
	// Every worker records pushes before any worker sends (prepSoak).
	if _, err := f.do(workerCmd{Op: "soakprep"}, time.Minute); err != nil {
		return err
	}
	f.setPhase("soak")
	procs := float64(len(f.workers))
	t0 := time.Now()
	_, err = f.do(workerCmd{Op: "soak", Peers: peers, Rate: o.rate / procs, GroupFrac: o.groupFrac,
		Churn: o.churn / procs, CleanFrac: o.cleanFrac, Window: o.window, DurationMs: o.duration.Milliseconds()},
		o.duration+2*time.Minute)
	el := time.Since(t0)
	if err != nil {
		return err
	}
	cs := f.totals()
	after := e.probe.snap()
	stopProf()
	// Quiet drain: every client back, every send confirmed, then every
	// member must come to hold every seq that got a sent.
	f.setPhase("drain")
	tDrain := time.Now()
	drainEnd := tDrain.Add(o.drain)
	if _, err := f.do(workerCmd{Op: "drain", TimeoutMs: o.drain.Milliseconds()}, o.drain+time.Minute); err != nil {
		return err
	}
	evs, err := f.do(workerCmd{Op: "sentmax"}, time.Minute)
	if err != nil {
		return err
	}
	lasts := map[string]uint64{}
	for _, ev := range evs {
		if ev.Result != nil {
			for k, v := range ev.Result.SentMax {
				lasts[k] = max(lasts[k], v)
			}
		}
	}
	var chk workerResult
	cmd := workerCmd{Op: "soakcheck", Lasts: lasts}
	for {
		evs, err := f.do(cmd, time.Minute)
		if err != nil {
			return err
		}
		cmd.Lasts = nil // the workers keep them
		chk = workerResult{}
		for _, ev := range evs {
			if r := ev.Result; r != nil {
				chk.Missing += r.Missing
				chk.Deliveries += r.Deliveries
				chk.Convs = r.Convs
				chk.Pending += r.Pending
				chk.Examples = append(chk.Examples, r.Examples...)
			}
		}
		if chk.Missing == 0 || time.Now().After(drainEnd) {
			break
		}
		time.Sleep(time.Second)
	}
	drained := time.Since(tDrain)
	r, c, err := f.results(0)
	stopWatch()
	if err != nil {
		return err
	}
	f.setPhase("leave")
	f.quit()
	e.status(fmt.Sprintf("all clients gone; waiting %v before sampling the server's memory", o.settle))
	time.Sleep(o.settle)
	left := e.probe.minSnap(o.sample)
	leftGC := left
	if mem.forceGC() {
		leftGC = e.probe.minSnap(o.sample)
	}

	e.rep.result("clients", n)
	e.rep.result("group_members", wantJoined)
	e.rep.result("soak_seconds", el.Seconds())
	e.rep.result("sends", cs.Sends-c0.Sends)
	e.rep.result("messages_sent_ok", c.SentOK-c0.SentOK)
	e.rep.result("group_messages_sent_ok", c.GroupSent-c0.GroupSent)
	e.rep.result("messages_per_second", float64(cs.SentOK-c0.SentOK)/el.Seconds())
	e.rep.result("conversations", len(lasts))
	e.rep.result("deliveries_required", chk.Deliveries)
	e.rep.result("lost", chk.Missing)
	e.rep.result("duplicate_pushes", c.Dups-c0.Dups)
	e.rep.result("pushes", c.Pushes-c0.Pushes)
	e.rep.result("drops_abrupt", c.Kills)
	e.rep.result("drops_clean", c.CleanCloses)
	e.rep.result("disconnects", c.Disconnects-c0.Disconnects)
	e.rep.result("reconnects", c.Welcomes-c0.Welcomes)
	e.rep.result("reconnect_failures", c.ConnFail-c0.ConnFail)
	e.rep.result("online_at_end", c.Online)
	e.rep.result("resent_sends", c.Resent)
	e.rep.result("unconfirmed_sends_at_end", chk.Pending)
	e.rep.result("history_requests", c.History-c0.History)
	e.rep.result("errors", c.Errors-c0.Errors)
	e.rep.result("rate_limited", c.RateLimited-c0.RateLimited)
	e.rep.result("drain_seconds", drained.Seconds())
	e.cpuResults(before, after, float64(cs.SentOK-c0.SentOK), "message", "messages")
	e.storeResults(before, after)
	if base.rssOK {
		e.rep.result("server_rss_baseline_bytes", base.rss)
		e.rep.result("server_rss_peak_bytes", mem.peakRSS)
		e.rep.result("server_rss_after_leave_bytes", left.rss)
		e.rep.result("server_rss_after_leave_gc_bytes", leftGC.rss)
	}
	if base.heap >= 0 {
		e.rep.result("server_heap_inuse_baseline_bytes", base.heap)
		e.rep.result("server_heap_inuse_peak_bytes", mem.peakHeap)
		e.rep.result("server_heap_inuse_after_leave_bytes", left.heap)
		e.rep.result("server_heap_inuse_after_leave_gc_bytes", leftGC.heap)
	}
	if len(chk.Examples) > 0 {
		sort.Strings(chk.Examples)
		e.rep.result("loss_examples", chk.Examples)
	}
	e.rep.latency("sent", r.sent)
	e.rep.latency("delivery", r.e2e)
	e.rep.latency("reconnect_connect", r.conn)
	e.rep.Counters = c
	if chk.Missing > 0 {
		return fmt.Errorf("%d required deliveries lost (not held after the drain)", chk.Missing)
	}
	if c.Online < int64(n) {
		return fmt.Errorf("only %d of %d clients back online after the drain", c.Online, n)
	}
	return nil
}

// memWatch keeps the peak of the server's RSS and Go heap.
type memWatch struct {
	p        *probe
	mu       sync.Mutex
	peakRSS  int64
	peakHeap float64
}

func (m *memWatch) sample() {
	s := m.p.snap()
	m.mu.Lock()
	m.peakRSS = max(m.peakRSS, s.rss)
	m.peakHeap = max(m.peakHeap, s.heap)
	m.mu.Unlock()
}

// watch samples every d until the returned stop is called.
func (m *memWatch) watch(d time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			m.sample()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done); wg.Wait(); m.sample() })
	}
}

func (m *memWatch) forceGC() bool { return m.p.forceGC() }
