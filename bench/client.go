package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// clientSpec is one simulated user connection.
type clientSpec struct {
	Idx   int    `json:"i"`
	UID   uint64 `json:"u"`
	Token string `json:"t"`
	Peer  uint64 `json:"p,omitempty"` // p2p: the uid it sends to
	Src   string `json:"s,omitempty"` // local IP to bind
	Group uint64 `json:"g,omitempty"` // soak: the group it joins (0: none)
}

// pool runs a set of clients: inside a worker process, or in the
// coordinator for the fan-out sender.
type pool struct {
	url       *url.URL
	heartbeat time.Duration // 0: the server's heartbeat_ms
	timeout   time.Duration // dial + handshake + welcome
	bodySize  int
	noAck     bool // do not ack pushes (servers that ignore acks: the baseline's ceiling)
	ackNow    bool // ack every push at once, one frame each; else coalesce as welcome says

	lc    liveCounters
	conn  *shardedHist // dial → welcome
	sent  *shardedHist // send → sent
	e2e   *shardedHist // send → msg at a recipient (body timestamp)
	catch *shardedHist // storm: connection lost → caught up

	clients []*client
	quit    chan struct{}
	quitted atomic.Bool

	reconnect  atomic.Bool   // storm: reconnect with backoff after a loss
	group      atomic.Uint64 // group whose seqs are tracked
	final      atomic.Uint64 // storm: every client must hold 1..final
	catchupReq atomic.Bool   // after each (re)welcome send convs and fill gaps
	retrying   atomic.Bool   // soak: retryLoop started
	soak       atomic.Bool   // track every conv, keep and re-send unconfirmed sends (soak.go)
	wg         sync.WaitGroup
}

func newPool(u *url.URL, hb, timeout time.Duration, bodySize int) *pool {
	return &pool{
		url: u, heartbeat: hb, timeout: timeout, bodySize: bodySize,
		conn: newShardedHist(), sent: newShardedHist(), e2e: newShardedHist(), catch: newShardedHist(),
		quit: make(chan struct{}),
	}
}

type client struct {
	p    *pool
	spec clientSpec
	url  *url.URL

	mu        sync.Mutex // guards c, reader, grp, lostAt
	c         *wsConn
	reader    chan struct{} // closed when the reader of c has returned (takeReaderLocked)
	hb        time.Duration
	sendRate  int
	lastWrite atomic.Int64 // unix ns
	replies   chan []byte  // group/error replies to requests with a rid

	// Acks: written by the reader, flushed by it or by the pool's
	// ackTicker (coalescing mode), so guarded by ackMu. ackSince is the
	// unix ns of the oldest unacked push (0: none), for the ticker's check.
	ackMu    sync.Mutex
	acks     []pendingAck
	ackN     int // pushes since the last flush
	ackSince atomic.Int64
	ackDelay atomic.Int64 // ns: welcome's ack_delay_ms (default 20 ms)
	ackBatch atomic.Int64 // flush at once at this many pushes: half of welcome's max_inflight (default 64)

	// Reader goroutine state: one reader at a time owns it (connect hands
	// it over only once the previous reader has returned).
	maxFirst  uint64 // highest seq of the tracked group first received
	grp       seqSet // held seqs of the tracked group conv
	sk        soakClient
	contig    atomic.Uint64
	contigAt  atomic.Int64  // unix ns contig last advanced
	welcomeAt atomic.Int64  // unix ns of the latest welcome
	version   atomic.Uint64 // welcome's protocol version
	caught    atomic.Bool
	lostAt    int64 // unix ns the connection was lost (storm)
	convBuf   []byte
	window    chan struct{} // outstanding sends (p2p, sender)
	nsend     atomic.Uint64
	errs      chan string // error codes of failed sends (sender)
}

type pendingAck struct {
	conv []byte
	seq  uint64
}

func (p *pool) newClient(s clientSpec) *client {
	q := *p.url
	v := url.Values{"token": {s.Token}}
	q.RawQuery = v.Encode()
	return &client{p: p, spec: s, url: &q, replies: make(chan []byte, 4)}
}

var errWelcome = errors.New("no welcome")

