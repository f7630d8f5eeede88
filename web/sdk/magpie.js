// Magpie JS SDK: the browser (and Node) client of the Magpie wire protocol,
// versions 1 and 2 (docs/PROTOCOL.md). It has the same guarantees as the Go
// SDK:
//
//   - heartbeat: {"type":"ping"} after heartbeat_ms without sending anything
//     (browsers cannot send WebSocket ping frames);
//   - dead-peer detection: nothing received for heartbeat_ms + heartbeat_ms/2
//     after a ping closes the socket and reconnects;
//   - reconnect with exponential backoff and full jitter (first try within
//     1 s, doubling, capped at 30 s), none after 4001 or 4004, the cap after
//     4029;
//   - every send stays in an outbox until its "sent" arrives and is re-sent
//     with the same cmid after each welcome, so nothing is lost or doubled;
//   - cumulative, coalesced acks; dedup by (conv, seq); gap fill through
//     history; catch-up with convs + history after every welcome;
//   - version 2 (§13–§16): group owners, add/remove/rename, system messages
//     decoded into group events, read receipts, throttled typing with a 6 s
//     indicator, presence subscriptions renewed after every welcome. A
//     version 1 server is accepted: it simply never sends those frames.
//
// Nothing here touches the DOM. WebSocket, fetch, timers, the clock and the
// random source are injectable, so the logic runs under `node --test`.

/** Close codes that end the session for good (PROTOCOL.md §9, §11). */
export const CLOSE_UNAUTHORIZED = 4001;
export const CLOSE_REPLACED = 4004;
export const CLOSE_RATE = 4029;

/** TYPING_EXPIRY_MS: a typing indicator lasts this long after the last typing frame (PROTOCOL.md §15). */
export const TYPING_EXPIRY_MS = 6000;
/** MAX_PRESENCE_SUB: the longest presence subscription (PROTOCOL.md §16). */
export const MAX_PRESENCE_SUB = 1000;
/** Bound of the typing state: typists beyond it are ignored until others expire. */
const MAX_TYPISTS = 4096;

/**
 * isSystem reports whether a message has the shape of a server-made system
 * message (kind "system", cmid "sys:…"). Only a version 2 server guarantees
 * that no client sent it; MagpieClient decodes events only there.
 */
export function isSystem(m) {
  return !!m && m.kind === "system" && typeof m.cmid === "string" && m.cmid.startsWith("sys:");
}

/**
 * parseGroupEvent decodes the body of a group system message (PROTOCOL.md
 * §13) into its object: {event:"created", name, public, count} |
 * {event:"added", members} | {event:"joined"} | {event:"left"[, owner]} |
 * {event:"removed", members} | {event:"renamed", name}, or an event this SDK
 * does not know, passed through as it is. null for any other message.
 */
export function parseGroupEvent(m) {
  if (!isSystem(m) || typeof m.body !== "string") return null;
  const p = parseConv(m.conv);
  if (!p || p.kind !== "g") return null;
  let ev;
  try {
    ev = JSON.parse(m.body);
  } catch {
    return null;
  }
  if (!ev || typeof ev !== "object" || Array.isArray(ev) || typeof ev.event !== "string" || !ev.event) return null;
  return ev;
}

/**
 * backoffDelay returns the wait before reconnect attempt number `attempt`
 * (0 for the first retry): a uniformly random delay in [0, min(cap, base·2^attempt))
 * ("full jitter"), so a restarted server is not hit by every client at once.
 * With the defaults the first retry comes within 1 s and the window doubles
 * up to 30 s.
 */
export function backoffDelay(attempt, { base = 1000, cap = 30000, random = Math.random } = {}) {
  const window = Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 32));
  return Math.floor(random() * window);
}

/** directConv returns the conversation id of the direct conversation of two uids. */
export function directConv(a, b) {
  return a < b ? `d:${a}:${b}` : `d:${b}:${a}`;
}

/** groupConv returns the conversation id of group gid. */
export function groupConv(gid) {
  return `g:${gid}`;
}

/**
 * parseConv splits a conversation id: {kind:"d", a, b} or {kind:"g", group},
 * or null when it is malformed.
 */
export function parseConv(conv) {
  let m = /^d:([1-9][0-9]*):([1-9][0-9]*)$/.exec(conv);
  if (m) return { kind: "d", a: Number(m[1]), b: Number(m[2]) };
  m = /^g:([1-9][0-9]*)$/.exec(conv);
  if (m) return { kind: "g", group: Number(m[1]) };
  return null;
}

/** peerOf returns the other uid of a direct conversation, or 0. */
export function peerOf(conv, uid) {
  const p = parseConv(conv);
  if (!p || p.kind !== "d") return 0;
  return p.a === uid ? p.b : p.a;
}

/**
 * SeqTracker remembers, per conversation, which seqs the client holds, so it
 * can drop duplicates and notice gaps (PROTOCOL.md §5, §7).
 *
 * For each conv it keeps `held`, the highest seq such that every seq up to it
 * is known (or deliberately skipped: the baseline), the set of seqs received
 * above held, and `top`, the highest seq known to exist. A gap exists while
 * top > held.
 */
export class SeqTracker {
  constructor() {
    this._c = new Map();
  }

  /** has reports whether the conv has a baseline. */
  has(conv) {
    return this._c.has(conv);
  }

  /** held returns the contiguous high-water mark of conv (0 when unknown). */
  held(conv) {
    const s = this._c.get(conv);
    return s ? s.held : 0;
  }

  /** top returns the highest seq known to exist in conv (0 when unknown). */
  top(conv) {
    const s = this._c.get(conv);
    return s ? s.top : 0;
  }

  /**
   * baseline starts tracking conv at seq: everything up to seq counts as
   * held (the application loads older pages on demand). No-op when the conv
   * is already tracked.
   */
  baseline(conv, seq) {
    if (!this._c.has(conv)) this._c.set(conv, { held: seq, ahead: new Set(), top: seq });
  }

  /** announce records that conv has messages up to lastSeq (from convs). */
  announce(conv, lastSeq) {
    const s = this._c.get(conv);
    if (!s) {
      this.baseline(conv, lastSeq);
      return;
    }
    if (lastSeq > s.top) s.top = lastSeq;
  }

