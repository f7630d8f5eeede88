package server

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/magpie-im/magpie/storage"
	"github.com/magpie-im/magpie/wheel"
)

// Presence (PROTOCOL §16).
//
// # State
//
// A user's presence lives in the sessions shard of their uid (router.go),
// under the same lock as their connections, so it changes atomically with
// them. Only some users have a presUser: those somebody subscribes to,
// those in their grace period (last connection closed, not yet reported
// offline), and — in the shard's seen map, 16 bytes each — those whose
// last_seen changed since the last checkpoint. An online user nobody
// subscribes to costs nothing beyond the sessions index.
//
// Online is "has a connection" (the sessions index) or "in grace". The
// first connection of a user whose presUser reads offline is a change
// (reported); the last close arms the user's grace timer (wheel) at close
// + --presence-grace; a connection before it fires cancels it, so a
// reconnect does not flicker; when it fires (never early: re-checked
// against the wheel's precise clock) the user goes offline with last_seen
// = the close's time, and that is a change.
//
// # Fan-out: O(subscribers of the changed user)
//
// Each presUser holds its subscribing connections (the reverse index,
// pu.subs). A change queues the user once (pu.queued) for the presence
// notifier goroutine, which copies the subscribers and puts one entPresence
// entry per loop that holds any — marks, not states: each mark makes the
// user pending on one connection (connPres). The connection's presence
// timer (the wheel, its expiries batched per tick like the others) then
// sends one frame with the latest state of every pending user that differs
// from what this connection was last told, at least 1 s after its previous
// push (the reply to presence_sub does not count). Nothing walks the
// subscriptions of users that did not change.
//
// # last_seen without a write per connect or disconnect
//
// Changes are collected in the shards' seen maps: an offline transition
// records the close's time, an online one "online in this run". Every
// --presence-checkpoint the checkpointer writes them, in chunks, through
// the store's committer (batched with sends), plus the run's checkpoint
// time; loops and wheel goroutines never wait for it. A graceful shutdown
// writes everything pending and every user still online (or in grace) as
// offline at the shutdown's time (in grace: their close's time). After a
// crash, what changed since the last checkpoint is lost: users the run
// had recorded online read as last seen at its last checkpoint, users
// who went offline since it keep their previous last_seen
// (storage.LoadLastSeen).
//
// Loading a stored last_seen is a Pebble read: presence_sub hands the
// offline users whose value is not in memory to a worker, and the reply
// is built on the loop when it comes back.

// presUser is one user's presence. Every field is guarded by the lock of
// the user's sessions shard, except grace (safe from any goroutine) and
// uid (immutable).
type presUser struct {
	uid      uint64
	online   bool            // the state subscribers are told: true from the first connection until the grace expired
	graced   bool            // the last connection closed; the grace timer is armed
	queued   bool            // in the notifier's queue
	loaded   bool            // lastSeen holds the stored value (or a newer one)
	closedAt int64           // Unix ms of the last close (the last_seen once offline)
	closedNs int64           // wheel time of that close
	lastSeen int64           // Unix ms, while offline; 0: not known
	subs     map[*conn]int32 // subscribing connections → the index of uid in their connPres.subs (a hint: checked on the loop)
	grace    wheel.Timer
}

// seenRec is a last_seen change waiting for the checkpoint.
type seenRec struct {
	at     int64 // Unix ms of the close (offline)
	online bool  // came online in this run
}

// presence is the server-wide part: the notifier's queue, the
// checkpointer, and counters.
type presence struct {
	grace int64 // ns

	nmu   sync.Mutex
	nq    []*presUser
	nwake chan struct{} // cap 1
	stop  chan struct{}
	wg    sync.WaitGroup
	ckMu  sync.Mutex // one checkpoint at a time (storage.SaveLastSeen)

	users, subs                          atomic.Int64  // presUsers, subscriptions
	changes, marks, frames, replies      atomic.Uint64 // reported changes, marks delivered, push frames, replies
	loads, checkpoints, checkpointErrors atomic.Uint64
	written                              atomic.Uint64 // last_seen records written
}

// presenceMinGap is the least time between two presence pushes on one
// connection (PROTOCOL §16).
const presenceMinGap = int64(time.Second)

// checkpointChunk bounds the records of one SaveLastSeen call, so a large
// checkpoint does not hold the committer (and the sends behind it) long.
const checkpointChunk = 8192

