// Test doubles for the SDK unit tests: a manual clock and a scripted
// WebSocket. Not served to browsers (web.go embeds only sdk/magpie.js).

export class FakeClock {
  constructor(start = 1_000_000) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
  }

  now() {
    return this.t;
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** pendingDelays lists the remaining delays of the armed timers. */
  pendingDelays() {
    return [...this.timers.values()].map((x) => x.at - this.t).sort((a, b) => a - b);
  }

  /** advance moves time forward by ms, firing due timers in order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const x of this.timers.values()) {
        if (x.at <= end && (next === null || x.at < next.at || (x.at === next.at && x.id < next.id))) next = x;
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }

  get api() {
    return {
      setTimeout: (fn, ms) => this.setTimeout(fn, ms),
      clearTimeout: (id) => this.clearTimeout(id),
      now: () => this.now(),
    };
  }
}

/** makeFakeWS returns a WebSocket constructor that records every instance. */
export function makeFakeWS() {
  const sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.closed = null;
      this.readyState = 0;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(data));
    }
    close(code) {
      this.closed = code ?? 1005;
      this.readyState = 3;
    }
    // ---- test controls ----
    open() {
      this.readyState = 1;
      this.onopen && this.onopen({});
    }
    recv(frame) {
      this.onmessage && this.onmessage({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason });
    }
    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }
    welcome(extra = {}) {
      this.recv({
        type: "welcome",
        version: 1,
        uid: 1,
        heartbeat_ms: 30000,
        idle_timeout_ms: 90000,
        ack_timeout_ms: 5000,
        send_rate: 100,
        max_body: 16384,
        server_time: 0,
        ...extra,
      });
    }
  }
  FakeWS.sockets = sockets;
  FakeWS.last = () => sockets[sockets.length - 1];
  return FakeWS;
}

/** flush lets pending promise callbacks run. */
export async function flush() {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}
