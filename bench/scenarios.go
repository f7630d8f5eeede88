package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// connect: ramp N connections, hold them idle, measure the server's
// memory growth per connection. Memory is sampled three times: before any
// connection (after --hold of settling), with half of them, and with all
// of them, each after --hold; the per-connection figure is the marginal
// cost of the second half, which start-up memory the runtime has not
// returned yet does not distort. With --pprof on the server, a GC is
// forced before each sample. Figures below the method's resolution
// (memResolution) are flagged in the report's warnings.
func (e *env) connect() error {
	o := e.o
	f, err := e.startFleet(e.specs(0, o.conns, nil))
	if err != nil {
		return err
	}
	defer f.quit()
	f.setPhase("settle")
	gc := e.probe.forceGC()
	e.rep.param("gc_forced", gc)
	sample := func() snapshot {
		if gc {
			e.probe.forceGC()
		}
		return e.probe.minSnap(o.hold)
	}
	s0 := sample()
	t0 := time.Now()
	if _, err := f.do(workerCmd{Op: "connect", Frac: 0.5}, 10*time.Minute); err != nil {
		return err
	}
	t1 := time.Now()
	f.setPhase("hold")
	s1 := sample()
	half := f.totals().Online
	t2 := time.Now()
	if _, err := f.do(workerCmd{Op: "connect"}, 10*time.Minute); err != nil {
		return err
	}
	ramp := t1.Sub(t0) + time.Since(t2)
	c := f.totals()
	e.rep.result("connected", c.Online)
	e.rep.result("connect_failures", c.ConnFail)
	e.rep.result("connect_seconds", ramp.Seconds())
	e.rep.result("connects_per_second", float64(c.Welcomes)/ramp.Seconds())
	f.setPhase("hold")
	e.status(fmt.Sprintf("holding %d connections for %v", c.Online, o.hold))
	s2 := sample()
	c = f.totals()
	if s1.rssOK && s2.rssOK && c.Online > half {
		e.rep.result("server_rss_idle_bytes", s0.rss)
		e.rep.result("server_rss_half_bytes", s1.rss)
		e.rep.result("server_rss_full_bytes", s2.rss)
		e.perConn("server_rss_per_conn_bytes", float64(s2.rss-s1.rss), c.Online-half, memNoise(s1, s2, false, gc), gc)
		e.perConn("server_rss_per_conn_from_idle_bytes", float64(s2.rss-s0.rss), c.Online, memNoise(s0, s2, false, gc), gc)
	}
	if s1.heap >= 0 && s2.heap >= 0 && c.Online > half {
		e.rep.result("server_heap_inuse_idle_bytes", s0.heap)
		e.rep.result("server_heap_inuse_full_bytes", s2.heap)
		e.perConn("server_heap_per_conn_bytes", s2.heap-s1.heap, c.Online-half, memNoise(s1, s2, true, gc), gc)
		e.perConn("server_heap_per_conn_from_idle_bytes", s2.heap-s0.heap, c.Online, memNoise(s0, s2, true, gc), gc)
	}
	if s0.nextGC > 0 && s2.nextGC > 0 {
		// The runtime sets the next GC goal to live heap × (1 + GOGC/100).
		e.rep.result("server_gc_goal_idle_bytes", s0.nextGC)
		e.rep.result("server_gc_goal_full_bytes", s2.nextGC)
	}
	r, c2, err := f.results(0)
	if err != nil {
		return err
	}
	e.rep.latency("connect", r.conn)
	e.rep.result("disconnects_during_hold", c2.Disconnects)
	e.rep.result("pings", c2.Pings)
	e.rep.result("pongs", c2.Pongs)
	e.rep.Counters = c2
	if c.Online < int64(o.conns) {
		return fmt.Errorf("only %d of %d clients connected (%d failed attempts)", c.Online, o.conns, c.ConnFail)
	}
	return nil
}

// p2p: pairs (2i, 2i+1) send to each other.
// heapFloor is the resolution of the Go heap after a forced GC: the
// runtime keeps partly used spans (8 KiB and up) per size class in each P's
// cache, about a MiB on a few cores, so smaller changes are not visible.
const heapFloor = 1 << 20