// startPresence starts the notifier and the checkpointer. Run, once.
func (s *Server) startPresence() {
	p := &s.pres
	p.grace = int64(s.cfg.PresenceGrace)
	p.nwake = make(chan struct{}, 1)
	p.stop = make(chan struct{})
	p.wg.Add(2)
	go s.presenceNotifier()
	go s.presenceCheckpointer()
}

// stopPresence stops both goroutines and waits for them. Run's goroutine.
func (s *Server) stopPresence() {
	p := &s.pres
	if p.stop == nil {
		return
	}
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

// newPresUser returns the presence of uid (not yet in any map).
// REQUIRES: uid's sessions shard locked.
func (s *Server) newPresUser(uid uint64) *presUser {
	pu := &presUser{uid: uid, subs: make(map[*conn]int32)}
	pu.grace.Init(s.wheel, func() { s.graceFired(pu) })
	s.pres.users.Add(1)
	return pu
}

// dropLocked forgets pu when nothing needs it any more.
// REQUIRES: pu's sessions shard locked.
func (s *Server) dropLocked(sh *sessShard, pu *presUser) {
	if len(pu.subs) > 0 || pu.graced || sh.pres[pu.uid] != pu {
		return
	}
	delete(sh.pres, pu.uid)
	s.pres.users.Add(-1)
}

// presenceSync brings uid's presence in line with its connections: called
// after its first connection was added or its last removed (in whatever
// order concurrent loops get here: it reads the current truth).
// REQUIRES: an event loop (never waits).
func (s *Server) presenceSync(uid uint64) {
	sh := s.sess.shard(uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	pu := sh.pres[uid]
	if len(sh.m[uid]) > 0 {
		switch {
		case pu == nil:
			// Nobody subscribes and no grace runs: the user was offline
			// (or this repeats a sync). Only the checkpoint cares.
			sh.seen[uid] = seenRec{online: true}
		case pu.graced:
			pu.graced = false // back within the grace: no change
			pu.grace.Stop()
		case !pu.online:
			pu.online = true
			sh.seen[uid] = seenRec{online: true}
			s.changedLocked(pu)
		}
		if pu != nil {
			s.dropLocked(sh, pu) // kept only while subscribed to
		}
		return
	}
	if pu == nil {
		pu = s.newPresUser(uid)
		pu.online = true
		sh.pres[uid] = pu
	}
	if !pu.online || pu.graced {
		return
	}
	pu.graced = true
	pu.closedAt = time.Now().UnixMilli()
	pu.closedNs = s.wheel.Precise()
	if s.pres.grace == 0 {
		s.offlineLocked(sh, pu)
		return
	}
	pu.grace.Set(pu.closedNs + s.pres.grace)
}

// graceFired runs on a wheel goroutine when pu's grace timer expires.
// Never waits.
func (s *Server) graceFired(pu *presUser) {
	sh := s.sess.shard(pu.uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.pres[pu.uid] != pu || !pu.graced {
		return
	}
	if len(sh.m[pu.uid]) > 0 {
		pu.graced = false // a connection came back (its sync is on its way)
		s.dropLocked(sh, pu)
		return
	}
	if due := pu.closedNs + s.pres.grace; s.wheel.Precise() < due {
		pu.grace.Set(due) // never early
		return
	}
	s.offlineLocked(sh, pu)
}

// offlineLocked reports pu offline as of its last close.
// REQUIRES: pu's sessions shard locked.
func (s *Server) offlineLocked(sh *sessShard, pu *presUser) {
	pu.graced = false
	pu.grace.Stop()
	pu.online = false
	pu.lastSeen, pu.loaded = pu.closedAt, true
	sh.seen[pu.uid] = seenRec{at: pu.closedAt}
	s.changedLocked(pu)
	s.dropLocked(sh, pu)
}

// changedLocked queues pu for the notifier when anyone subscribes.
// REQUIRES: pu's sessions shard locked.
func (s *Server) changedLocked(pu *presUser) {
	s.pres.changes.Add(1)
	if pu.queued || len(pu.subs) == 0 {
		return
	}
	pu.queued = true
	p := &s.pres
	p.nmu.Lock()
	p.nq = append(p.nq, pu)
	p.nmu.Unlock()
	select {
	case p.nwake <- struct{}{}:
	default:
	}
}

// presenceNotifier is the notifier goroutine: for each changed user it
// copies the subscribers and puts one entPresence entry per loop (waiting
// while an inbox is full: it is its own goroutine). The work per change is
// O(its subscribers).
func (s *Server) presenceNotifier() {
	p := &s.pres
	defer p.wg.Done()
	var q []*presUser
	byLoop := map[*loop]*entry{}
	for {
		select {
		case <-p.nwake:
		case <-p.stop:
			return
		}
		p.nmu.Lock()
		q, p.nq = p.nq, q[:0]
		p.nmu.Unlock()
		for _, pu := range q {
			sh := s.sess.shard(pu.uid)
			sh.mu.Lock()
			pu.queued = false
			for c, idx := range pu.subs {
				e := byLoop[c.lp]
				if e == nil {
					e = &entry{kind: entPresence, items: takeItems()}
					byLoop[c.lp] = e
				}
				e.uids = append(e.uids, pu.uid)
				e.items = append(e.items, item{c: c, arg: idx})
			}
			sh.mu.Unlock()
		}
		clear(q)
		for lp, e := range byLoop {
			p.marks.Add(uint64(len(e.items)))
			lp.put(*e, true)
			delete(byLoop, lp)
		}
	}
}

// connPres is a connection's presence subscription. REQUIRES: the owning
// event loop for every field (the timer is safe from any goroutine).
type connPres struct {
	subs     []presSub // ascending by uid
	pending  int       // subs with pending set
	waiting  int       // presence_sub replies not sent yet (a worker loads last_seen)
	armed    bool      // timer set
	lastPush int64     // wheel time of the last push; 0: none yet
	timer    wheel.Timer
}

// presSub is one subscribed user and what this connection was last told.
type presSub struct {
	uid     uint64
	told    int64 // last_seen told
	online  bool  // online told
	known   bool  // told anything
	pending bool  // changed since; a push is due
}

// find returns the index of uid in subs, or -1.
func (p *connPres) find(uid uint64) int {
	i, ok := slices.BinarySearchFunc(p.subs, uid, func(x presSub, u uint64) int {
		switch {
		case x.uid < u:
			return -1
		case x.uid > u:
			return 1
		}
		return 0
	})
	if !ok {
		return -1
	}
	return i
}

// runPresence runs an entPresence or entCall entry. REQUIRES: owning event loop.
func (lp *loop) runPresence(e *entry, budget int) int {
	n := 0
	for ; e.next < len(e.items) && n < budget; e.next++ {
		it := e.items[e.next]
		n++
		switch {
		case it.c.state != stOpen:
			// closed since: its presence state is gone
		case e.kind == entCall:
			e.call(it.c)
		default:
			it.c.presMark(e.uids[e.next], it.arg)
		}
	}
	return max(n, 1)
}

// presMark makes uid pending on c and schedules a push; idx is where
// uid was in c's list when the mark was made (checked: the list may have
// been replaced since). REQUIRES: owning event loop.
func (c *conn) presMark(uid uint64, idx int32) {
	p := c.pres
	if c.state != stOpen || p == nil {
		return
	}
	i := int(idx)
	if i < 0 || i >= len(p.subs) || p.subs[i].uid != uid {
		i = p.find(uid)
	}
	if i < 0 || p.subs[i].pending {
		return
	}
	p.subs[i].pending = true
	p.pending++
	c.presSchedule()
}

// presSchedule arms the push timer for the earliest allowed time when
// something is pending and no reply is outstanding. REQUIRES: owning event loop.
func (c *conn) presSchedule() {
	p := c.pres
	if p.armed || p.waiting > 0 || p.pending == 0 {
		return
	}
	at := c.lp.srv.wheel.Precise()
	if p.lastPush != 0 {
		at = max(at, p.lastPush+presenceMinGap)
	}
	p.armed = true
	p.timer.Set(at)
}

// onPresFire runs on a wheel goroutine: it hands the expiry to the loop.
func (c *conn) onPresFire() { c.lp.putExpiry(c, timerPresence) }

// onPresenceTimer sends the pending changes (the latest state of each that
// differs from what c was told) in one frame. REQUIRES: owning event loop.
func (c *conn) onPresenceTimer() {
	p := c.pres
	if p == nil || c.state != stOpen {
		return
	}
	p.armed = false
	if p.waiting > 0 || p.pending == 0 {
		return
	}
	s := c.lp.srv
	now := s.wheel.Precise()
	if p.lastPush != 0 && now < p.lastPush+presenceMinGap {
		p.armed = true
		p.timer.Set(p.lastPush + presenceMinGap) // never early
		return
	}
	var items []presenceItem
	for i := range p.subs {
		sub := &p.subs[i]
		if !sub.pending {
			continue
		}
		sub.pending = false
		it := s.presState(sub.uid)
		if sub.known && sub.online == it.online && sub.told == it.lastSeen {
			continue // changed and changed back
		}
		sub.known, sub.online, sub.told = true, it.online, it.lastSeen
		items = append(items, it)
	}
	p.pending = 0
	if len(items) == 0 {
		return
	}
	p.lastPush = now
	s.pres.frames.Add(1)
	c.reply(appendPresence(c.lp.fb.start(), nil, items))
}

// presState returns uid's current state (last_seen as far as known).
// Any goroutine.
func (s *Server) presState(uid uint64) presenceItem {
	sh := s.sess.shard(uid)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	it := presenceItem{uid: uid}
	if pu := sh.pres[uid]; pu != nil {
		it.online = pu.online
		if !pu.online {
			it.lastSeen = pu.lastSeen
		}
		return it
	}
	it.online = len(sh.m[uid]) > 0
	if !it.online {
		it.lastSeen = sh.pendingSeen(uid)
	}
	return it
}

// pendingSeen returns uid's last_seen from a change not yet (or just
// being) checkpointed, 0 when none. REQUIRES: sh locked (read is enough).
func (sh *sessShard) pendingSeen(uid uint64) int64 {
	if r, ok := sh.seen[uid]; ok && !r.online {
		return r.at
	}
	if r, ok := sh.flushing[uid]; ok && !r.online {
		return r.at
	}
	return 0
}

// presenceSub replaces c's subscription list (PROTOCOL §16) and answers
// with the state of each user, in request order without duplicates.
// REQUIRES: owning event loop.
func (c *conn) presenceSub(r *request, rid []byte) {
	if r.has&hasUIDs == 0 {
		c.errorReply(rid, "", storage.BadRequest, "uids is required")
		return
	}
	s := c.lp.srv
	order := dedupe(slices.Clone(r.uids)) // r is the loop's scratch
	want := slices.Clone(order)
	slices.Sort(want)
	p := c.pres
	if p == nil {
		p = &connPres{}
		p.timer.Init(s.wheel, c.onPresFire)
		c.pres = p
	}
	// Unsubscribe what is dropped, subscribe what is new (both lists are
	// ascending); every user of the new list starts untold.
	subs := make([]presSub, 0, len(want))
	i := 0
	for k, u := range want {
		for i < len(p.subs) && p.subs[i].uid < u {
			s.presUnsub(c, p.subs[i].uid)
			i++
		}
		if i < len(p.subs) && p.subs[i].uid == u {
			if i != k {
				s.presSubscribe(c, u, int32(k)) // kept, at a new index
			}
			i++
		} else {
			s.presSubscribe(c, u, int32(k))
		}
		subs = append(subs, presSub{uid: u})
	}
	for ; i < len(p.subs); i++ {
		s.presUnsub(c, p.subs[i].uid)
	}
	p.subs, p.pending = subs, 0
	var need []uint64
	for _, u := range order {
		if s.presNeedsLoad(u) {
			need = append(need, u)
		}
	}
	if len(need) == 0 {
		c.presReply(rid, order, nil, nil)
		return
	}
	p.waiting++
	ridS := string(rid)
	ok := s.offloadOK(c, ridS, func() {
		s.pres.loads.Add(1)
		vals, err := s.store.LoadLastSeen(s.runID, need)
		if err == nil {
			s.presLoaded(need, vals)
		}
		c.lp.put(entry{kind: entCall, items: []item{{c: c}}, call: func(c *conn) {
			c.pres.waiting--
			if err != nil {
				c.errorReply([]byte(ridS), "", storage.Internal, "internal error")
				c.presSchedule()
				return
			}
			c.presReply([]byte(ridS), order, need, vals)
		}}, true)
	})
	if !ok {
		p.waiting-- // answered rate_limited; the new list stays (a retry is safe)
		c.presSchedule()
	}
}

// dedupe removes later repeats from l in place, keeping the order.
func dedupe(l []uint64) []uint64 {
	if len(l) < 2 {
		return l
	}
	seen := make(map[uint64]struct{}, len(l))
	out := l[:0]
	for _, u := range l {
		if _, ok := seen[u]; !ok {
			seen[u] = struct{}{}
			out = append(out, u)
		}
	}
	return out
}

// presReply answers presence_sub with the current state of each uid of
// order (loaded: last_seen values a worker read, for users this
// connection no longer subscribes to), records it as told, and schedules
// pending pushes. REQUIRES: owning event loop.
func (c *conn) presReply(rid []byte, order, loaded []uint64, vals []int64) {
	s := c.lp.srv
	p := c.pres
	items := make([]presenceItem, len(order))
	for k, u := range order {
		it := s.presState(u)
		if !it.online && it.lastSeen == 0 {
			if j := slices.Index(loaded, u); j >= 0 {
				it.lastSeen = vals[j]
			}
		}
		items[k] = it
		if i := p.find(u); i >= 0 {
			sub := &p.subs[i]
			sub.known, sub.online, sub.told = true, it.online, it.lastSeen
		}
	}
	s.pres.replies.Add(1)
	c.reply(appendPresence(c.lp.fb.start(), rid, items))
	c.presSchedule()
}

// presSubscribe adds c to uid's subscribers (or updates idx, uid's index
// in c's list, when c subscribes already). REQUIRES: c's event loop.
func (s *Server) presSubscribe(c *conn, uid uint64, idx int32) {
	sh := s.sess.shard(uid)
	sh.mu.Lock()
	pu := sh.pres[uid]
	if pu == nil {
		pu = s.newPresUser(uid)
		pu.online = len(sh.m[uid]) > 0
		if !pu.online {
			if at := sh.pendingSeen(uid); at > 0 {
				pu.lastSeen, pu.loaded = at, true // newer than anything stored
			}
		}
		sh.pres[uid] = pu
	}
	n := len(pu.subs)
	pu.subs[c] = idx
	added := len(pu.subs) - n // one map operation, not a lookup and an insert
	sh.mu.Unlock()
	s.pres.subs.Add(int64(added))
}

// presUnsub removes c from uid's subscribers. REQUIRES: c's event loop.
func (s *Server) presUnsub(c *conn, uid uint64) {
	sh := s.sess.shard(uid)
	sh.mu.Lock()
	if pu := sh.pres[uid]; pu != nil {
		n := len(pu.subs)
		delete(pu.subs, c)
		s.pres.subs.Add(int64(len(pu.subs) - n))
		s.dropLocked(sh, pu)
	}
	sh.mu.Unlock()
}

// presNeedsLoad reports whether uid is offline with a last_seen that is
// only in the store. Any goroutine.
func (s *Server) presNeedsLoad(uid uint64) bool {
	sh := s.sess.shard(uid)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	pu := sh.pres[uid]
	return pu != nil && !pu.online && !pu.loaded
}

// presLoaded records stored last_seen values (a worker read them).
// Values only grow: a newer one set meanwhile wins. Any goroutine.
func (s *Server) presLoaded(uids []uint64, vals []int64) {
	for i, uid := range uids {
		sh := s.sess.shard(uid)
		sh.mu.Lock()
		if pu := sh.pres[uid]; pu != nil && !pu.loaded {
			pu.lastSeen, pu.loaded = max(pu.lastSeen, vals[i], sh.pendingSeen(uid)), true
		}
		sh.mu.Unlock()
	}
}

// presClose drops a closing connection's subscriptions.
// REQUIRES: owning event loop (OnClose).
func (c *conn) presClose() {
	p := c.pres
	if p == nil {
		return
	}
	p.timer.Stop()
	s := c.lp.srv
	for _, sub := range p.subs {
		s.presUnsub(c, sub.uid)
	}
	c.pres = nil
}

// presenceCheckpointer writes the last_seen changes every
// --presence-checkpoint. Its own goroutine.
func (s *Server) presenceCheckpointer() {
	p := &s.pres
	defer p.wg.Done()
	t := time.NewTicker(s.cfg.PresenceCheckpoint)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := s.checkpoint(false); err != nil {
				s.log.Warn("presence checkpoint", "err", err)
			}
		case <-p.stop:
			return
		}
	}
}

// checkpoint writes the pending last_seen changes (final: also every user
// online or in grace, as offline now or at their close) through the
// store. On failure they stay pending for the next one.
// Any goroutine but a loop (it waits for the committer).
func (s *Server) checkpoint(final bool) error {
	p := &s.pres
	p.ckMu.Lock()
	defer p.ckMu.Unlock()
	now := time.Now().UnixMilli()
	var items []storage.LastSeen
	for i := range s.sess.shards {
		sh := &s.sess.shards[i]
		sh.mu.Lock()
		for uid, r := range sh.seen {
			sh.flushing[uid] = r // a newer change replaces an unwritten one
		}
		clear(sh.seen)
		if final {
			for uid, pu := range sh.pres {
				if pu.graced {
					sh.flushing[uid] = seenRec{at: pu.closedAt}
				}
			}
			for uid := range sh.m {
				sh.flushing[uid] = seenRec{at: now}
			}
		}
		for uid, r := range sh.flushing {
			if final && r.online {
				r = seenRec{at: now} // recorded online, now gone: the shutdown's time
			}
			items = append(items, storage.LastSeen{UID: uid, At: r.at, Online: r.online})
		}
		sh.mu.Unlock()
	}
	var err error
	for len(items) > 0 || err == nil {
		n := min(len(items), checkpointChunk)
		last := n == len(items)
		err = s.store.SaveLastSeen(s.runID, now, items[:n], final && last)
		if err != nil {
			break
		}
		p.written.Add(uint64(n))
		items = items[n:]
		if last {
			break
		}
	}
	for i := range s.sess.shards {
		sh := &s.sess.shards[i]
		sh.mu.Lock()
		if err == nil {
			clear(sh.flushing)
		}
		sh.mu.Unlock()
	}
	if err != nil {
		p.checkpointErrors.Add(1)
		return err
	}
	p.checkpoints.Add(1)
	return nil
}

// registerPresenceMetrics publishes the counters of presence, typing and
// receipts. Run, once.
func (s *Server) registerPresenceMetrics() {
	p, t, r := &s.pres, &s.typ, &s.rcpt
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	s.m.reg.MustRegister(
		gauge("magpie_presence_users", "Users with presence state in memory (subscribed to, or in their grace period).", func() float64 { return float64(p.users.Load()) }),
		gauge("magpie_presence_subscriptions", "Presence subscriptions (connection, user) held.", func() float64 { return float64(p.subs.Load()) }),
		gauge("magpie_presence_lastseen_pending", "last_seen changes waiting for the next checkpoint.", func() float64 {
			n := 0
			for i := range s.sess.shards {
				sh := &s.sess.shards[i]
				sh.mu.RLock()
				n += len(sh.seen) + len(sh.flushing)
				sh.mu.RUnlock()
			}
			return float64(n)
		}),
		counter("magpie_presence_changes_total", "Presence changes (a user came online, or went offline after the grace).", &p.changes),
		counter("magpie_presence_marks_total", "Changes marked pending on subscribed connections (the fan-out work: one per subscriber of a changed user).", &p.marks),
		counter("magpie_presence_frames_total", "Presence pushes sent (at most one per connection per second).", &p.frames),
		counter("magpie_presence_replies_total", "presence_sub replies sent.", &p.replies),
		counter("magpie_presence_loads_total", "presence_sub requests that read stored last_seen values on a worker.", &p.loads),
		counter("magpie_presence_checkpoints_total", "last_seen checkpoints written.", &p.checkpoints),
		counter("magpie_presence_checkpoint_errors_total", "last_seen checkpoints that failed (retried at the next).", &p.checkpointErrors),
		counter("magpie_presence_lastseen_written_total", "last_seen records written by checkpoints.", &p.written),
		gauge("magpie_typing_throttle_entries", "(uid, conv) pairs the typing throttle holds (typings forwarded in the last two seconds at most).", func() float64 { return float64(t.size(s.wheel.Precise())) }),
		counter("magpie_typing_forwarded_total", "typing frames forwarded (once per typist and conversation, to every connection of the others).", &t.forwarded),
		counter("magpie_typing_throttled_total", "typing frames dropped by the 1 s throttle.", &t.throttled),
		counter("magpie_typing_dropped_total", "Forwarded typings left out of a loop whose inbox was full.", &t.dropped),
		counter("magpie_typing_checks_offloaded_total", "typing membership checks that needed a store read (run on a worker).", &t.checksOffloaded),
		counter("magpie_receipt_reads_total", "Reads that moved a read mark (each may send receipts).", &r.reads),
		counter("magpie_receipt_fanouts_total", "Receipts sent to the other members of a conversation.", &r.frames),
	)
}