  /**
   * accept records (conv, seq) and returns true when it is new, false for a
   * duplicate. The first seq of an untracked conv sets the baseline just
   * below it.
   */
  accept(conv, seq) {
    let s = this._c.get(conv);
    if (!s) {
      s = { held: seq - 1, ahead: new Set(), top: seq - 1 };
      this._c.set(conv, s);
    }
    if (seq <= s.held || s.ahead.has(seq)) return false;
    if (seq === s.held + 1) {
      s.held = seq;
      while (s.ahead.delete(s.held + 1)) s.held++;
    } else {
      s.ahead.add(seq);
    }
    if (seq > s.top) s.top = seq;
    return true;
  }

  /** gap returns {after, through} when seqs after..through are missing, else null. */
  gap(conv) {
    const s = this._c.get(conv);
    if (!s || s.top <= s.held) return null;
    return { after: s.held, through: s.top };
  }

  /** convs lists the tracked conversations. */
  convs() {
    return [...this._c.keys()];
  }
}

/** APIError is a failed HTTP API call: status, and the server's error code. */
export class APIError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.name = "APIError";
    this.status = status;
    this.code = code || "";
  }
}

/**
 * MagpieAPI calls the HTTP API (PROTOCOL.md §2). `base` is the origin of the
 * API ("" for the page's own origin).
 */
export class MagpieAPI {
  constructor({ base = "", fetch: fetchFn } = {}) {
    this.base = base;
    this._fetch = fetchFn || ((...a) => globalThis.fetch(...a));
  }

  async _call(method, path, { body, token } = {}) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers["Authorization"] = `Bearer ${token}`;
    let res;
    try {
      res = await this._fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new APIError(0, "network", "Cannot reach the server");
    }
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      throw new APIError(res.status, data && data.error, data && data.message);
    }
    return data;
  }

  /** register creates an account: {uid}. */
  register(username, password) {
    return this._call("POST", "/api/register", { body: { username, password } });
  }

  /** login returns {uid, token, expires_at, ws_url}. */
  login(username, password) {
    return this._call("POST", "/api/login", { body: { username, password } });
  }

  /** users lists users ordered by uid; q is a username prefix, after a uid cursor. */
  users(token, { q = "", limit = 100, after = 0 } = {}) {
    const p = new URLSearchParams();
    if (q) p.set("q", q);
    p.set("limit", String(limit));
    if (after) p.set("after", String(after));
    return this._call("GET", `/api/users?${p}`, { token });
  }
}

/** randomId returns 16 random bytes as hex (works outside secure contexts too). */
export function randomId() {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

const defaultTimers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (id) => globalThis.clearTimeout(id),
  now: () => Date.now(),
};

/** RequestError is an error frame answering a request or a send. */
export class RequestError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "RequestError";
    this.code = code;
  }
}

/**
 * MagpieClient holds one WebSocket session and keeps it alive.
 *
 * Options:
 *   url          the ws_url from login (required)
 *   token        the login token (required)
 *   uid          the user's uid when known before the welcome (optional)
 *   device       a device id; a newer connection with the same id replaces
 *                this one (4004). Default: none.
 *   WebSocket    constructor (default globalThis.WebSocket)
 *   timers       {setTimeout, clearTimeout, now} (default: the globals, Date.now)
 *   random       () => [0,1) for jitter (default Math.random)
 *   newId        () => string for cmids (default randomId)
 *   backoffBase  first backoff window in ms; the default value is 1000
 *   backoffCap   backoff cap in ms (also the wait after 4029); the default value is 30000
 *   ackDelay     ms to coalesce acks; the default value is the server's
 *                recommendation (welcome's ack_delay_ms), else 50. Acks go
 *                out at once when half of welcome's max_inflight pushes
 *                are unacked on the connection.
 *   connectTimeout ms from dial to welcome before giving up the attempt;
 *                the default value is 15000
 *   retryDelay   ms before re-sending a send that got rate_limited/internal;
 *                the default value is 1000
 *   typingInterval ms between two typing frames of one conversation (see
 *                typing()); the default value is 2000
 *
 * Events (client.on(name, fn)): "state" {state, code}, "welcome" frame,
 * "message" {message, source} once per (conv, seq) with source "push",
 * "sent" or "history"; "convs" (the conversation list or an unread count
 * changed); "outbox" (a send was queued or settled); "read" frame;
 * "sendfailed" {cmid, conv, code, message};
 * "unauthorized" (4001: log in again); "replaced" (4004).
 * Version 2: "groupevent" {message, event} right after the "message" of a
 * system message (message.event is the same object); "receipt" {conv, uid,
 * seq}; "typing" {conv, uid, typing} when an indicator starts or ends;
 * "presence" {items} for every presence reply and push.
 *
 * States: "idle" (not started), "connecting" (first attempt), "online"
 * (welcome received), "reconnecting" (lost; waiting or dialing again),
 * "offline" (stopped, unauthorized or replaced; no automatic reconnect).
 */