// failKind classifies a failed connection attempt for the report.
func failKind(err error) string {
	var hs httpStatusError
	var ne net.Error
	switch {
	case errors.As(err, &hs):
		return "fail:http_" + strconv.Itoa(hs.status)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "fail:refused"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return "fail:reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EADDRINUSE):
		return "fail:no_port"
	case errors.As(err, &ne) && ne.Timeout():
		return "fail:timeout"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "fail:eof"
	}
	return "fail:other"
}

// connect dials, upgrades and waits for welcome; it then starts the reader.
func (c *client) connect() error {
	t0 := time.Now()
	var laddr net.Addr
	if c.spec.Src != "" {
		laddr = &net.TCPAddr{IP: net.ParseIP(c.spec.Src)}
	}
	wc, err := dialWS(c.url, laddr, c.p.timeout)
	if err != nil {
		c.p.lc.connFail.Add(1)
		c.p.lc.closeCode(failKind(err))
		return err
	}
	_ = wc.nc.SetReadDeadline(t0.Add(c.p.timeout))
	m, err := wc.readMessage()
	if err != nil || !bytes.Equal(frameType(m), []byte("welcome")) {
		wc.close()
		c.p.lc.connFail.Add(1)
		if err == nil {
			err = errWelcome
		}
		c.p.lc.closeCode("fail:welcome")
		return err
	}
	_ = wc.nc.SetReadDeadline(time.Time{})
	hb, _ := jsonUint(m, "heartbeat_ms")
	rate, _ := jsonUint(m, "send_rate")
	v, _ := jsonUint(m, "version")
	c.version.Store(v)
	// Ack pacing from welcome (Magpie extensions; a server without them
	// gets 20 ms and batches of 64, as the Go SDK does).
	delay := int64(20 * time.Millisecond)
	if d, ok := jsonUint(m, "ack_delay_ms"); ok {
		delay = int64(d) * int64(time.Millisecond)
	}
	batch := int64(64)
	if w, ok := jsonUint(m, "max_inflight"); ok && w > 0 {
		batch = max(1, min(batch, int64(w/2)))
	}
	c.ackDelay.Store(delay)
	c.ackBatch.Store(batch)
	c.p.conn.record(c.spec.Idx, time.Since(t0).Microseconds())
	done := make(chan struct{})
	c.mu.Lock()
	c.takeReaderLocked(wc, done)
	c.hb = time.Duration(hb) * time.Millisecond
	if c.p.heartbeat > 0 {
		c.hb = c.p.heartbeat
	}
	c.sendRate = int(rate)
	c.mu.Unlock()
	c.lastWrite.Store(time.Now().UnixNano())
	c.welcomeAt.Store(time.Now().UnixNano())
	c.p.lc.welcomes.Add(1)
	c.p.lc.online.Add(1)
	if c.p.soak.Load() {
		c.soakEvent('w')
		c.resendPending(wc, false)
	}
	if c.p.catchupReq.Load() {
		c.requestConvs(wc)
	}
	c.p.wg.Add(1)
	go c.readLoop(wc, done)
	return nil
}

// takeReaderLocked makes wc the client's connection and done the signal
// of its reader, once the previous reader (if any) has returned: the
// reader state (acks, convBuf, …) has one owner at a time. A caller may
// connect again before the old reader noticed that its connection died
// (the storm sender does): the old connection is closed and its reader,
// which then finds it is no longer current, finishes without reconnecting.
// REQUIRES: c.mu, which it may release and take again while it waits.
func (c *client) takeReaderLocked(wc *wsConn, done chan struct{}) {
	for c.reader != nil && !closed(c.reader) {
		old, prev := c.c, c.reader
		c.c = nil
		c.mu.Unlock()
		if old != nil {
			old.close()
		}
		<-prev
		c.mu.Lock()
	}
	c.c, c.reader = wc, done
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (c *client) conn() *wsConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c
}

func (c *client) write(p []byte) error {
	wc := c.conn()
	if wc == nil {
		return net.ErrClosed
	}
	c.lastWrite.Store(time.Now().UnixNano())
	return wc.writeText(p)
}