// memNoise is how far two memory samples of the server may differ with no
// change in what is live. Each sample is the minimum over --hold, and the
// samples within a window spread by what the runtime allocates and frees
// meanwhile. Between two GC cycles the heap also holds garbage, up to the
// GC goal minus the live heap (half the goal at GOGC=100): unless a GC was
// forced just before sampling, that much is uncertain in the heap figures.
// RSS keeps freed heap pages until the scavenger returns them, so the same
// amount stays uncertain in RSS even after a forced GC; RSS is read in
// pages of 4 KiB.
func memNoise(a, b snapshot, heap, gcForced bool) float64 {
	goal := max(a.nextGCMax, b.nextGCMax, 0)
	if heap {
		n := max(a.heapSpread, b.heapSpread, heapFloor)
		if !gcForced {
			n = max(n, goal/2)
		}
		return n
	}
	return max(float64(max(a.rssSpread, b.rssSpread)), goal/2, 4096)
}

// perConn records delta/conns as k, and a warning when the figure is
// negative or its delta is within twice the noise (over ±50% uncertain).
func (e *env) perConn(k string, delta float64, conns int64, noise float64, gcForced bool) {
	v := delta / float64(conns)
	e.rep.result(k, v)
	res := noise / float64(conns)
	hint := "run more connections (--conns)"
	if !gcForced {
		hint += ", or the server with --pprof so that the harness forces a GC before each sample"
	}
	switch {
	case delta < 0:
		e.rep.warn("%s = %.0f is negative: memory fell while %d connections were added, so it measures GC and scavenger timing, not connections (resolution ±%s per connection); %s",
			k, v, conns, fmtBytes(res), hint)
	case delta < 2*noise:
		e.rep.warn("%s = %.0f is below the method's resolution: %d connections moved memory by %s, less than twice the sampling noise of %s (±%s per connection); %s",
			k, v, conns, fmtBytes(delta), fmtBytes(noise), fmtBytes(res), hint)
	}
}

// fmtBytes is n in B, KiB or MiB.
func fmtBytes(n float64) string {
	switch {
	case n >= 1<<20 || n <= -1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	case n >= 1<<10 || n <= -1<<10:
		return fmt.Sprintf("%.1f KiB", n/(1<<10))
	}
	return fmt.Sprintf("%.0f B", n)
}