export class MagpieClient {
  constructor(opts) {
    if (!opts || !opts.url) throw new Error("MagpieClient: url is required");
    this.url = opts.url;
    this.token = opts.token || "";
    this.device = opts.device || "";
    this.uid = opts.uid || 0;
    this._WS = opts.WebSocket || globalThis.WebSocket;
    this._t = opts.timers || defaultTimers;
    this._random = opts.random || Math.random;
    this._newId = opts.newId || randomId;
    this.backoffBase = opts.backoffBase ?? 1000;
    this.backoffCap = opts.backoffCap ?? 30000;
    this.ackDelayOpt = opts.ackDelay; // undefined: follow the server
    this.connectTimeout = opts.connectTimeout ?? 15000;
    this.retryDelay = opts.retryDelay ?? 1000;
    this.typingInterval = opts.typingInterval ?? 2000;

    this.state = "idle";
    this.welcome = null;
    this.attempt = 0; // reconnect attempts since the last welcome
    this.seqs = new SeqTracker();
    /** conv -> {conv, peer?, group?, name?, last_seq, read_seq, unread, last?, sortTs} */
    this.convs = new Map();
    /** cmid -> outbox entry, in send order */
    this.outbox = new Map();

    this._listeners = new Map();
    this._conn = null; // the current connection's state
    this._connSeq = 0;
    this._retryTimer = null;
    this._flushTimer = null;
    this._stopped = true;
    this._ridSeq = 0;
    this._cmidPrefix = this._newId().slice(0, 12);
    this._cmidSeq = 0;
    this._filling = new Set();
    this._convsGen = 0;

    /** welcome's version: 0 before the first welcome, then 1 or 2 */
    this.version = 0;
    this._typing = new Map(); // conv -> Map(uid -> expiry timer)
    this._typists = 0;
    this._typingSent = new Map(); // conv -> when this client last sent typing
    this._typingTrail = new Map(); // conv -> timer of the frame due at the end of the interval
    this._presWant = null; // the subscription list; null: never subscribed
    this._presGen = 0;
    this._presWaiters = []; // {gen, resolve, reject}
    /** uid -> {uid, online, last_seen}: the latest known presence of subscribed users */
    this.presenceState = new Map();
  }

  // ---- events ----