func (c *client) readLoop(wc *wsConn, done chan struct{}) {
	defer c.p.wg.Done()
	var err error
	for {
		var m []byte
		m, err = wc.readMessage()
		if err != nil {
			break
		}
		c.handle(wc, m)
	}
	wc.close()
	c.p.lc.online.Add(-1)
	if c.p.soak.Load() {
		c.soakEvent('x')
	}
	var ce closeError
	if errors.As(err, &ce) {
		c.p.lc.closeCode(strconv.Itoa(ce.code))
	}
	c.mu.Lock()
	current := c.c == wc // false: a newer connect took it over
	if current {
		c.c = nil
	}
	c.lostAt = time.Now().UnixNano()
	c.mu.Unlock()
	c.ackMu.Lock()
	c.acks, c.ackN = c.acks[:0], 0
	c.ackSince.Store(0)
	c.ackMu.Unlock()
	close(done) // the reader state is free for the next connection
	if c.p.quitted.Load() {
		return
	}
	c.p.lc.disconnects.Add(1)
	if current && c.p.reconnect.Load() {
		c.p.wg.Add(1)
		go c.reconnectLoop()
	}
}

// reconnectLoop follows PROTOCOL §9: full-jitter exponential backoff, the
// first try within 1 s, doubling, capped at 30 s.
func (c *client) reconnectLoop() {
	defer c.p.wg.Done()
	backoff := time.Second
	for !c.p.quitted.Load() {
		d := time.Duration(rand.Int64N(int64(backoff)))
		select {
		case <-time.After(d):
		case <-c.p.quit:
			return
		}
		if err := c.connect(); err == nil {
			return
		} else {
			var hs httpStatusError
			if errors.As(err, &hs) && hs.status == 401 {
				return
			}
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// flushAcksLocked writes one cumulative ack per conversation. REQUIRES:
// c.ackMu.
func (c *client) flushAcksLocked(wc *wsConn) {
	c.ackN = 0
	c.ackSince.Store(0)
	if len(c.acks) == 0 {
		return
	}
	frames := make([][]byte, 0, len(c.acks))
	for _, a := range c.acks {
		b := make([]byte, 0, 48+len(a.conv))
		b = append(b, `{"type":"ack","conv":"`...)
		b = append(b, a.conv...)
		b = append(b, `","seq":`...)
		b = strconv.AppendUint(b, a.seq, 10)
		b = append(b, '}')
		frames = append(frames, b)
	}
	c.acks = c.acks[:0]
	c.lastWrite.Store(time.Now().UnixNano())
	if wc.writeTexts(frames...) == nil {
		c.p.lc.ackFrames.Add(int64(len(frames)))
	}
}

func (c *client) handle(wc *wsConn, m []byte) {
	switch string(frameType(m)) {
	case "msg":
		c.onMsg(m)
	case "sent":
		if c.p.soak.Load() && !c.onSoakSent(m) {
			return // a second sent for a re-sent cmid
		}
		c.p.lc.sentOK.Add(1)
		if cmid, ok := jsonStr(m, "cmid"); ok {
			if i := bytes.LastIndexByte(cmid, '-'); i >= 0 {
				if ns, n := parseUintBytes(cmid[i+1:]); n > 0 {
					c.p.sent.record(c.spec.Idx, (time.Now().UnixNano()-int64(ns))/1000)
				}
			}
		}
		c.release()
	case "pong":
		c.p.lc.pongs.Add(1)
	case "error":
		c.p.lc.errors.Add(1)
		code, _ := jsonStr(m, "code")
		c.p.lc.closeCode("error:" + string(code))
		if string(code) == "rate_limited" {
			c.p.lc.rateLimited.Add(1)
		}
		if cmid, ok := jsonStr(m, "cmid"); ok {
			if c.p.soak.Load() {
				c.onSoakError(cmid, code)
			}
			if c.errs != nil {
				select {
				case c.errs <- string(code):
				default:
				}
			}
			c.release()
			return
		}
		c.reply(m)
	case "group":
		c.reply(m)
	case "convs":
		c.onConvs(wc, m)
	case "history":
		if rid, _ := jsonStr(m, "rid"); string(rid) == "ls" {
			c.reply(m) // lastSeq's request
			return
		}
		c.onHistory(wc, m)
	}
}

func (c *client) reply(m []byte) {
	select {
	case c.replies <- append([]byte(nil), m...):
	default:
	}
}

func (c *client) release() {
	if c.window != nil {
		select {
		case <-c.window:
		default:
		}
	}
}

func (c *client) onMsg(m []byte) {
	now := time.Now().UnixNano()
	c.p.lc.pushes.Add(1)
	storeMax(&c.p.lc.lastRecvNs, now)
	conv, _ := jsonStr(m, "conv")
	seq, _ := jsonUint(m, "seq")
	if !c.p.noAck {
		c.queueAck(conv, seq, now)
	}
	if bytes.Contains(m, sysKind) {
		c.onSystem(conv, seq, m)
	}
	if c.p.soak.Load() && c.soakHold(conv, seq, 'p') {
		c.p.lc.dups.Add(1)
		return
	}
	if g := c.p.group.Load(); g != 0 && c.isGroupConv(conv, g) {
		if c.hold(seq) {
			c.p.lc.dups.Add(1)
			return // a resend: its latency was recorded on first arrival
		}
		// A first transmission (the first time this seq is seen) after a
		// higher one: out of order (PROTOCOL §7 forbids it).
		if seq < c.maxFirst {
			c.p.lc.outOfOrder.Add(1)
		}
		c.maxFirst = max(c.maxFirst, seq)
	}
	if body, ok := jsonStr(m, "body"); ok && len(body) > 1 && body[0] == 't' {
		if ns, n := parseUintBytes(body[1:]); n > 0 {
			c.p.e2e.record(c.spec.Idx, (now-int64(ns))/1000)
		}
	}
}

// queueAck records a push to ack: at once in --ack-mode now, else
// coalesced until half of welcome's max_inflight pushes are unacked or
// welcome's ack_delay_ms has passed since the oldest (see ackTicker).
// Reader goroutine.
func (c *client) queueAck(conv []byte, seq uint64, now int64) {
	c.ackMu.Lock()
	defer c.ackMu.Unlock()
	found := false
	for i := 0; !found && i < len(c.acks); i++ {
		if bytes.Equal(c.acks[i].conv, conv) {
			c.acks[i].seq = max(c.acks[i].seq, seq)
			found = true
		}
	}
	if !found {
		c.acks = append(c.acks, pendingAck{conv: append([]byte(nil), conv...), seq: seq})
	}
	c.ackN++
	if c.ackN == 1 {
		c.ackSince.Store(now)
	}
	if c.p.ackNow || int64(c.ackN) >= c.ackBatch.Load() || c.ackDelay.Load() <= 0 {
		if wc := c.conn(); wc != nil {
			c.flushAcksLocked(wc)
		}
	}
}

// ackTicker flushes the acks of every client whose oldest unacked push has
// waited welcome's ack_delay_ms (coalescing mode only).
func (p *pool) ackTicker() {
	p.tick(2*time.Millisecond, func() {
		now := time.Now().UnixNano()
		for _, c := range p.clients {
			since := c.ackSince.Load()
			if since == 0 || now-since < c.ackDelay.Load() {
				continue
			}
			c.ackMu.Lock()
			if c.ackSince.Load() != 0 {
				if wc := c.conn(); wc != nil {
					c.flushAcksLocked(wc)
				}
			}
			c.ackMu.Unlock()
		}
	})
}

var sysKind = []byte(`"kind":"system"`)

// onSystem handles the system message of a group change (PROTOCOL §13).
// The one that let this client into a group — its own "joined", or an
// "added" that names it — is the first message of that group it can be
// pushed: the seqs below it were never its to receive by push, so they
// count as held (they stay readable through history). Outside a soak the
// message itself is recorded for a later soak too (its members join
// before it starts). Reader goroutine.
func (c *client) onSystem(conv []byte, seq uint64, m []byte) {
	event, from, names := sysFields(m, c.spec.UID)
	in := seq > 1 && (string(event) == "joined" && from == c.spec.UID || string(event) == "added" && names)
	if g := c.p.group.Load(); in && g != 0 && c.isGroupConv(conv, g) {
		c.mu.Lock()
		c.grp.fillTo(seq - 1)
		c.mu.Unlock()
	}
	if soak := c.p.soak.Load(); in || !soak {
		k := &c.sk
		k.mu.Lock()
		s := k.set(conv)
		if in {
			s.fillTo(seq - 1)
		}
		if !soak {
			s.add(seq) // in a soak, onMsg's soakHold does
		}
		k.mu.Unlock()
	}
}

// sysFields reads a system msg frame without decoding it: the event, the
// sender, and whether the body's members list names uid. The body is
// JSON in a JSON string (its quotes escaped, §13's key order); a 10,000-
// member set-up pushes 55,000 of them with up to 1,000 members each, which
// encoding/json took seconds of the clients' CPU to decode (late acks,
// then resends, during the set-up).
func sysFields(m []byte, uid uint64) (event []byte, from uint64, names bool) {
	from, _ = jsonUint(m, "from")
	const ek, mk = `\"event\":\"`, `\"members\":[`
	if i := bytes.Index(m, []byte(ek)); i >= 0 {
		rest := m[i+len(ek):]
		if j := bytes.Index(rest, []byte(`\"`)); j >= 0 {
			event = rest[:j]
		}
	}
	i := bytes.Index(m, []byte(mk))
	if i < 0 {
		return event, from, false
	}
	for rest := m[i+len(mk):]; len(rest) > 0 && rest[0] != ']'; {
		v, n := parseUintBytes(rest)
		if n == 0 {
			break
		}
		if v == uid {
			return event, from, true
		}
		rest = rest[n:]
		if len(rest) > 0 && rest[0] == ',' {
			rest = rest[1:]
		}
	}
	return event, from, false
}

func (c *client) isGroupConv(conv []byte, g uint64) bool {
	if len(conv) < 3 || conv[0] != 'g' || conv[1] != ':' {
		return false
	}
	v, n := parseUintBytes(conv[2:])
	return n == len(conv)-2 && v == g
}

// seqSet is the set of seqs of one conversation a client holds: what its
// application would keep after dropping duplicates by (conv, seq).
type seqSet struct {
	name   string // the conversation (soak)
	bits   []uint64
	contig uint64 // it holds every seq 1..contig
}

// add marks seq held and reports whether it already was.
func (s *seqSet) add(seq uint64) bool {
	w := int(seq / 64)
	for len(s.bits) <= w {
		s.bits = append(s.bits, 0)
	}
	had := s.bits[w]&(1<<(seq%64)) != 0
	s.bits[w] |= 1 << (seq % 64)
	for {
		n := s.contig + 1
		if int(n/64) >= len(s.bits) || s.bits[n/64]&(1<<(n%64)) == 0 {
			break
		}
		s.contig = n
	}
	return had
}

// fillTo marks every seq in 1..n held.
func (s *seqSet) fillTo(n uint64) {
	for q := s.contig + 1; q <= n; q++ {
		w := int(q / 64)
		for len(s.bits) <= w {
			s.bits = append(s.bits, 0)
		}
		s.bits[w] |= 1 << (q % 64)
	}
	s.add(n) // advances contig (n ≥ 1 is held already)
}

// missing counts seqs in 1..f not held.
func (s *seqSet) missing(f uint64) int64 {
	var have int64
	for q := uint64(1); q <= f; q++ {
		if w := int(q / 64); w < len(s.bits) && s.bits[w]&(1<<(q%64)) != 0 {
			have++
		}
	}
	return int64(f) - have
}

// hold marks seq of the tracked group held and reports whether it already
// was.
func (c *client) hold(seq uint64) bool {
	c.mu.Lock()
	had := c.grp.add(seq)
	if k := c.grp.contig; k != c.contig.Load() {
		c.contig.Store(k)
		c.contigAt.Store(time.Now().UnixNano())
	}
	c.mu.Unlock()
	c.checkCaught()
	return had
}

// checkCaught counts the client as caught up once it holds 1..final, and
// records the time from losing its connection to holding everything.
func (c *client) checkCaught() {
	f := c.p.final.Load()
	if f == 0 || c.caught.Load() || c.contig.Load() < f || !c.caught.CompareAndSwap(false, true) {
		return
	}
	c.p.lc.caughtUp.Add(1)
	c.mu.Lock()
	lostAt := c.lostAt
	c.mu.Unlock()
	if lostAt > 0 {
		c.p.catch.record(c.spec.Idx, (max(c.contigAt.Load(), c.welcomeAt.Load())-lostAt)/1000)
	}
}

// missing counts seqs in 1..f the client does not hold.
func (c *client) missing(f uint64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.grp.missing(f)
}

// --- catch-up (PROTOCOL §9): convs, then history for the gap ---

func (c *client) requestConvs(wc *wsConn) {
	c.lastWrite.Store(time.Now().UnixNano())
	_ = wc.writeText([]byte(`{"type":"convs","rid":"cv"}`))
}

func (c *client) requestHistory(wc *wsConn, conv string, after uint64) {
	b := make([]byte, 0, 96)
	b = append(b, `{"type":"history","rid":"h","conv":"`...)
	b = append(b, conv...)
	b = append(b, `","after":`...)
	b = strconv.AppendUint(b, after, 10)
	b = append(b, `,"limit":200}`...)
	c.lastWrite.Store(time.Now().UnixNano())
	c.p.lc.history.Add(1)
	_ = wc.writeText(b)
}

func (c *client) onConvs(wc *wsConn, m []byte) {
	var r struct {
		Items []struct {
			Conv    string `json:"conv"`
			LastSeq uint64 `json:"last_seq"`
		} `json:"items"`
	}
	if json.Unmarshal(m, &r) != nil {
		return
	}
	soak := c.p.soak.Load()
	want := "g:" + strconv.FormatUint(c.p.group.Load(), 10)
	for _, it := range r.Items {
		if soak {
			c.sk.mu.Lock()
			c.sk.note('c', c.sk.set([]byte(it.Conv)).name, it.LastSeq)
			c.sk.mu.Unlock()
		}
		if held := c.held(it.Conv); (soak || it.Conv == want) && held < it.LastSeq {
			c.requestHistory(wc, it.Conv, held)
		}
	}
}

func (c *client) onHistory(wc *wsConn, m []byte) {
	var r struct {
		Conv     string `json:"conv"`
		Messages []struct {
			Seq uint64 `json:"seq"`
		} `json:"messages"`
		More bool `json:"more"`
	}
	if json.Unmarshal(m, &r) != nil {
		return
	}
	for _, x := range r.Messages {
		if c.p.soak.Load() {
			c.soakHold([]byte(r.Conv), x.Seq, 'h')
		} else {
			c.hold(x.Seq)
		}
	}
	if r.More && len(r.Messages) > 0 {
		c.requestHistory(wc, r.Conv, c.held(r.Conv))
	}
}

// request writes frame and waits for a group or error reply.
func (c *client) request(frame []byte, timeout time.Duration) ([]byte, error) {
	if err := c.write(frame); err != nil {
		return nil, err
	}
	select {
	case r := <-c.replies:
		if bytes.Equal(frameType(r), []byte("error")) {
			code, _ := jsonStr(r, "code")
			return r, errors.New("error " + string(code))
		}
		return r, nil
	case <-time.After(timeout):
		return nil, errors.New("request timed out")
	}
}

// heartbeats sends a ping on every client that wrote nothing for its
// heartbeat interval, until quit.
func (p *pool) heartbeats() {
	p.tick(500*time.Millisecond, func() {
		now := time.Now().UnixNano()
		for _, c := range p.clients {
			c.mu.Lock()
			wc, hb := c.c, c.hb
			c.mu.Unlock()
			if wc == nil || hb <= 0 || now-c.lastWrite.Load() < int64(hb) {
				continue
			}
			c.lastWrite.Store(now)
			if wc.writeText([]byte(`{"type":"ping"}`)) == nil {
				p.lc.pings.Add(1)
			}
		}
	})
}

// tick calls f every d until quit.
func (p *pool) tick(d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-t.C:
		}
		f()
	}
}

// connectAll connects the clients not connected yet among the leading
// fraction frac (0: all) with at most conc dials in flight and at most rate
// new connections per second (0: no limit).
func (p *pool) connectAll(conc int, rate float64, frac float64) {
	sem := make(chan struct{}, max(conc, 1))
	var wg sync.WaitGroup
	start := time.Now()
	n := len(p.clients)
	if frac > 0 && frac < 1 {
		n = int(float64(n)*frac + 0.5)
	}
	for i, c := range p.clients[:n] {
		if p.quitted.Load() {
			break
		}
		if c.conn() != nil {
			continue
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for try := 0; try < 3; try++ {
				if c.connect() == nil {
					return
				}
				time.Sleep(time.Duration(100*(try+1)) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
}

// joinAll makes every online client join group g (0: the group of its
// spec, if any).
func (p *pool) joinAll(g uint64, conc int) {
	sem := make(chan struct{}, max(conc, 1))
	var wg sync.WaitGroup
	for _, c := range p.clients {
		gid := g
		if gid == 0 {
			gid = c.spec.Group
		}
		if gid == 0 {
			continue
		}
		frame := []byte(`{"type":"group_join","rid":"j","group":` + strconv.FormatUint(gid, 10) + `}`)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for try := 0; try < 3; try++ {
				if _, err := c.request(frame, 30*time.Second); err == nil {
					p.lc.joined.Add(1)
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
}

// sendBody returns a body "t<unix ns>" padded with 'x' to size bytes.
func sendBody(dst []byte, size int) []byte {
	dst = append(dst, 't')
	dst = strconv.AppendInt(dst, time.Now().UnixNano(), 10)
	for len(dst) < size {
		dst = append(dst, 'x')
	}
	return dst
}

// appendSend appends a send frame to target (`"to":UID` or `"group":GID`)
// whose cmid is prefix, a per-client counter, "-" and the send time in
// unix ns (the sent latency is measured from it).
func (c *client) appendSend(buf []byte, prefix, target string) []byte {
	buf = append(buf, `{"type":"send","cmid":"`...)
	buf = append(buf, prefix...)
	buf = strconv.AppendUint(buf, c.nsend.Add(1), 10)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, time.Now().UnixNano(), 10)
	buf = append(buf, `",`...)
	buf = append(buf, target...)
	buf = append(buf, `,"body":"`...)
	buf = sendBody(buf, c.p.bodySize)
	return append(buf, `"}`...)
}

// sendPrefix is the start of this client's cmids, unique per run.
func (c *client) sendPrefix() string {
	return "b" + strconv.Itoa(c.spec.Idx) + "." + strconv.FormatInt(time.Now().UnixNano(), 36) + "."
}

// sendLoop sends to target (`"to":UID` or `"group":GID`) until end or
// until count sends (0: no bound), at rate msgs/s (0: as fast as the
// window of outstanding sends allows).
func (c *client) sendLoop(wg *sync.WaitGroup, target string, end time.Time, count int, rate float64, window int) {
	defer wg.Done()
	c.window = make(chan struct{}, max(window, 1))
	var interval time.Duration
	next := time.Now()
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
		if count == 0 {
			next = next.Add(time.Duration(rand.Int64N(int64(interval) + 1)))
		}
	}
	prefix := c.sendPrefix()
	buf := make([]byte, 0, 256+c.p.bodySize)
	for sent := 0; (count == 0 || sent < count) && time.Now().Before(end) && !c.p.quitted.Load(); sent++ {
		if rate > 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		select {
		case c.window <- struct{}{}:
		case <-time.After(time.Until(end)):
			return
		}
		buf = c.appendSend(buf[:0], prefix, target)
		if c.write(buf) != nil {
			return
		}
		c.p.lc.sends.Add(1)
	}
}

// waitDrained waits until every window is empty or the deadline passes.
func (p *pool) waitDrained(deadline time.Time) {
	for time.Now().Before(deadline) {
		busy := false
		for _, c := range p.clients {
			if c.window != nil && len(c.window) > 0 {
				busy = true
				break
			}
		}
		if !busy {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *pool) close() {
	if p.quitted.Swap(true) {
		return
	}
	close(p.quit)
	for _, c := range p.clients {
		if wc := c.conn(); wc != nil {
			_ = wc.writeControl(0x8, []byte{0x03, 0xE8})
			wc.close()
		}
	}
}