func (e *env) p2p() error {
	o := e.o
	n := 2 * o.pairs
	specs := e.specs(0, n, func(i int) uint64 { return e.users[i^1].uid })
	f, err := e.startFleet(specs)
	if err != nil {
		return err
	}
	defer f.quit()
	if err := e.connectFleet(f, n); err != nil {
		return err
	}
	if _, err := f.do(workerCmd{Op: "reset"}, time.Minute); err != nil {
		return err
	}
	perSender := o.rate / float64(n)
	e.rep.param("rate_per_sender", perSender)
	c0 := f.totals()
	before := e.probe.snap()
	stopProf := e.startProfile()
	t0 := time.Now()
	if _, err := f.do(workerCmd{Op: "p2p", Rate: perSender, Window: o.window, DurationMs: o.duration.Milliseconds()}, o.duration+2*time.Minute); err != nil {
		return err
	}
	el := time.Since(t0)
	// Let the last pushes arrive and their acks reach the server.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c := f.totals()
		if c.Pushes-c0.Pushes >= c.SentOK-c0.SentOK {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	after := e.probe.snap()
	stopProf()
	r, c, err := f.results(0)
	if err != nil {
		return err
	}
	sent := c.SentOK - c0.SentOK
	e.rep.result("messages_sent_ok", sent)
	e.rep.result("messages_per_second", float64(sent)/el.Seconds())
	e.rep.result("pushes_received", c.Pushes-c0.Pushes)
	e.rep.result("ack_frames", c.AckFrames-c0.AckFrames)
	e.rep.result("errors", c.Errors-c0.Errors)
	e.rep.result("rate_limited", c.RateLimited-c0.RateLimited)
	e.rep.result("duplicates", c.Dups-c0.Dups)
	e.rep.result("disconnects", c.Disconnects)
	e.cpuResults(before, after, float64(sent), "message", "messages")
	e.storeResults(before, after)
	if before.acks >= 0 && after.acks >= 0 {
		e.rep.result("server_acks", after.acks-before.acks)
	}
	if before.resends >= 0 && after.resends >= 0 {
		e.rep.result("server_resends", after.resends-before.resends)
	}
	e.rep.latency("sent", r.sent)
	e.rep.latency("e2e", r.e2e)
	e.rep.Counters = c
	return nil
}

// storeResults reports the server's mean commit and fsync time over the
// measurement (Magpie only).
func (e *env) storeResults(before, after snapshot) {
	if n := after.commitN - before.commitN; before.commitN >= 0 && n > 0 {
		e.rep.result("server_commits", n)
		e.rep.result("server_commit_mean_ms", (after.commitSum-before.commitSum)/n*1000)
	}
	if n := after.fsyncN - before.fsyncN; before.fsyncN >= 0 && n > 0 {
		e.rep.result("server_fsync_mean_ms", (after.fsyncSum-before.fsyncSum)/n*1000)
	}
}

func (e *env) cpuResults(before, after snapshot, n float64, what, plural string) {
	if !before.cpuOK || !after.cpuOK || n <= 0 {
		return
	}
	cpu := after.cpu - before.cpu
	el := after.at.Sub(before.at).Seconds()
	e.rep.result("server_cpu_seconds", cpu)
	e.rep.result("server_cpu_utilisation", cpu/el)
	e.rep.result("server_cpu_us_per_"+what, cpu/n*1e6)
	if cpu > 0 {
		e.rep.result(plural+"_per_server_cpu_second", n/cpu)
	}
}

// addFleet makes the fleet's clients (specs) members of group g: they
// track g's seqs, and creator adds them 1,000 per group_add; the group
// must then count want members. A server of protocol version 1 (the
// baseline) has no group_add: there the clients join.
func (e *env) addFleet(f *fleet, creator *client, g uint64, specs []clientSpec, want int64) error {
	if creator.version.Load() < 2 {
		if _, err := f.do(workerCmd{Op: "join", Group: g}, 10*time.Minute); err != nil {
			return err
		}
		if j := f.totals().Joined; j < int64(len(specs)) {
			return fmt.Errorf("only %d of %d members joined", j, len(specs))
		}
		return nil
	}
	if _, err := f.do(workerCmd{Op: "track", Group: g}, time.Minute); err != nil {
		return err
	}
	uids := make([]uint64, len(specs))
	for i, s := range specs {
		uids[i] = s.UID
	}
	n, err := addMembers(creator, g, uids)
	if err != nil {
		return err
	}
	if int64(n) < want {
		return fmt.Errorf("the group has %d of %d members", n, want)
	}
	return nil
}

// groupSend sends count messages to group g from c at rate and waits for
// their sent (or error) replies.
func (e *env) groupSend(c *client, g uint64, count int, rate float64) {
	var wg sync.WaitGroup
	wg.Add(1)
	c.sendLoop(&wg, `"group":`+strconv.FormatUint(g, 10), time.Now().Add(24*time.Hour), count, rate, e.o.window)
	deadline := time.Now().Add(30*time.Second + e.o.wait)
	for len(c.window) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// fanout: one group, N online members, --publishers senders (members too)
// that send --messages between them.
func (e *env) fanout() error {
	o := e.o
	np := o.publishers
	pools := make([]*pool, np)
	senders := make([]*client, np)
	for i := range senders {
		sp, c, err := e.inproc(i)
		if err != nil {
			return err
		}
		defer sp.close()
		pools[i], senders[i] = sp, c
	}
	g, err := createGroup(senders[0], "bench-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err != nil {
		return err
	}
	for _, c := range senders[1:] {
		if r, err := c.request([]byte(`{"type":"group_join","rid":"gj","group":`+strconv.FormatUint(g, 10)+`}`), 30*time.Second); err != nil || !bytes.Contains(r, []byte(`"group"`)) {
			return fmt.Errorf("publisher group_join: %v %s", err, r)
		}
	}
	e.rep.param("group", g)
	e.rep.param("publishers", np)
	e.rep.param("ack_mode", o.ackMode)
	sentOK := func() (n int64) {
		for _, sp := range pools {
			n += sp.lc.sentOK.Load()
		}
		return n
	}
	sendErrs := func() (n int64) {
		for _, sp := range pools {
			n += sp.lc.errors.Load()
		}
		return n
	}
	specs := e.specs(np, o.members, nil)
	f, err := e.startFleet(specs)
	if err != nil {
		return err
	}
	defer f.quit()
	f.extra = func() string {
		return fmt.Sprintf("| publishers sent=%d err=%d", sentOK(), sendErrs())
	}
	if err := e.connectFleet(f, o.members); err != nil {
		return err
	}
	t0 := time.Now()
	if err := e.addFleet(f, senders[0], g, specs, int64(np+o.members)); err != nil {
		return err
	}
	e.rep.result("join_seconds", time.Since(t0).Seconds())
	if _, err := f.do(workerCmd{Op: "reset"}, time.Minute); err != nil {
		return err
	}
	f.settle()                         // the set-up's system messages have arrived
	time.Sleep(500 * time.Millisecond) // let the join traffic settle before sampling CPU
	p0 := f.totals()
	f.setPhase("fanout")
	before := e.probe.snap()
	stopProf := e.startProfile()
	tSend := time.Now()
	var wg sync.WaitGroup
	for i, c := range senders {
		n := o.messages / np
		if i < o.messages%np {
			n++
		}
		wg.Add(1)
		go func(c *client, n int) {
			defer wg.Done()
			e.groupSend(c, g, n, o.rate/float64(np))
		}(c, n)
	}
	wg.Wait()
	sent := sentOK()
	// Publishers receive each other's messages as members do.
	want := int64(o.members) * sent
	deadline := time.Now().Add(o.wait)
	for time.Now().Before(deadline) && f.totals().Pushes-p0.Pushes < want {
		time.Sleep(10 * time.Millisecond)
	}
	c := f.totals()
	// Wait for the server to count the acks of every delivery.
	if before.acks >= 0 {
		ackDeadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(ackDeadline) {
			if s := e.probe.snap(); s.acks-before.acks >= float64(want) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	after := e.probe.snap()
	stopProf()
	last, err := lastSeq(senders[0], g, sent)
	if err != nil {
		return err
	}
	r, c, err := f.results(last) // every member holds 1..last (onSystem)
	if err != nil {
		return err
	}
	deliveries := (c.Pushes - p0.Pushes) - (c.Dups - p0.Dups)
	span := time.Duration(c.LastRecvNs - tSend.UnixNano())
	e.rep.result("messages_sent_ok", sent)
	e.rep.result("send_errors", sendErrs())
	e.rep.result("deliveries_expected", want)
	e.rep.result("deliveries", deliveries)
	e.rep.result("missing", r.missing)
	e.rep.result("duplicates", c.Dups)
	e.rep.result("out_of_order", c.OutOfOrder)
	e.rep.result("fanout_seconds", span.Seconds())
	if span > 0 {
		e.rep.result("deliveries_per_second", float64(deliveries)/span.Seconds())
	}
	e.rep.result("ack_frames", c.AckFrames)
	if before.acks >= 0 && after.acks >= 0 {
		e.rep.result("server_acks", after.acks-before.acks)
		e.rep.result("server_resends", after.resends-before.resends)
	}
	e.cpuResults(before, after, float64(deliveries), "delivery", "deliveries")
	e.storeResults(before, after)
	e.rep.latency("delivery", r.e2e)
	sentHist := pools[0].sent.merged()
	for _, sp := range pools[1:] {
		sentHist.Merge(sp.sent.merged())
	}
	e.rep.latency("sent", sentHist)
	e.rep.Counters = c
	if deliveries < want || r.missing > 0 {
		return fmt.Errorf("%d of %d deliveries arrived (%d missing)", deliveries, want, r.missing)
	}
	return nil
}

// storm: N members connected, the server restarted, every client must
// come back and catch up through convs + history with nothing lost.
func (e *env) storm() error {
	o := e.o
	sp, sender, err := e.inproc(0)
	if err != nil {
		return err
	}
	defer sp.close()
	g, err := createGroup(sender, "storm-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err != nil {
		return err
	}
	e.rep.param("group", g)
	specs := e.specs(1, o.conns, nil)
	f, err := e.startFleet(specs)
	if err != nil {
		return err
	}
	defer f.quit()
	f.extra = func() string {
		return fmt.Sprintf("| sender sends=%d sent=%d err=%d", sp.lc.sends.Load(), sp.lc.sentOK.Load(), sp.lc.errors.Load())
	}
	if err := e.connectFleet(f, o.conns); err != nil {
		return err
	}
	if err := e.addFleet(f, sender, g, specs, int64(1+o.conns)); err != nil {
		return err
	}
	f.settle()
	p0 := f.totals()
	f.setPhase("pre")
	e.groupSend(sender, g, o.messages, o.rate)
	pre := sp.lc.sentOK.Load()
	want := int64(o.conns) * pre
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && f.totals().Pushes-p0.Pushes < want; {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := f.do(workerCmd{Op: "storm", Group: g}, time.Minute); err != nil {
		return err
	}
	if _, err := f.do(workerCmd{Op: "reset"}, time.Minute); err != nil {
		return err
	}
	f.setPhase("restart")
	var tDown, tReady time.Time
	if e.srv != nil {
		sig := syscall.SIGKILL
		if o.kill == "term" {
			sig = syscall.SIGTERM
		}
		tDown = time.Now()
		e.srv.stop(sig)
		tStopped := time.Now()
		if err := e.srv.start(); err != nil {
			return err
		}
		tReady = time.Now()
		e.probe.pid = e.srv.pid()
		e.rep.result("server_stop_seconds", tStopped.Sub(tDown).Seconds())
		e.rep.result("server_start_seconds", tReady.Sub(tStopped).Seconds())
	} else {
		fmt.Fprintln(os.Stderr, "bench: restart the server now (waiting for the clients to lose it)")
		for f.totals().Online > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		tDown = time.Now()
		for !e.healthy() {
			time.Sleep(20 * time.Millisecond)
		}
		tReady = time.Now()
		if port, err := strconv.Atoi(e.u.Port()); err == nil && o.serverPID == 0 {
			e.probe.pid = findListenerPID(port)
		}
	}
	// The sender comes back at once and keeps sending while the members
	// reconnect with backoff, so most of them must fill a gap by history.
	for {
		if err := sender.connect(); err == nil {
			break
		}
		if time.Since(tReady) > 30*time.Second {
			return fmt.Errorf("sender could not reconnect")
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.setPhase("post")
	e.groupSend(sender, g, o.messages, o.rate)
	final := sp.lc.sentOK.Load()
	e.rep.result("messages_before_restart", pre)
	e.rep.result("messages_after_restart", final-pre)
	last, err := lastSeq(sender, g, final)
	if err != nil {
		return err
	}
	f.setPhase("catchup")
	if _, err := f.do(workerCmd{Op: "final", Final: last, TimeoutMs: o.wait.Milliseconds()}, o.wait+time.Minute); err != nil {
		return err
	}
	r, c, err := f.results(last)
	if err != nil {
		return err
	}
	e.rep.result("clients", o.conns)
	e.rep.result("back_online", c.Online)
	e.rep.result("caught_up", c.CaughtUp)
	e.rep.result("all_back_seconds_after_kill", time.Duration(r.maxWelcomeNs-tDown.UnixNano()).Seconds())
	e.rep.result("all_back_seconds_after_ready", time.Duration(r.maxWelcomeNs-tReady.UnixNano()).Seconds())
	if c.CaughtUp == int64(o.conns) {
		e.rep.result("all_caught_up_seconds_after_kill", time.Duration(r.maxCaughtNs-tDown.UnixNano()).Seconds())
		e.rep.result("all_caught_up_seconds_after_ready", time.Duration(r.maxCaughtNs-tReady.UnixNano()).Seconds())
	}
	e.rep.result("lost", r.missing)
	e.rep.result("duplicate_pushes", c.Dups)
	e.rep.result("history_requests", c.History)
	e.rep.result("reconnect_failures", c.ConnFail)
	e.rep.latency("reconnect_to_caught_up", r.catch)
	e.rep.latency("reconnect_connect", r.conn)
	e.rep.Counters = c
	if r.missing > 0 || c.CaughtUp < int64(o.conns) {
		return fmt.Errorf("%d of %d clients caught up, %d messages lost", c.CaughtUp, o.conns, r.missing)
	}
	return nil
}

func (e *env) healthy() bool {
	resp, err := httpClient.Get(e.probe.httpURL + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}