  /** on subscribes fn to event name and returns the unsubscribe function. */
  on(name, fn) {
    let set = this._listeners.get(name);
    if (!set) this._listeners.set(name, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  _emit(name, detail) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(detail);
      } catch (e) {
        // A listener's bug must not break the protocol state machine.
        if (globalThis.console) console.error("magpie listener", name, e);
      }
    }
  }

  _setState(state, code) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state, code });
  }

  // ---- lifecycle ----

  /** start connects and keeps the session alive until stop. */
  start() {
    if (!this._stopped) return;
    this._stopped = false;
    this._setState("connecting");
    this._dial();
  }

  /** stop closes the connection (1000) and stops reconnecting. */
  stop() {
    this._stopped = true;
    this._clearRetry();
    const c = this._conn;
    if (c) {
      this._detach(c);
      try {
        c.ws.close(1000);
      } catch {
        // already closing
      }
      this._teardown(c, new Error("stopped"));
    }
    for (const m of this._typing.values()) for (const timer of m.values()) this._t.clearTimeout(timer);
    this._typing.clear();
    this._typists = 0;
    this._setState("offline");
  }

  /**
   * reconnectNow skips the rest of a backoff wait (for example when the
   * browser reports it is online again). No-op unless reconnecting.
   */
  reconnectNow() {
    if (this._stopped || this._conn || this._retryTimer === null) return;
    this._clearRetry();
    this._dial();
  }

  _clearRetry() {
    if (this._retryTimer !== null) {
      this._t.clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
  }

  _dial() {
    const id = ++this._connSeq;
    let ws;
    const c = {
      id,
      ws: null,
      authed: false,
      lastSend: this._t.now(),
      awaitingSince: null,
      hbTimer: null,
      connectTimer: null,
      acks: new Map(),
      ackTimer: null,
      requests: new Map(),
      tokens: 0,
      tokensAt: 0,
    };
    this._conn = c;
    try {
      ws = new this._WS(this.url);
    } catch (e) {
      this._conn = null;
      this._closed(0, "dial failed");
      return;
    }
    c.ws = ws;
    ws.onopen = () => {
      if (this._conn !== c) return;
      this._write(c, { type: "auth", token: this.token, ...(this.device ? { device: this.device } : {}) });
    };
    ws.onmessage = (ev) => {
      if (this._conn !== c) return;
      this._onData(c, ev.data);
    };
    ws.onclose = (ev) => {
      if (this._conn !== c) return;
      this._detach(c);
      this._teardown(c, new Error("connection closed"));
      this._closed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // A close event always follows.
    };
    c.connectTimer = this._t.setTimeout(() => {
      c.connectTimer = null;
      if (this._conn === c && !c.authed) this._drop(c, "connect timeout");
    }, this.connectTimeout);
  }

  _detach(c) {
    if (c.ws) {
      c.ws.onopen = c.ws.onmessage = c.ws.onclose = c.ws.onerror = null;
    }
    if (this._conn === c) this._conn = null;
  }

  // _teardown releases what belongs to a connection that is gone.
  _teardown(c, err) {
    for (const t of [c.hbTimer, c.connectTimer, c.ackTimer]) {
      if (t !== null) this._t.clearTimeout(t);
    }
    c.hbTimer = c.connectTimer = c.ackTimer = null;
    c.acks.clear(); // acks only cover pushes of that connection
    for (const conv of [...this._typingTrail.keys()]) this._cancelTypingTrail(conv); // typing is not queued
    const reqs = [...c.requests.values()];
    c.requests.clear();
    for (const r of reqs) r.reject(err);
  }

  // _drop abandons a connection we consider dead and reconnects at once,
  // without waiting for the browser's close handshake.
  _drop(c, reason) {
    this._detach(c);
    try {
      c.ws.close(4000, reason);
    } catch {
      // ignore
    }
    this._teardown(c, new Error(reason));
    this._closed(0, reason);
  }

  _closed(code, reason) {
    if (this._stopped) {
      this._setState("offline", code);
      return;
    }
    if (code === CLOSE_UNAUTHORIZED) {
      this._stopped = true;
      this._setState("offline", code);
      this._emit("unauthorized", { code, reason });
      return;
    }
    if (code === CLOSE_REPLACED) {
      this._stopped = true;
      this._setState("offline", code);
      this._emit("replaced", { code, reason });
      return;
    }
    const delay =
      code === CLOSE_RATE
        ? this.backoffCap
        : backoffDelay(this.attempt, { base: this.backoffBase, cap: this.backoffCap, random: this._random });
    this.attempt++;
    this._setState("reconnecting", code);
    this._clearRetry();
    this._retryTimer = this._t.setTimeout(() => {
      this._retryTimer = null;
      if (!this._stopped) this._dial();
    }, delay);
  }

  // ---- writing ----

  _write(c, frame) {
    try {
      c.ws.send(JSON.stringify(frame));
    } catch {
      return false;
    }
    c.lastSend = this._t.now();
    return true;
  }

  // ---- heartbeat ----

  _armHeartbeat(c) {
    if (c.hbTimer !== null) this._t.clearTimeout(c.hbTimer);
    const hb = this.welcome.heartbeat_ms;
    let next = c.lastSend + hb;
    if (c.awaitingSince !== null) next = Math.min(next, c.awaitingSince + hb + hb / 2);
    c.hbTimer = this._t.setTimeout(() => {
      c.hbTimer = null;
      this._heartbeat(c);
    }, Math.max(0, next - this._t.now()));
  }

  // _heartbeat runs when a ping may be due or the dead-peer deadline passed.
  // It is lazy: sends in between move lastSend instead of re-arming a timer.
  _heartbeat(c) {
    if (this._conn !== c) return;
    const hb = this.welcome.heartbeat_ms;
    const now = this._t.now();
    if (c.awaitingSince !== null && now - c.awaitingSince >= hb + hb / 2) {
      this._drop(c, "dead peer");
      return;
    }
    if (now - c.lastSend >= hb) {
      this._write(c, { type: "ping" });
      if (c.awaitingSince === null) c.awaitingSince = now;
    }
    this._armHeartbeat(c);
  }

  // ---- reading ----

  _onData(c, data) {
    c.awaitingSince = null;
    if (typeof data !== "string") return; // the server sends text only
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== "object") return;
    switch (f.type) {
      case "welcome":
        this._onWelcome(c, f);
        break;
      case "msg":
        this._queueAck(c, f.conv, f.seq);
        this._stopTyping(f.conv, f.from);
        this._ingest(f, "push");
        break;
      case "receipt":
        this._onReceipt(f);
        break;
      case "typing":
        this._onTyping(f);
        break;
      case "presence":
        if (typeof f.rid === "string") this._resolve(c, f);
        else this._onPresence(f.items, true);
        break;
      case "sent":
        this._onSent(f);
        break;
      case "read":
        this._onRead(f);
        this._resolve(c, f);
        break;
      case "error":
        this._onError(c, f);
        break;
      case "pong":
        break;
      default:
        // convs, history, group and unknown types with a rid
        this._resolve(c, f);
    }
  }

  _onWelcome(c, f) {
    if (c.authed) return;
    c.authed = true;
    if (c.connectTimer !== null) {
      this._t.clearTimeout(c.connectTimer);
      c.connectTimer = null;
    }
    this.welcome = f;
    this.uid = f.uid;
    this.version = Number.isSafeInteger(f.version) && f.version > 0 ? f.version : 1;
    this.attempt = 0;
    c.tokens = this._capacity();
    c.tokensAt = this._t.now();
    this._armHeartbeat(c);
    this._setState("online");
    this._emit("welcome", f);
    this._flushOutbox();
    this._catchUp();
    this._resubscribePresence();
  }

  _resolve(c, f) {
    if (typeof f.rid !== "string") return;
    const r = c.requests.get(f.rid);
    if (!r) return;
    c.requests.delete(f.rid);
    r.resolve(f);
  }

  _onError(c, f) {
    if (typeof f.rid === "string" && c.requests.has(f.rid)) {
      const r = c.requests.get(f.rid);
      c.requests.delete(f.rid);
      r.reject(new RequestError(f.code, f.message));
      return;
    }
    if (typeof f.cmid === "string" && this.outbox.has(f.cmid)) {
      const e = this.outbox.get(f.cmid);
      if (f.code === "rate_limited" || f.code === "internal") {
        // Nothing was stored; the same cmid is safe to retry.
        e.connId = 0;
        this._scheduleFlush(this.retryDelay);
        return;
      }
      this.outbox.delete(f.cmid);
      this._emit("outbox");
      e.reject(new RequestError(f.code, f.message));
      this._emit("sendfailed", { cmid: f.cmid, conv: e.conv, code: f.code, message: f.message });
    }
  }

  // ---- acks ----

  // ackDelay is the coalescing delay: the option, else welcome's
  // ack_delay_ms (a Magpie extension; older servers send none), else 50 ms.
  get ackDelay() {
    if (this.ackDelayOpt !== undefined) return this.ackDelayOpt;
    const d = this.welcome && this.welcome.ack_delay_ms;
    return Number.isSafeInteger(d) && d >= 0 ? d : 50;
  }

  _queueAck(c, conv, seq) {
    if (typeof conv !== "string" || !Number.isSafeInteger(seq)) return;
    const prev = c.acks.get(conv) || 0;
    if (seq > prev) c.acks.set(conv, seq);
    c.ackPushes = (c.ackPushes || 0) + 1;
    const max = this.welcome && this.welcome.max_inflight;
    if (Number.isSafeInteger(max) && max > 0 && c.ackPushes >= Math.max(1, Math.floor(max / 2))) {
      // Half the server's in-flight window is unacked: ack now.
      if (c.ackTimer !== null) this._t.clearTimeout(c.ackTimer);
      c.ackTimer = null;
      this._flushAcks(c);
      return;
    }
    if (c.ackTimer === null) {
      c.ackTimer = this._t.setTimeout(() => {
        c.ackTimer = null;
        this._flushAcks(c);
      }, this.ackDelay);
    }
  }

  // _flushAcks sends one cumulative ack per conversation: on one connection
  // first transmissions arrive in seq order, so the highest seq received
  // covers everything below it.
  _flushAcks(c) {
    if (this._conn !== c) return;
    for (const [conv, seq] of c.acks) this._write(c, { type: "ack", conv, seq });
    c.acks.clear();
    c.ackPushes = 0;
  }

  // ---- messages and conversations ----

  _convItem(conv) {
    let it = this.convs.get(conv);
    if (!it) {
      const p = parseConv(conv);
      it = { conv, last_seq: 0, read_seq: 0, unread: 0, sortTs: 0, gen: this._convsGen };
      if (p && p.kind === "d") it.peer = p.a === this.uid ? p.b : p.a;
      if (p && p.kind === "g") it.group = p.group;
      this.convs.set(conv, it);
    }
    return it;
  }

  // _ingest takes a stored message from any source; it returns true and
  // emits "message" when the message is new to this client.
  _ingest(m, source) {
    if (typeof m.conv !== "string" || !Number.isSafeInteger(m.seq)) return false;
    const msg = {
      conv: m.conv,
      seq: m.seq,
      from: m.from,
      ts: m.ts,
      kind: m.kind || "text",
      body: m.body,
      cmid: m.cmid,
    };
    if (this.version >= 2) {
      const ev = parseGroupEvent(msg);
      if (ev) msg.event = ev;
    }
    // Our own send stored before its "sent" got lost: settle it from here.
    if (msg.from === this.uid && msg.cmid && this.outbox.has(msg.cmid)) {
      const e = this.outbox.get(msg.cmid);
      this.outbox.delete(msg.cmid);
      e.resolve({ conv: msg.conv, seq: msg.seq, ts: msg.ts, cmid: msg.cmid });
      this._emit("outbox");
    }
    if (!this.seqs.accept(msg.conv, msg.seq)) return false;
    const it = this._convItem(msg.conv);
    it.gen = this._convsGen + 1;
    if (msg.seq > it.last_seq) {
      it.last_seq = msg.seq;
      it.last = msg;
      it.sortTs = msg.ts;
    }
    if (msg.from === this.uid && msg.seq > it.read_seq) it.read_seq = msg.seq; // §10
    it.unread = Math.max(0, it.last_seq - it.read_seq);
    if (msg.event) this._applyGroupEvent(it, msg);
    this._emit("message", { message: msg, source });
    if (msg.event) this._emit("groupevent", { message: msg, event: msg.event });
    this._emit("convs");
    if (this.seqs.gap(msg.conv)) this._fillGap(msg.conv);
    return true;
  }

  // _applyGroupEvent keeps a group's name, owner, visibility and the user's
  // membership current from its system messages. Only events newer than
  // what the item already reflects count (metaSeq), so an older page of
  // history cannot undo a later rename. Member counts are not derived
  // here: a group reply's count belongs to no seq (ask groupMembers).
  _applyGroupEvent(it, msg) {
    const ev = msg.event;
    if (msg.seq <= (it.metaSeq || 0)) return;
    it.metaSeq = msg.seq;
    const me = this.uid;
    const names = (l) => Array.isArray(l) && l.includes(me);
    switch (ev.event) {
      case "created":
        if (typeof ev.name === "string") it.name = ev.name;
        it.public = !!ev.public;
        it.owner = msg.from;
        if (Number.isSafeInteger(ev.count)) it.count = ev.count;
        it.member = true;
        break;
      case "renamed":
        if (typeof ev.name === "string") it.name = ev.name;
        break;
      case "added":
        if (names(ev.members)) it.member = true;
        break;
      case "joined":
        if (msg.from === me) it.member = true;
        if (!it.owner) it.owner = msg.from;
        break;
      case "removed":
        if (names(ev.members)) it.member = false;
        break;
      case "left":
        if (Number.isSafeInteger(ev.owner)) it.owner = ev.owner;
        if (msg.from === me) it.member = false;
        break;
    }
    // Put in a group by someone else: its name comes with the next convs.
    if (it.member && it.name === undefined && (ev.event === "added" || ev.event === "joined")) this.refreshConvs();
  }

  _onSent(f) {
    const e = this.outbox.get(f.cmid);
    if (!e) return; // a duplicate answer, already settled
    this.outbox.delete(f.cmid);
    this._emit("outbox");
    const { frame } = e;
    this._ingest(
      { conv: f.conv, seq: f.seq, from: this.uid, ts: f.ts, kind: frame.kind, body: frame.body, cmid: frame.cmid },
      "sent",
    );
    e.resolve({ conv: f.conv, seq: f.seq, ts: f.ts, cmid: f.cmid });
  }

  _onRead(f) {
    const it = this.convs.get(f.conv);
    if (!it) return;
    if (f.seq > it.read_seq) it.read_seq = f.seq;
    it.unread = typeof f.unread === "number" ? f.unread : Math.max(0, it.last_seq - it.read_seq);
    this._emit("read", f);
    this._emit("convs");
  }

  // _fillGap fetches missing seqs of conv with history after=held, page by
  // page, until nothing is missing. One fill runs per conv at a time.
  async _fillGap(conv) {
    if (this._filling.has(conv)) return;
    this._filling.add(conv);
    try {
      for (;;) {
        const gap = this.seqs.gap(conv);
        if (!gap) break;
        const res = await this.history(conv, { after: gap.after, limit: 200 });
        for (const m of res.messages || []) this._ingest({ ...m, conv: m.conv || conv }, "history");
        if (this.seqs.held(conv) === gap.after) break; // no progress: give up until the next catch-up
      }
    } catch {
      // Disconnected or refused: the catch-up after the next welcome retries.
    } finally {
      this._filling.delete(conv);
    }
  }

  // _catchUp runs after every welcome: it reloads the conversation list and
  // fetches whatever arrived while this client was away (PROTOCOL.md §9).
  async _catchUp() {
    const gen = ++this._convsGen;
    let res;
    try {
      res = await this.request({ type: "convs" });
    } catch {
      return;
    }
    this._applyConvs(res, gen);
    for (const it of this.convs.values()) {
      if (it.readWant) this._sendRead(it);
    }
    for (const conv of this.seqs.convs()) {
      if (this.seqs.gap(conv)) this._fillGap(conv);
    }
  }

  _applyConvs(res, gen) {
    const seen = new Set();
    let sortTs = this._t.now();
    for (const item of res.items || []) {
      if (typeof item.conv !== "string") continue;
      seen.add(item.conv);
      const it = this._convItem(item.conv);
      if (item.peer) it.peer = item.peer;
      if (item.group) it.group = item.group;
      if (item.name !== undefined) it.name = item.name;
      if (item.group) {
        // v2 carries public and owner; a listed group is one the user is in.
        if (item.public !== undefined) it.public = !!item.public;
        if (item.owner !== undefined) it.owner = item.owner;
        it.member = true;
        it.metaSeq = Math.max(it.metaSeq || 0, item.last_seq || 0);
      }
      if (Number.isSafeInteger(item.peer_read_seq)) this._setRead(it, it.peer, item.peer_read_seq);
      if (item.last_seq >= it.last_seq) {
        it.last_seq = item.last_seq;
        if (item.last) {
          it.last = { ...item.last, conv: item.conv };
          const ev = this.version >= 2 ? parseGroupEvent(it.last) : null;
          if (ev) it.last.event = ev;
        }
      }
      if (item.read_seq > it.read_seq) it.read_seq = item.read_seq;
      it.unread = Math.max(0, it.last_seq - it.read_seq);
      // Keep the server's order for conversations without messages.
      sortTs = it.last ? it.last.ts : sortTs;
      it.sortTs = Math.max(it.sortTs, sortTs);
      this.seqs.announce(item.conv, item.last_seq);
    }
    for (const [conv, it] of this.convs) {
      if (!seen.has(conv) && it.gen <= gen) this.convs.delete(conv);
    }
    this._emit("convs");
  }

  /** conversations returns the conversation items, newest first. */
  conversations() {
    return [...this.convs.values()].sort((x, y) => y.sortTs - x.sortTs || (x.conv < y.conv ? -1 : x.conv > y.conv ? 1 : 0));
  }

  /** totalUnread sums the unread counts of all conversations. */
  totalUnread() {
    let n = 0;
    for (const it of this.convs.values()) n += it.unread;
    return n;
  }

  // ---- requests ----

  /**
   * request sends a frame with a fresh rid and resolves with the reply, or
   * rejects with a RequestError (error frame) or an Error when offline or
   * when the connection drops first.
   */
  request(frame) {
    const c = this._conn;
    if (!c || !c.authed) return Promise.reject(new Error("offline"));
    const rid = `r${++this._ridSeq}`;
    return new Promise((resolve, reject) => {
      c.requests.set(rid, { resolve, reject });
      if (!this._write(c, { ...frame, rid })) {
        c.requests.delete(rid);
        reject(new Error("offline"));
      }
    });
  }

  /**
   * history fetches messages of conv: {after} | {before} | {} (newest page),
   * {limit}. Loading the newest page of a conversation the client did not
   * track yet starts tracking it there, so later gaps in it are filled.
   */
  async history(conv, { after, before, limit } = {}) {
    const f = { type: "history", conv };
    if (after !== undefined) f.after = after;
    if (before !== undefined) f.before = before;
    if (limit !== undefined) f.limit = limit;
    const res = await this.request(f);
    if (this.version >= 2) {
      for (const m of res.messages || []) {
        const ev = parseGroupEvent({ ...m, conv: m.conv || conv });
        if (ev) m.event = ev;
      }
    }
    if (after === undefined && before === undefined && !this.seqs.has(conv)) {
      const msgs = res.messages || [];
      this.seqs.baseline(conv, msgs.length ? msgs[msgs.length - 1].seq : 0);
    }
    return res;
  }

  /**
   * markRead sets the read mark of conv to seq: at once in the local unread
   * counts, and on the server by a read frame. A mark the server has not
   * confirmed (sent while offline, or the connection dropped) is sent again
   * after the next welcome. Resolves with the server's read frame, or null.
   */
  markRead(conv, seq) {
    const it = this._convItem(conv);
    const s = Math.min(seq, it.last_seq);
    if (s > it.read_seq) it.read_seq = s;
    it.unread = Math.max(0, it.last_seq - it.read_seq);
    if (seq > (it.readWant || 0)) it.readWant = seq;
    this._emit("convs");
    return this._sendRead(it);
  }

  _sendRead(it) {
    const want = it.readWant;
    return this.request({ type: "read", conv: it.conv, seq: want }).then(
      (f) => {
        if (it.readWant === want) it.readWant = 0;
        return f;
      },
      () => null,
    );
  }

  /**
   * createGroup creates a group with the given member uids; {public: true}
   * lets anyone join it (version 2; the default is private). The caller is
   * its owner.
   */
  async createGroup(name, members = [], { public: isPublic = false } = {}) {
    const f = { type: "group_create", name, members };
    if (isPublic) f.public = true;
    const g = await this.request(f);
    this._groupAdded(g);
    return g;
  }

  /** joinGroup joins group gid. */
  async joinGroup(gid) {
    const g = await this.request({ type: "group_join", group: gid });
    this._groupAdded(g);
    this.refreshConvs();
    return g;
  }

  /** leaveGroup leaves group gid. */
  async leaveGroup(gid) {
    const g = await this.request({ type: "group_leave", group: gid });
    this.convs.delete(groupConv(gid));
    this._emit("convs");
    return g;
  }

  /** groupMembers lists members of gid with uid > after. */
  async groupMembers(gid, { after = 0, limit = 1000 } = {}) {
    const g = await this.request({ type: "group_members", group: gid, after, limit });
    this._groupInfo(g);
    return g;
  }

  /** addMembers adds uids (1–1000) to group gid: any member may (version 2). */
  async addMembers(gid, uids) {
    const g = await this.request({ type: "group_add", group: gid, members: uids });
    this._groupInfo(g);
    return g;
  }

  /** removeMembers removes uids (1–1000) from group gid: the owner only (version 2). */
  async removeMembers(gid, uids) {
    const g = await this.request({ type: "group_remove", group: gid, members: uids });
    this._groupInfo(g);
    return g;
  }

  /** renameGroup renames group gid: the owner only (version 2). */
  async renameGroup(gid, name) {
    const g = await this.request({ type: "group_rename", group: gid, name });
    this._groupInfo(g);
    return g;
  }

  // _groupInfo records what a group reply says about a group the user is in.
  _groupInfo(g) {
    const it = this.convs.get(groupConv(g.group));
    if (!it) return;
    if (typeof g.name === "string") it.name = g.name;
    if (Number.isSafeInteger(g.count)) it.count = g.count;
    if (g.public !== undefined) it.public = !!g.public;
    if (g.owner !== undefined) it.owner = g.owner;
    this._emit("convs");
  }

  _groupAdded(g) {
    const it = this._convItem(groupConv(g.group));
    it.name = g.name;
    it.count = g.count;
    it.member = true;
    if (g.public !== undefined) it.public = !!g.public;
    if (g.owner !== undefined) it.owner = g.owner;
    it.gen = this._convsGen + 1;
    if (!it.last) it.sortTs = Math.max(it.sortTs, this._t.now());
    this._emit("convs");
  }

  /** refreshConvs reloads the conversation list and fills gaps. */
  refreshConvs() {
    if (this.state === "online") this._catchUp();
  }

  // ---- sending ----

  _capacity() {
    const r = this.welcome ? this.welcome.send_rate : 0;
    return r > 0 ? 2 * r : Infinity;
  }

  // _takeToken mirrors the server's token bucket (send_rate per second,
  // capacity 2×send_rate, full at connect) so a long outbox is paced
  // instead of closed with 4029.
  _takeToken(c) {
    const rate = this.welcome ? this.welcome.send_rate : 0;
    if (!(rate > 0)) return 0;
    const now = this._t.now();
    c.tokens = Math.min(this._capacity(), c.tokens + ((now - c.tokensAt) * rate) / 1000);
    c.tokensAt = now;
    if (c.tokens >= 1) {
      c.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - c.tokens) * 1000) / rate);
  }

  _scheduleFlush(ms) {
    if (this._flushTimer !== null) return;
    this._flushTimer = this._t.setTimeout(() => {
      this._flushTimer = null;
      this._flushOutbox();
    }, ms);
  }

  // _flushOutbox writes, in send order, every outbox entry not yet written
  // on the current connection.
  _flushOutbox() {
    const c = this._conn;
    if (!c || !c.authed) return;
    for (const e of this.outbox.values()) {
      if (e.connId === c.id) continue;
      const wait = this._takeToken(c);
      if (wait > 0) {
        this._scheduleFlush(wait);
        return;
      }
      if (!this._write(c, e.frame)) return;
      e.connId = c.id;
    }
  }

  /**
   * send queues a message to {to: uid} or {group: gid} and returns
   * {cmid, conv, promise}. The promise resolves with {conv, seq, ts, cmid}
   * once the server stored it, however many reconnects that takes; it
   * rejects only for a permanent error (not_found, not_member, too_large,
   * bad_request) or cancel().
   */
  send(target, body, { kind, cmid } = {}) {
    const frame = { type: "send", cmid: cmid || `${this._cmidPrefix}-${++this._cmidSeq}` };
    let conv = "";
    if (target.group) {
      frame.group = target.group;
      conv = groupConv(target.group);
    } else {
      frame.to = target.to;
      conv = this.uid ? directConv(this.uid, target.to) : "";
    }
    frame.body = body;
    if (kind) frame.kind = kind;
    // The message ends the sender's typing indicator at the receivers: a
    // typing frame still due would light it again.
    this._cancelTypingTrail(conv);
    let resolve, reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {}); // callers may ignore failures; "sendfailed" reports them
    this.outbox.set(frame.cmid, { frame, conv, connId: 0, resolve, reject });
    this._emit("outbox");
    this._flushOutbox();
    return { cmid: frame.cmid, conv, promise };
  }

  /**
   * pending lists the unconfirmed sends of conv (all when conv is omitted)
   * as {cmid, conv, target, body, kind}. An application may persist them and
   * queue them again after a reload with send(target, body, {cmid, kind}):
   * the same cmid makes that safe.
   */
  pending(conv) {
    const out = [];
    for (const e of this.outbox.values()) {
      if (conv && e.conv !== conv) continue;
      const f = e.frame;
      out.push({ cmid: f.cmid, conv: e.conv, target: f.group ? { group: f.group } : { to: f.to }, body: f.body, kind: f.kind || "text" });
    }
    return out;
  }

  /** cancel drops an unconfirmed send (it may still have been stored). */
  cancel(cmid) {
    const e = this.outbox.get(cmid);
    if (!e) return;
    this.outbox.delete(cmid);
    this._emit("outbox");
    e.reject(new Error("cancelled"));
  }

  // ---- receipts (version 2, PROTOCOL.md §14) ----

  // _setRead records that uid read conv's item up to seq.
  _setRead(it, uid, seq) {
    if (!uid || !Number.isSafeInteger(seq)) return false;
    if (!it.reads) it.reads = new Map();
    if (seq <= (it.reads.get(uid) || 0)) return false;
    it.reads.set(uid, seq);
    if (it.peer === uid) it.peer_read_seq = seq;
    return true;
  }

  _onReceipt(f) {
    if (typeof f.conv !== "string" || !Number.isSafeInteger(f.uid) || !Number.isSafeInteger(f.seq)) return;
    // A receipt names a conversation the user is in, maybe not listed yet.
    if (parseConv(f.conv)) this._setRead(this._convItem(f.conv), f.uid, f.seq);
    this._emit("receipt", { conv: f.conv, uid: f.uid, seq: f.seq });
  }

  /**
   * receipts asks for the read position of every other member of conv (a
   * direct conversation, or a group of at most the server's
   * --receipt-members; larger: RequestError "forbidden") and records them.
   * Resolves with the items [{uid, read_seq}].
   */
  async receipts(conv) {
    const res = await this.request({ type: "receipts", conv });
    // Answered: the user is in conv, whether or not convs listed it yet.
    const it = this._convItem(conv);
    const items = Array.isArray(res.items) ? res.items : [];
    for (const r of items) this._setRead(it, r.uid, r.read_seq);
    return items;
  }

  /**
   * readBy lists the other members known to have read conv up to seq (from
   * convs' peer_read_seq, receipts() and receipt frames), ascending.
   */
  readBy(conv, seq) {
    const it = this.convs.get(conv);
    if (!it || !it.reads) return [];
    const out = [];
    for (const [uid, s] of it.reads) if (s >= seq && uid !== this.uid) out.push(uid);
    return out.sort((a, b) => a - b);
  }

  // ---- typing (version 2, PROTOCOL.md §15) ----

  /**
   * typing tells the other members of conv that the user is typing. Call it
   * on every keystroke: it sends at most one frame per typingInterval (2 s)
   * per conversation — the first call at once, and calls inside the
   * interval as one frame at its end, so a short burst still shows —
   * nothing while offline or to a version 1 server. It returns whether a
   * frame went out now. A send to conv drops the pending frame: the
   * message ends the indicator.
   */
  typing(conv) {
    const c = this._conn;
    if (!c || !c.authed || this.version < 2 || !parseConv(conv)) return false;
    const now = this._t.now();
    const last = this._typingSent.get(conv);
    if (last !== undefined && now - last < this.typingInterval) {
      if (!this._typingTrail.has(conv)) {
        const timer = this._t.setTimeout(() => {
          this._typingTrail.delete(conv);
          this.typing(conv);
        }, last + this.typingInterval - now);
        this._typingTrail.set(conv, timer);
      }
      return false;
    }
    if (this._typingSent.size >= 256) {
      for (const [k, t] of this._typingSent) if (now - t >= this.typingInterval) this._typingSent.delete(k);
    }
    this._typingSent.set(conv, now);
    return this._write(c, { type: "typing", conv });
  }

  _cancelTypingTrail(conv) {
    const t = this._typingTrail.get(conv);
    if (t === undefined) return;
    this._t.clearTimeout(t);
    this._typingTrail.delete(conv);
  }

  /** typers lists the uids typing in conv now, ascending. */
  typers(conv) {
    const m = this._typing.get(conv);
    return m ? [...m.keys()].sort((a, b) => a - b) : [];
  }

  // _onTyping starts or extends an indicator: one timer per typist, reset
  // by every frame, ends it TYPING_EXPIRY_MS after the last.
  _onTyping(f) {
    const { conv, uid } = f;
    if (typeof conv !== "string" || !Number.isSafeInteger(uid) || uid <= 0 || uid === this.uid) return;
    let m = this._typing.get(conv);
    const prev = m ? m.get(uid) : undefined;
    if (prev !== undefined) this._t.clearTimeout(prev);
    else if (this._typists >= MAX_TYPISTS) return;
    if (!m) this._typing.set(conv, (m = new Map()));
    m.set(uid, this._t.setTimeout(() => this._stopTyping(conv, uid), TYPING_EXPIRY_MS));
    if (prev === undefined) {
      this._typists++;
      this._emit("typing", { conv, uid, typing: true });
    }
  }

  // _stopTyping ends uid's indicator in conv: expired, or a message from
  // them arrived.
  _stopTyping(conv, uid) {
    const m = this._typing.get(conv);
    if (!m || !m.has(uid)) return;
    this._t.clearTimeout(m.get(uid));
    m.delete(uid);
    if (m.size === 0) this._typing.delete(conv);
    this._typists--;
    this._emit("typing", { conv, uid, typing: false });
  }

  // ---- presence (version 2, PROTOCOL.md §16) ----

  /**
   * subscribePresence replaces the presence subscription with uids (0–1000
   * positive uids; [] unsubscribes) and resolves with the reply's items
   * [{uid, online, last_seen}] in request order. The subscription belongs
   * to the client: it is sent again after every welcome, so it survives
   * reconnects; called while offline it resolves after the next welcome.
   * Every reply and push updates presence(uid) and fires "presence". When a
   * later call replaces the list first, this one resolves with the later
   * reply. Rejects with RequestError "not_supported" on a version 1 server.
   */
  subscribePresence(uids) {
    if (!Array.isArray(uids) || uids.length > MAX_PRESENCE_SUB || !uids.every((u) => Number.isSafeInteger(u) && u > 0)) {
      return Promise.reject(new Error(`subscribePresence takes 0 to ${MAX_PRESENCE_SUB} positive uids`));
    }
    if (this.state === "online" && this.version < 2) return Promise.reject(new RequestError("not_supported", "the server speaks protocol version 1"));
    this._presWant = [...uids];
    const gen = ++this._presGen;
    const keep = new Set(uids);
    for (const uid of [...this.presenceState.keys()]) if (!keep.has(uid)) this.presenceState.delete(uid);
    const online = this._conn && this._conn.authed;
    if (!online && uids.length === 0) return Promise.resolve([]); // the next connection starts without
    const p = new Promise((resolve, reject) => this._presWaiters.push({ gen, resolve, reject }));
    if (online) this._sendPresenceSub();
    return p;
  }

  /** presence returns the latest known {uid, online, last_seen} of a subscribed user, or undefined. */
  presence(uid) {
    return this.presenceState.get(uid);
  }

  _resubscribePresence() {
    const want = this._presWant;
    if (want === null) return;
    if (this.version < 2) this._finishPresence(Infinity, null, new RequestError("not_supported", "the server speaks protocol version 1"));
    else if (want.length === 0) this._finishPresence(Infinity, []);
    else this._sendPresenceSub();
  }

  _sendPresenceSub() {
    const gen = this._presGen;
    this.request({ type: "presence_sub", uids: this._presWant }).then(
      (res) => {
        const items = Array.isArray(res.items) ? res.items : [];
        if (gen === this._presGen) this._onPresence(items, false);
        this._finishPresence(gen, items);
      },
      (err) => {
        // A lost connection is retried after the next welcome; an error
        // frame is final for this list.
        if (err instanceof RequestError) this._finishPresence(gen, null, err);
      },
    );
  }

  _finishPresence(gen, items, err) {
    const done = this._presWaiters.filter((w) => w.gen <= gen);
    this._presWaiters = this._presWaiters.filter((w) => w.gen > gen);
    for (const w of done) (err ? w.reject(err) : w.resolve(items));
  }

  _onPresence(items, push) {
    if (!Array.isArray(items)) return;
    const want = new Set(this._presWant || []);
    const out = [];
    for (const it of items) {
      if (!it || !Number.isSafeInteger(it.uid)) continue;
      if (push && !want.has(it.uid)) continue; // crossed an unsubscribe
      const p = { uid: it.uid, online: !!it.online, last_seen: Number.isSafeInteger(it.last_seen) ? it.last_seen : 0 };
      this.presenceState.set(p.uid, p);
      out.push(p);
    }
    if (out.length) this._emit("presence", { items: out });
  }
}
