// Unit tests of the SDK's protocol logic: run with `node --test web/sdk/`.
import test from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, SeqTracker, MagpieClient, directConv, parseConv, peerOf, MagpieAPI, APIError } from "./magpie.js";
import { FakeClock, makeFakeWS, flush } from "./testing_fakes.js";

function newClient(opts = {}) {
  const clock = new FakeClock();
  const WS = makeFakeWS();
  let r = 0.5;
  const client = new MagpieClient({
    url: "ws://h:7070/ws",
    token: "tok",
    device: "dev1",
    WebSocket: WS,
    timers: clock.api,
    random: () => r,
    newId: () => "abcdef0123456789",
    ...opts,
  });
  const states = [];
  client.on("state", (s) => states.push(s.state));
  return { client, clock, WS, states, setRandom: (v) => (r = v) };
}

// connect starts (or continues) the client and completes the handshake on
// the newest socket, answering the catch-up convs request with items.
async function online(env, items = [], welcome = {}) {
  const ws = env.WS.last();
  ws.open();
  ws.welcome(welcome);
  const convs = ws.frames("convs").at(-1);
  ws.recv({ type: "convs", rid: convs.rid, items, total_unread: 0 });
  await flush();
  return ws;
}

test("backoff: full jitter within a doubling window capped at 30s", () => {
  // random() → just below 1 gives the window's upper edge.
  const hi = () => 0.999999;
  assert.ok(backoffDelay(0, { random: hi }) < 1000, "first retry within 1s");
  assert.ok(backoffDelay(0, { random: hi }) >= 999);
  assert.ok(backoffDelay(1, { random: hi }) >= 1999 && backoffDelay(1, { random: hi }) < 2000);
  assert.ok(backoffDelay(4, { random: hi }) >= 15999 && backoffDelay(4, { random: hi }) < 16000);
  for (const n of [5, 6, 10, 100, 10000]) {
    const d = backoffDelay(n, { random: hi });
    assert.ok(d < 30000 && d >= 29999, `attempt ${n}: ${d}`);
  }
  assert.equal(backoffDelay(3, { random: () => 0 }), 0, "full jitter reaches zero");
  assert.equal(backoffDelay(3, { random: () => 0.5 }), 4000);
  // The spread is real: many draws cover the window.
  let min = Infinity;
  let max = 0;
  for (let i = 0; i < 2000; i++) {
    const d = backoffDelay(2);
    min = Math.min(min, d);
    max = Math.max(max, d);
    assert.ok(d >= 0 && d < 4000);
  }
  assert.ok(min < 400 && max > 3600, `spread ${min}..${max}`);
});

test("conv helpers", () => {
  assert.equal(directConv(5, 2), "d:2:5");
  assert.equal(directConv(2, 5), "d:2:5");
  assert.deepEqual(parseConv("g:7"), { kind: "g", group: 7 });
  assert.deepEqual(parseConv("d:1:22"), { kind: "d", a: 1, b: 22 });
  assert.equal(parseConv("d:01:2"), null);
  assert.equal(parseConv("x"), null);
  assert.equal(peerOf("d:1:22", 22), 1);
});

test("SeqTracker: dedup, out-of-order and gaps", () => {
  const t = new SeqTracker();
  assert.equal(t.accept("d:1:2", 1), true);
  assert.equal(t.accept("d:1:2", 1), false, "duplicate");
  assert.equal(t.accept("d:1:2", 2), true);
  assert.equal(t.gap("d:1:2"), null);
  assert.equal(t.accept("d:1:2", 5), true);
  assert.deepEqual(t.gap("d:1:2"), { after: 2, through: 5 });
  assert.equal(t.accept("d:1:2", 5), false, "duplicate above a gap");
  assert.equal(t.accept("d:1:2", 3), true);
  assert.deepEqual(t.gap("d:1:2"), { after: 3, through: 5 });
  assert.equal(t.accept("d:1:2", 4), true);
  assert.equal(t.held("d:1:2"), 5, "4 closes the gap and absorbs 5");
  assert.equal(t.gap("d:1:2"), null);
  assert.equal(t.accept("d:1:2", 3), false);

  // An untracked conv starts just below its first seq: no gap below it.
  assert.equal(t.accept("g:9", 40), true);
  assert.equal(t.gap("g:9"), null);
  // A baseline from convs counts everything up to last_seq as held.
  t.baseline("g:3", 10);
  assert.equal(t.accept("g:3", 10), false);
  assert.equal(t.accept("g:3", 11), true);
  t.announce("g:3", 15);
  assert.deepEqual(t.gap("g:3"), { after: 11, through: 15 });
});

test("connect: auth frame with device, welcome → online, catch-up asks convs", async () => {
  const env = newClient();
  env.client.start();
  assert.equal(env.client.state, "connecting");
  const ws = env.WS.last();
  assert.equal(ws.url, "ws://h:7070/ws");
  ws.open();
  assert.deepEqual(ws.sent[0], { type: "auth", token: "tok", device: "dev1" });
  ws.welcome();
  assert.equal(env.client.state, "online");
  assert.equal(env.client.uid, 1);
  assert.equal(ws.frames("convs").length, 1);
  assert.deepEqual(env.states, ["connecting", "online"]);
});

test("reconnect: backoff with jitter, doubling, reset after welcome", async () => {
  const env = newClient();
  env.setRandom(0.999);
  env.client.start();
  await online(env);
  env.WS.last().serverClose(1006);
  assert.equal(env.client.state, "reconnecting");
  assert.deepEqual(env.clock.pendingDelays(), [999], "first retry within 1s");
  env.clock.advance(999);
  assert.equal(env.WS.sockets.length, 2);
  env.WS.last().serverClose(1006); // dial failed
  assert.deepEqual(env.clock.pendingDelays(), [1998]);
  env.clock.advance(1998);
  env.WS.last().serverClose(1006);
  assert.deepEqual(env.clock.pendingDelays(), [3996]);
  env.clock.advance(3996);
  // Many failures later the wait stays at the cap.
  for (let i = 0; i < 10; i++) {
    env.WS.last().serverClose(1001);
    const [d] = env.clock.pendingDelays();
    assert.ok(d <= 30000, `delay ${d}`);
    env.clock.advance(d);
  }
  assert.deepEqual(env.clock.pendingDelays(), [15000], "only the new dial's connect timeout");
  env.WS.last().serverClose(1006);
  assert.deepEqual(env.clock.pendingDelays(), [29970]);
  env.clock.advance(29970);
  // A welcome resets the attempts: the next retry is within 1s again.
  await online(env);
  assert.equal(env.client.state, "online");
  env.WS.last().serverClose(1006);
  assert.deepEqual(env.clock.pendingDelays(), [999]);
  assert.deepEqual(env.states.slice(0, 3), ["connecting", "online", "reconnecting"]);
  assert.equal(env.states.at(-1), "reconnecting");
});

test("no reconnect after 4001 (unauthorized) or 4004 (replaced)", async () => {
  for (const [code, event] of [
    [4001, "unauthorized"],
    [4004, "replaced"],
  ]) {
    const env = newClient();
    let fired = 0;
    env.client.on(event, () => fired++);
    env.client.start();
    await online(env);
    env.WS.last().serverClose(code);
    assert.equal(env.client.state, "offline");
    assert.equal(fired, 1);
    env.clock.advance(120000);
    assert.equal(env.WS.sockets.length, 1, `no redial after ${code}`);
    env.client.reconnectNow();
    assert.equal(env.WS.sockets.length, 1);
  }
});

test("4001 before welcome (bad token in auth frame) stops too", () => {
  const env = newClient();
  let fired = 0;
  env.client.on("unauthorized", () => fired++);
  env.client.start();
  env.WS.last().open();
  env.WS.last().serverClose(4001);
  assert.equal(fired, 1);
  assert.equal(env.client.state, "offline");
  env.clock.advance(60000);
  assert.equal(env.WS.sockets.length, 1);
});

test("after 4029 the client waits the backoff cap", async () => {
  const env = newClient({ backoffCap: 20000 });
  env.setRandom(0);
  env.client.start();
  await online(env);
  env.WS.last().serverClose(4029);
  assert.deepEqual(env.clock.pendingDelays(), [20000]);
  env.clock.advance(19999);
  assert.equal(env.WS.sockets.length, 1);
  env.clock.advance(1);
  assert.equal(env.WS.sockets.length, 2);
});

test("heartbeat: ping after heartbeat_ms idle; dead peer after 1.5×heartbeat", async () => {
  const env = newClient();
  env.client.start();
  const ws = await online(env, [], { heartbeat_ms: 10000 });
  const before = ws.frames("ping").length;
  env.clock.advance(9999);
  assert.equal(ws.frames("ping").length, before);
  env.clock.advance(1);
  assert.equal(ws.frames("ping").length, before + 1);
  // The pong arrives: the connection lives, and the next ping comes a heartbeat later.
  ws.recv({ type: "pong" });
  env.clock.advance(10000);
  assert.equal(ws.frames("ping").length, before + 2);
  // Sending something else postpones the ping.
  ws.recv({ type: "pong" });
  env.clock.advance(5000);
  env.client.send({ to: 2 }, "hello");
  env.clock.advance(9999);
  assert.equal(ws.frames("ping").length, before + 2);
  env.clock.advance(1);
  assert.equal(ws.frames("ping").length, before + 3);
  // Now silence: at ping + 15s the client gives up and reconnects.
  env.clock.advance(14999);
  assert.equal(env.client.state, "online");
  env.clock.advance(1);
  assert.equal(ws.closed, 4000);
  assert.equal(env.client.state, "reconnecting");
  env.clock.advance(1000);
  assert.equal(env.WS.sockets.length, 2);
});

test("a connect that never gets a welcome times out and retries", () => {
  const env = newClient({ connectTimeout: 5000 });
  env.client.start();
  env.WS.last().open();
  env.clock.advance(5000);
  assert.equal(env.client.state, "reconnecting");
  env.clock.advance(1000);
  assert.equal(env.WS.sockets.length, 2);
});

test("sends: queued while offline, re-sent with the same cmid after welcome, settled once", async () => {
  const env = newClient({ uid: 1 });
  const messages = [];
  env.client.on("message", (m) => messages.push(m.message));
  env.client.start();
  let ws = await online(env);
  const a = env.client.send({ to: 2 }, "one");
  assert.equal(a.conv, "d:1:2");
  assert.equal(ws.frames("send").length, 1);
  assert.deepEqual(ws.frames("send")[0], { type: "send", cmid: a.cmid, to: 2, body: "one" });
  // Lost before "sent": the connection drops.
  ws.serverClose(1006);
  const b = env.client.send({ group: 7 }, "two");
  assert.equal(b.conv, "g:7");
  assert.deepEqual(env.client.pending().map((p) => p.body), ["one", "two"]);
  assert.deepEqual(env.client.pending("g:7"), [{ cmid: b.cmid, conv: "g:7", target: { group: 7 }, body: "two", kind: "text" }]);
  env.clock.advance(1000);
  ws = await online(env, [
    { conv: "d:1:2", peer: 2, last_seq: 0, read_seq: 0, unread: 0 },
    { conv: "g:7", group: 7, name: "team", last_seq: 3, read_seq: 3, unread: 0 },
  ]);
  const sends = ws.frames("send");
  assert.deepEqual(
    sends.map((f) => [f.cmid, f.body]),
    [
      [a.cmid, "one"],
      [b.cmid, "two"],
    ],
    "same cmids, in order",
  );
  ws.recv({ type: "sent", cmid: a.cmid, conv: "d:1:2", seq: 1, ts: 5 });
  ws.recv({ type: "sent", cmid: b.cmid, conv: "g:7", seq: 4, ts: 6 });
  ws.recv({ type: "sent", cmid: b.cmid, conv: "g:7", seq: 4, ts: 6 }); // duplicate answer
  assert.deepEqual(await a.promise, { conv: "d:1:2", seq: 1, ts: 5, cmid: a.cmid });
  assert.equal((await b.promise).seq, 4);
  assert.deepEqual(env.client.pending(), []);
  assert.deepEqual(
    messages.map((m) => [m.conv, m.seq, m.body, m.from]),
    [
      ["d:1:2", 1, "one", 1],
      ["g:7", 4, "two", 1],
    ],
  );
  // Own messages count as read (§10).
  assert.equal(env.client.convs.get("g:7").unread, 0);
  // Another reconnect re-sends nothing.
  ws.serverClose(1006);
  env.clock.advance(1000);
  ws = await online(env);
  assert.equal(ws.frames("send").length, 0);
});

test("a send stored before its sent was lost settles from history, not re-shown", async () => {
  const env = newClient({ uid: 1 });
  const messages = [];
  env.client.on("message", (m) => messages.push(m.message));
  env.client.start();
  let ws = await online(env, [{ conv: "d:1:2", peer: 2, last_seq: 4, read_seq: 4, unread: 0 }]);
  const s = env.client.send({ to: 2 }, "hi");
  ws.serverClose(1006);
  env.clock.advance(1000);
  ws = env.WS.last();
  ws.open();
  ws.welcome();
  assert.equal(ws.frames("send").length, 1, "re-sent");
  ws.recv({ type: "convs", rid: ws.frames("convs")[0].rid, items: [{ conv: "d:1:2", peer: 2, last_seq: 5, read_seq: 5, unread: 0 }] });
  await flush();
  const h = ws.frames("history")[0];
  assert.deepEqual({ conv: h.conv, after: h.after }, { conv: "d:1:2", after: 4 });
  ws.recv({ type: "history", rid: h.rid, conv: "d:1:2", messages: [{ conv: "d:1:2", seq: 5, from: 1, ts: 9, kind: "text", body: "hi", cmid: s.cmid }], more: false });
  await flush();
  assert.equal((await s.promise).seq, 5);
  ws.recv({ type: "sent", cmid: s.cmid, conv: "d:1:2", seq: 5, ts: 9 }); // the re-send's answer
  await flush();
  assert.deepEqual(messages.map((m) => m.seq), [5]);
});

test("permanent send errors reject; rate_limited retries with the same cmid", async () => {
  const env = newClient({ uid: 1, retryDelay: 500 });
  const failed = [];
  env.client.on("sendfailed", (f) => failed.push(f.code));
  env.client.start();
  const ws = await online(env);
  const s = env.client.send({ to: 99 }, "x");
  ws.recv({ type: "error", cmid: s.cmid, code: "not_found", message: "no such user" });
  await assert.rejects(s.promise, (e) => e.code === "not_found");
  assert.deepEqual(failed, ["not_found"]);
  const r = env.client.send({ to: 2 }, "y");
  ws.recv({ type: "error", cmid: r.cmid, code: "rate_limited", message: "busy" });
  assert.equal(ws.frames("send").filter((f) => f.cmid === r.cmid).length, 1);
  env.clock.advance(500);
  assert.equal(ws.frames("send").filter((f) => f.cmid === r.cmid).length, 2);
  ws.recv({ type: "sent", cmid: r.cmid, conv: "d:1:2", seq: 1, ts: 1 });
  assert.equal((await r.promise).seq, 1);
});

test("outbox is paced by send_rate instead of tripping 4029", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  env.WS.last().open();
  for (let i = 0; i < 25; i++) env.client.send({ to: 2 }, `m${i}`);
  const ws = env.WS.last();
  ws.welcome({ send_rate: 10 });
  assert.equal(ws.frames("send").length, 20, "burst of 2×rate");
  env.clock.advance(100);
  assert.equal(ws.frames("send").length, 21);
  env.clock.advance(400);
  assert.equal(ws.frames("send").length, 25);
  assert.deepEqual(
    ws.frames("send").map((f) => f.body),
    Array.from({ length: 25 }, (_, i) => `m${i}`),
  );
});

test("acks are cumulative per conv and coalesced; duplicates are acked but shown once", async () => {
  const env = newClient({ uid: 1 });
  const messages = [];
  env.client.on("message", (m) => messages.push(`${m.message.conv}/${m.message.seq}`));
  env.client.start();
  const ws = await online(env, [
    { conv: "d:1:2", peer: 2, last_seq: 0, read_seq: 0, unread: 0 },
    { conv: "g:7", group: 7, name: "t", last_seq: 10, read_seq: 10, unread: 0 },
  ]);
  const push = (conv, seq) => ws.recv({ type: "msg", conv, seq, from: 2, ts: seq, kind: "text", body: `b${seq}`, cmid: `c${seq}` });
  push("d:1:2", 1);
  push("d:1:2", 2);
  push("g:7", 11);
  push("d:1:2", 3);
  push("d:1:2", 2); // a resend
  assert.equal(ws.frames("ack").length, 0, "coalesced");
  env.clock.advance(50);
  assert.deepEqual(
    ws.frames("ack").map((a) => [a.conv, a.seq]),
    [
      ["d:1:2", 3],
      ["g:7", 11],
    ],
  );
  push("d:1:2", 3); // a resend after the ack went out is acked again
  env.clock.advance(50);
  assert.deepEqual(ws.frames("ack").at(-1), { type: "ack", conv: "d:1:2", seq: 3 });
  assert.deepEqual(messages, ["d:1:2/1", "d:1:2/2", "g:7/11", "d:1:2/3"]);
  assert.equal(env.client.convs.get("d:1:2").unread, 3);
  assert.equal(env.client.totalUnread(), 4);
});

test("acks follow welcome: ack_delay_ms coalesces, half of max_inflight flushes at once", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  const ws = await online(env, [{ conv: "g:7", group: 7, name: "t", last_seq: 0, read_seq: 0, unread: 0 }], {
    ack_delay_ms: 5,
    max_inflight: 6,
  });
  const push = (seq) => ws.recv({ type: "msg", conv: "g:7", seq, from: 2, ts: seq, kind: "text", body: "b", cmid: `c${seq}` });
  push(1);
  env.clock.advance(4);
  assert.equal(ws.frames("ack").length, 0, "coalesced for ack_delay_ms");
  env.clock.advance(1);
  assert.deepEqual(ws.frames("ack").at(-1), { type: "ack", conv: "g:7", seq: 1 });
  push(2);
  push(3);
  assert.equal(ws.frames("ack").length, 1, "waiting");
  push(4); // three unacked: half of max_inflight
  assert.equal(ws.frames("ack").length, 2, "acked at once");
  assert.deepEqual(ws.frames("ack").at(-1), { type: "ack", conv: "g:7", seq: 4 });
  env.clock.advance(10);
  assert.equal(ws.frames("ack").length, 2, "nothing left to ack");
});

test("an explicit ackDelay wins over the server's", async () => {
  const env = newClient({ uid: 1, ackDelay: 30 });
  env.client.start();
  const ws = await online(env, [{ conv: "g:7", group: 7, name: "t", last_seq: 0, read_seq: 0, unread: 0 }], { ack_delay_ms: 5 });
  ws.recv({ type: "msg", conv: "g:7", seq: 1, from: 2, ts: 1, kind: "text", body: "b", cmid: "c1" });
  env.clock.advance(29);
  assert.equal(ws.frames("ack").length, 0);
  env.clock.advance(1);
  assert.equal(ws.frames("ack").length, 1);
});

test("gap in pushes is filled through history, page by page, each message once", async () => {
  const env = newClient({ uid: 1 });
  const seen = [];
  env.client.on("message", (m) => seen.push(m.message.seq));
  env.client.start();
  const ws = await online(env, [{ conv: "g:7", group: 7, name: "t", last_seq: 5, read_seq: 5, unread: 0 }]);
  const msg = (seq) => ({ conv: "g:7", seq, from: 2, ts: seq, kind: "text", body: `b${seq}`, cmid: `c${seq}` });
  ws.recv({ type: "msg", ...msg(6) });
  ws.recv({ type: "msg", ...msg(250) }); // 7..249 missing
  await flush();
  let h = ws.frames("history");
  assert.equal(h.length, 1);
  assert.equal(h[0].after, 6);
  ws.recv({ type: "msg", ...msg(251) }); // no second fill while one runs
  assert.equal(ws.frames("history").length, 1);
  const page1 = Array.from({ length: 200 }, (_, i) => msg(7 + i));
  ws.recv({ type: "history", rid: h[0].rid, conv: "g:7", messages: page1, more: true });
  await flush();
  h = ws.frames("history");
  assert.equal(h.length, 2);
  assert.equal(h[1].after, 206);
  // The page overlaps what the pushes brought: 250 and 251 come again.
  const page2 = Array.from({ length: 46 }, (_, i) => msg(207 + i)).filter((m) => m.seq <= 251);
  ws.recv({ type: "history", rid: h[1].rid, conv: "g:7", messages: page2, more: false });
  await flush();
  assert.equal(ws.frames("history").length, 2, "nothing missing any more");
  const want = Array.from({ length: 246 }, (_, i) => 6 + i);
  assert.deepEqual([...seen].sort((a, b) => a - b), want, "each seq exactly once");
  assert.equal(env.client.seqs.held("g:7"), 251);
  assert.equal(env.client.convs.get("g:7").last_seq, 251);
  assert.equal(env.client.convs.get("g:7").unread, 246);
});

test("catch-up after reconnect fetches what arrived while away", async () => {
  const env = newClient({ uid: 1 });
  const seen = [];
  env.client.on("message", (m) => seen.push(`${m.message.conv}/${m.message.seq}/${m.source}`));
  env.client.start();
  let ws = await online(env, [
    { conv: "d:1:2", peer: 2, last_seq: 3, read_seq: 3, unread: 0, last: { seq: 3, from: 2, ts: 3, body: "x" } },
    { conv: "g:7", group: 7, name: "t", last_seq: 8, read_seq: 8, unread: 0 },
  ]);
  ws.serverClose(1006);
  env.clock.advance(1000);
  ws = env.WS.last();
  ws.open();
  ws.welcome();
  // Pushes may arrive before the convs reply.
  ws.recv({ type: "msg", conv: "d:1:2", seq: 6, from: 2, ts: 6, kind: "text", body: "six", cmid: "c6" });
  ws.recv({
    type: "convs",
    rid: ws.frames("convs")[0].rid,
    items: [
      { conv: "d:1:2", peer: 2, last_seq: 6, read_seq: 3, unread: 3, last: { conv: "d:1:2", seq: 6, from: 2, ts: 6, body: "six" } },
      { conv: "g:7", group: 7, name: "t", last_seq: 8, read_seq: 8, unread: 0 },
      { conv: "d:1:3", peer: 3, last_seq: 2, read_seq: 0, unread: 2, last: { conv: "d:1:3", seq: 2, from: 3, ts: 7, body: "new" } },
    ],
    total_unread: 5,
  });
  await flush();
  const h = ws.frames("history");
  assert.equal(h.length, 1, "only the conv with a gap; g:7 is up to date, d:1:3 is new");
  assert.deepEqual([h[0].conv, h[0].after], ["d:1:2", 3]);
  ws.recv({
    type: "history",
    rid: h[0].rid,
    conv: "d:1:2",
    messages: [4, 5, 6].map((seq) => ({ conv: "d:1:2", seq, from: 2, ts: seq, kind: "text", body: `b${seq}`, cmid: `c${seq}` })),
    more: false,
  });
  await flush();
  assert.deepEqual(seen, ["d:1:2/6/push", "d:1:2/4/history", "d:1:2/5/history"]);
  assert.equal(env.client.totalUnread(), 5);
  assert.deepEqual(
    env.client.conversations().map((c) => c.conv),
    ["d:1:3", "d:1:2", "g:7"],
  );
});

test("read frames update unread counts; requests fail fast while offline", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  const ws = await online(env, [{ conv: "d:1:2", peer: 2, last_seq: 4, read_seq: 1, unread: 3 }]);
  assert.equal(env.client.totalUnread(), 3);
  const p = env.client.markRead("d:1:2", 4);
  assert.equal(env.client.totalUnread(), 0, "optimistic");
  const rf = ws.frames("read")[0];
  assert.deepEqual([rf.conv, rf.seq], ["d:1:2", 4]);
  ws.recv({ type: "read", rid: rf.rid, conv: "d:1:2", seq: 4, unread: 0, total_unread: 0 });
  assert.equal((await p).unread, 0);
  // A read from another device of the same user.
  ws.recv({ type: "msg", conv: "d:1:2", seq: 5, from: 2, ts: 5, kind: "text", body: "b", cmid: "c" });
  assert.equal(env.client.totalUnread(), 1);
  ws.recv({ type: "read", conv: "d:1:2", seq: 5, unread: 0, total_unread: 0 });
  assert.equal(env.client.totalUnread(), 0);
  // A request in flight when the connection drops rejects.
  const hp = env.client.history("d:1:2", { before: 3 });
  ws.serverClose(1006);
  await assert.rejects(hp, /connection closed/);
  await assert.rejects(env.client.history("d:1:2"), /offline/);
});

test("groups: create and join add the conversation", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  const ws = await online(env);
  const cp = env.client.createGroup("team", [2, 3]);
  const gc = ws.frames("group_create")[0];
  assert.deepEqual([gc.name, gc.members], ["team", [2, 3]]);
  ws.recv({ type: "group", rid: gc.rid, group: 7, name: "team", count: 3, members: [1, 2, 3], more: false });
  assert.equal((await cp).group, 7);
  assert.equal(env.client.convs.get("g:7").name, "team");
  const jp = env.client.joinGroup(9);
  const gj = ws.frames("group_join")[0];
  assert.equal(gj.group, 9);
  ws.recv({ type: "error", rid: gj.rid, code: "not_found", message: "no group" });
  await assert.rejects(jp, (e) => e.code === "not_found");
});

test("stop closes with 1000 and never reconnects", async () => {
  const env = newClient();
  env.client.start();
  const ws = await online(env);
  env.client.stop();
  assert.equal(ws.closed, 1000);
  assert.equal(env.client.state, "offline");
  env.clock.advance(100000);
  assert.equal(env.WS.sockets.length, 1);
});

test("malformed and unknown frames are ignored", async () => {
  const env = newClient();
  env.client.start();
  const ws = await online(env);
  ws.recv("not json");
  ws.recv({ type: "future_thing", x: 1 });
  ws.recv({ type: "msg", conv: 5, seq: "x" });
  assert.equal(env.client.state, "online");
});

test("HTTP API: JSON bodies, bearer token, error codes", async () => {
  const calls = [];
  const api = new MagpieAPI({
    base: "http://h",
    fetch: async (url, init) => {
      calls.push([url, init.method, init.headers, init.body]);
      if (url.endsWith("/api/login")) return { ok: false, status: 401, json: async () => ({ error: "unauthorized", message: "bad credentials" }) };
      return { ok: true, status: 200, json: async () => [{ uid: 1, username: "alice" }] };
    },
  });
  await assert.rejects(api.login("a", "b"), (e) => e instanceof APIError && e.status === 401 && e.code === "unauthorized");
  assert.deepEqual(JSON.parse(calls[0][3]), { username: "a", password: "b" });
  const users = await api.users("T", { q: "al", limit: 50, after: 3 });
  assert.equal(users[0].username, "alice");
  assert.equal(calls[1][0], "http://h/api/users?q=al&limit=50&after=3");
  assert.equal(calls[1][2].Authorization, "Bearer T");
});

test("a persisted outbox is queued again with its cmids after a reload", async () => {
  const first = newClient({ uid: 1 });
  first.client.start();
  first.WS.last().open(); // never welcomed: the send stays queued
  let outboxEvents = 0;
  first.client.on("outbox", () => outboxEvents++);
  first.client.send({ to: 2 }, "kept across reloads");
  assert.equal(outboxEvents, 1);
  const saved = JSON.parse(JSON.stringify(first.client.pending()));

  const second = newClient({ uid: 1 });
  for (const p of saved) second.client.send(p.target, p.body, { cmid: p.cmid, kind: p.kind });
  second.client.start();
  const ws = await online(second);
  assert.deepEqual(ws.frames("send").map((f) => [f.cmid, f.to, f.body]), [[saved[0].cmid, 2, "kept across reloads"]]);
});

test("a read mark made while offline reaches the server after the reconnect", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  let ws = await online(env, [{ conv: "d:1:2", peer: 2, last_seq: 4, read_seq: 1, unread: 3 }]);
  ws.serverClose(1006);
  env.client.markRead("d:1:2", 4);
  assert.equal(env.client.totalUnread(), 0, "local at once");
  env.clock.advance(1000);
  ws = await online(env, [{ conv: "d:1:2", peer: 2, last_seq: 4, read_seq: 1, unread: 3 }]);
  const rf = ws.frames("read");
  assert.deepEqual(rf.map((f) => [f.conv, f.seq]), [["d:1:2", 4]]);
  ws.recv({ type: "read", rid: rf[0].rid, conv: "d:1:2", seq: 4, unread: 0, total_unread: 0 });
  await flush();
  assert.equal(env.client.totalUnread(), 0);
  // Confirmed: the next reconnect does not send it again.
  ws.serverClose(1006);
  env.clock.advance(1000);
  ws = await online(env, [{ conv: "d:1:2", peer: 2, last_seq: 4, read_seq: 4, unread: 0 }]);
  assert.equal(ws.frames("read").length, 0);
});

// ---- protocol version 2 ----

const sys = (conv, seq, from, body) => ({ type: "msg", conv, seq, from, ts: 100 + seq, kind: "system", body: JSON.stringify(body), cmid: `sys:${seq}` });

test("v2 groups: public create, owner in replies, add/remove/rename frames", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  const ws = await online(env, [], { version: 2 });
  assert.equal(env.client.version, 2);
  const cp = env.client.createGroup("team", [2], { public: true });
  const gc = ws.frames("group_create")[0];
  assert.deepEqual([gc.name, gc.members, gc.public], ["team", [2], true]);
  ws.recv({ type: "group", rid: gc.rid, group: 7, name: "team", count: 2, members: [1, 2], more: false, public: true, owner: 1 });
  await cp;
  const it = env.client.convs.get("g:7");
  assert.deepEqual([it.name, it.public, it.owner, it.count, it.member], ["team", true, 1, 2, true]);
  // A private group omits the flag (v1 servers never see it).
  env.client.createGroup("quiet", []);
  assert.equal("public" in ws.frames("group_create")[1], false);

  const ap = env.client.addMembers(7, [3, 4]);
  const ga = ws.frames("group_add")[0];
  assert.deepEqual([ga.group, ga.members], [7, [3, 4]]);
  ws.recv({ type: "group", rid: ga.rid, group: 7, name: "team", count: 4, public: true, owner: 1 });
  assert.equal((await ap).count, 4);
  assert.equal(it.count, 4);
  const rp = env.client.removeMembers(7, [4]);
  const gr = ws.frames("group_remove")[0];
  assert.deepEqual([gr.group, gr.members], [7, [4]]);
  ws.recv({ type: "error", rid: gr.rid, code: "forbidden", message: "not the owner" });
  await assert.rejects(rp, (e) => e.code === "forbidden");
  const np = env.client.renameGroup(7, "crew");
  const gn = ws.frames("group_rename")[0];
  assert.deepEqual([gn.group, gn.name], [7, "crew"]);
  ws.recv({ type: "group", rid: gn.rid, group: 7, name: "crew", count: 3, public: true, owner: 1 });
  await np;
  assert.equal(it.name, "crew");
});

test("v2 system messages become group events, through message and groupevent", async () => {
  const env = newClient({ uid: 2 });
  const seen = [];
  const bodies = new Map();
  env.client.on("message", ({ message }) => bodies.set(message.seq, message));
  env.client.on("message", ({ message }) => seen.push(["message", message.seq, message.event ? message.event.event : null]));
  env.client.on("groupevent", ({ message, event }) => seen.push(["groupevent", message.seq, event.event]));
  env.client.start();
  const ws = await online(env, [{ conv: "g:7", group: 7, name: "team", last_seq: 10, read_seq: 10, unread: 0, public: false, owner: 1 }], { version: 2, uid: 2 });
  const it = env.client.convs.get("g:7");
  assert.deepEqual([it.public, it.owner, it.member], [false, 1, true]);
  ws.recv(sys("g:7", 11, 1, { event: "renamed", name: "crew" }));
  ws.recv({ type: "msg", conv: "g:7", seq: 12, from: 3, ts: 5, kind: "text", body: "hi", cmid: "c1" });
  ws.recv(sys("g:7", 13, 1, { event: "archived", until: 7 }));
  ws.recv(sys("g:7", 14, 1, { event: "left", owner: 3 }));
  assert.deepEqual(seen, [
    ["message", 11, "renamed"],
    ["groupevent", 11, "renamed"],
    ["message", 12, null],
    ["message", 13, "archived"],
    ["groupevent", 13, "archived"],
    ["message", 14, "left"],
    ["groupevent", 14, "left"],
  ]);
  assert.deepEqual([it.name, it.owner], ["crew", 3]);
  // An unknown event passes through untouched.
  assert.equal(bodies.get(13).body, '{"event":"archived","until":7}');
  assert.deepEqual(bodies.get(13).event, { event: "archived", until: 7 });
  assert.equal(bodies.get(13).kind, "system");
  // A gap filled after a later rename cannot undo it: seq 20 renames to
  // "new", then the fill brings 15, an older rename.
  ws.recv(sys("g:7", 20, 1, { event: "renamed", name: "new" }));
  assert.equal(it.name, "new");
  await flush();
  const h = ws.frames("history").at(-1);
  assert.deepEqual([h.conv, h.after], ["g:7", 14]);
  const fill = [15, 16, 17, 18, 19].map((seq) => {
    const m = seq === 15 ? sys("g:7", 15, 1, { event: "renamed", name: "old" }) : { conv: "g:7", seq, from: 3, ts: seq, kind: "text", body: "x", cmid: `c${seq}` };
    delete m.type;
    return m;
  });
  ws.recv({ type: "history", rid: h.rid, conv: "g:7", messages: fill, more: false });
  await flush();
  assert.equal(env.client.seqs.held("g:7"), 20);
  assert.equal(it.name, "new");
  // Removed: the user is no longer a member.
  ws.recv(sys("g:7", 21, 1, { event: "removed", members: [2, 4] }));
  assert.equal(it.member, false);
});

test("v2 events are not decoded from a v1 server, where any client may send kind system", async () => {
  const env = newClient({ uid: 2 });
  const events = [];
  let msg = null;
  env.client.on("groupevent", (e) => events.push(e));
  env.client.on("message", ({ message }) => (msg = message));
  env.client.start();
  const ws = await online(env, [{ conv: "g:7", group: 7, name: "team", last_seq: 10, read_seq: 10, unread: 0 }]);
  assert.equal(env.client.version, 1);
  ws.recv(sys("g:7", 11, 1, { event: "renamed", name: "evil" }));
  assert.equal(events.length, 0);
  assert.equal(msg.event, undefined);
  assert.equal(msg.body, '{"event":"renamed","name":"evil"}');
  assert.equal(env.client.convs.get("g:7").name, "team");
});

test("v2: being added to a group fetches its name with convs", async () => {
  const env = newClient({ uid: 2 });
  env.client.start();
  const ws = await online(env, [], { version: 2, uid: 2 });
  ws.recv(sys("g:9", 4, 1, { event: "added", members: [2, 3] }));
  const it = env.client.convs.get("g:9");
  assert.equal(it.member, true);
  const convs = ws.frames("convs");
  assert.equal(convs.length, 2, "a convs request for the new group's name");
  ws.recv({ type: "convs", rid: convs[1].rid, items: [{ conv: "g:9", group: 9, name: "weekend", last_seq: 4, read_seq: 3, unread: 1, public: false, owner: 1 }] });
  await flush();
  assert.deepEqual([it.name, it.owner, it.unread], ["weekend", 1, 1]);
  // A "created" event names the group itself: no extra request.
  ws.recv(sys("g:10", 1, 1, { event: "created", name: "fresh", public: true, count: 2 }));
  assert.equal(ws.frames("convs").length, 2);
  const g10 = env.client.convs.get("g:10");
  assert.deepEqual([g10.name, g10.public, g10.owner, g10.count], ["fresh", true, 1, 2]);
});

test("v2 receipts: frames, peer_read_seq from convs, the receipts request, readBy", async () => {
  const env = newClient({ uid: 1 });
  const got = [];
  env.client.on("receipt", (r) => got.push(r));
  env.client.start();
  const ws = await online(
    env,
    [
      { conv: "d:1:2", peer: 2, last_seq: 5, read_seq: 5, unread: 0, peer_read_seq: 3 },
      { conv: "g:7", group: 7, name: "t", last_seq: 9, read_seq: 9, unread: 0, public: false, owner: 1 },
    ],
    { version: 2 },
  );
  const d = env.client.convs.get("d:1:2");
  assert.equal(d.peer_read_seq, 3);
  assert.deepEqual(env.client.readBy("d:1:2", 3), [2]);
  assert.deepEqual(env.client.readBy("d:1:2", 4), []);
  ws.recv({ type: "receipt", conv: "d:1:2", uid: 2, seq: 5 });
  assert.deepEqual(got, [{ conv: "d:1:2", uid: 2, seq: 5 }]);
  assert.equal(d.peer_read_seq, 5);
  ws.recv({ type: "receipt", conv: "d:1:2", uid: 2, seq: 4 }); // late and lower: ignored in state
  assert.equal(d.peer_read_seq, 5);

  const rp = env.client.receipts("g:7");
  const rq = ws.frames("receipts")[0];
  assert.deepEqual([rq.conv, typeof rq.rid], ["g:7", "string"]);
  ws.recv({ type: "receipts", rid: rq.rid, conv: "g:7", items: [{ uid: 2, read_seq: 9 }, { uid: 3, read_seq: 6 }] });
  assert.deepEqual(await rp, [{ uid: 2, read_seq: 9 }, { uid: 3, read_seq: 6 }]);
  assert.deepEqual(env.client.readBy("g:7", 7), [2]);
  ws.recv({ type: "receipt", conv: "g:7", uid: 3, seq: 9 });
  assert.deepEqual(env.client.readBy("g:7", 9), [2, 3]);
  // A large group: forbidden comes back as a RequestError.
  const big = env.client.receipts("g:8");
  ws.recv({ type: "error", rid: ws.frames("receipts")[1].rid, code: "forbidden" });
  await assert.rejects(big, (e) => e.code === "forbidden");
});

test("v2 typing: one frame per interval, a burst ends with one more, a send drops it; nothing offline or to v1", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  let ws = await online(env, [], { version: 2 });
  const typings = () => ws.frames("typing").map((f) => f.conv);
  assert.equal(env.client.typing("d:1:2"), true, "the first call goes out at once");
  assert.deepEqual(ws.frames("typing")[0], { type: "typing", conv: "d:1:2" });
  env.clock.advance(300);
  for (let i = 0; i < 10; i++) assert.equal(env.client.typing("d:1:2"), false);
  assert.equal(env.client.typing("g:7"), true, "each conversation has its own interval");
  assert.deepEqual(typings(), ["d:1:2", "g:7"]);
  // The calls inside the interval become one frame at its end.
  env.clock.advance(1699);
  assert.deepEqual(typings(), ["d:1:2", "g:7"]);
  env.clock.advance(1);
  assert.deepEqual(typings(), ["d:1:2", "g:7", "d:1:2"]);
  env.clock.advance(10000);
  assert.equal(typings().length, 3, "nothing more without calls");
  // Typing then sending: the frame due at the interval's end is dropped.
  assert.equal(env.client.typing("d:1:2"), true);
  env.clock.advance(500);
  assert.equal(env.client.typing("d:1:2"), false);
  env.client.send({ to: 2 }, "sent now");
  env.clock.advance(5000);
  assert.deepEqual(typings(), ["d:1:2", "g:7", "d:1:2", "d:1:2"]);
  assert.equal(env.client.typing("nonsense"), false);
  // Offline: nothing is queued, and a due frame does not go out later.
  env.clock.advance(5000);
  assert.equal(env.client.typing("g:7"), true);
  env.client.typing("g:7");
  ws.serverClose(1006);
  assert.equal(env.client.typing("g:7"), false);
  env.clock.advance(999);
  ws = await online(env, [], { version: 2 });
  env.clock.advance(5000);
  assert.equal(ws.frames("typing").length, 0, "no frame left over from the old connection");
  // A v1 server gets no typing frames.
  ws.serverClose(1006);
  env.clock.advance(1000);
  ws = await online(env);
  assert.equal(env.client.version, 1);
  env.clock.advance(5000);
  assert.equal(env.client.typing("g:7"), false);
  assert.equal(ws.frames("typing").length, 0);
});

test("v2 typing indicator: starts, extends, expires 6 s after the last frame, ends on a message", async () => {
  const env = newClient({ uid: 1 });
  const seen = [];
  env.client.on("typing", (e) => seen.push(`${e.conv}/${e.uid}/${e.typing}`));
  env.client.on("message", ({ message }) => seen.push(`msg ${message.conv}/${message.seq}`));
  env.client.start();
  const ws = await online(env, [{ conv: "d:1:2", peer: 2, last_seq: 0, read_seq: 0, unread: 0 }], { version: 2 });
  ws.recv({ type: "typing", conv: "d:1:2", uid: 2 });
  assert.deepEqual(env.client.typers("d:1:2"), [2]);
  env.clock.advance(5000);
  ws.recv({ type: "typing", conv: "d:1:2", uid: 2 }); // extends, no new event
  env.clock.advance(5999);
  assert.deepEqual(env.client.typers("d:1:2"), [2], "6 s after the last frame, not the first");
  env.clock.advance(1);
  assert.deepEqual(env.client.typers("d:1:2"), []);
  assert.deepEqual(seen, ["d:1:2/2/true", "d:1:2/2/false"]);
  // A message from the typist ends it at once, before the message shows.
  ws.recv({ type: "typing", conv: "d:1:2", uid: 2 });
  ws.recv({ type: "typing", conv: "g:7", uid: 3 });
  ws.recv({ type: "msg", conv: "d:1:2", seq: 1, from: 2, ts: 1, kind: "text", body: "hi", cmid: "c1" });
  assert.deepEqual(seen.slice(2), ["d:1:2/2/true", "g:7/3/true", "d:1:2/2/false", "msg d:1:2/1"]);
  assert.deepEqual(env.client.typers("g:7"), [3], "other conversations keep theirs");
  // Own typing (another device) and malformed frames are not indicators.
  ws.recv({ type: "typing", conv: "d:1:3", uid: 1 });
  ws.recv({ type: "typing", conv: "d:1:3", uid: "x" });
  assert.deepEqual(env.client.typers("d:1:3"), []);
  env.clock.advance(6000);
  assert.deepEqual(env.client.typers("g:7"), []);
});

test("v2 presence: subscribe, pushes, resubscribe once after every welcome, unsubscribe", async () => {
  const env = newClient({ uid: 1 });
  const pushes = [];
  env.client.on("presence", ({ items }) => pushes.push(items.map((p) => `${p.uid}:${p.online ? "on" : "off"}`).join(",")));
  env.client.start();
  let ws = await online(env, [], { version: 2 });
  await assert.rejects(env.client.subscribePresence([2, 0]), /positive uids/);
  await assert.rejects(env.client.subscribePresence(Array.from({ length: 1001 }, (_, i) => i + 1)), /0 to 1000/);
  const sp = env.client.subscribePresence([2, 3]);
  let sub = ws.frames("presence_sub");
  assert.deepEqual(sub.map((f) => f.uids), [[2, 3]]);
  ws.recv({ type: "presence", rid: sub[0].rid, items: [{ uid: 2, online: true, last_seen: 0 }, { uid: 3, online: false, last_seen: 77 }] });
  assert.deepEqual((await sp).map((p) => p.uid), [2, 3]);
  assert.deepEqual(env.client.presence(3), { uid: 3, online: false, last_seen: 77 });
  ws.recv({ type: "presence", items: [{ uid: 2, online: false, last_seen: 99 }, { uid: 9, online: true, last_seen: 0 }] });
  assert.deepEqual(env.client.presence(2), { uid: 2, online: false, last_seen: 99 });
  assert.equal(env.client.presence(9), undefined, "not subscribed");
  assert.deepEqual(pushes, ["2:on,3:off", "2:off"]);

  // Reconnect: one presence_sub with the list, sent by the client itself.
  ws.serverClose(1006);
  env.clock.advance(1000);
  ws = await online(env, [], { version: 2 });
  sub = ws.frames("presence_sub");
  assert.deepEqual(sub.map((f) => f.uids), [[2, 3]]);
  ws.recv({ type: "presence", rid: sub[0].rid, items: [{ uid: 2, online: true, last_seen: 0 }, { uid: 3, online: true, last_seen: 0 }] });
  await flush();
  assert.equal(env.client.presence(3).online, true);
  assert.equal(pushes.at(-1), "2:on,3:on", "the resubscribe's reply shows what changed while away");

  // A call made while offline is answered by the resubscribe: one frame.
  ws.serverClose(1006);
  const off = env.client.subscribePresence([3]);
  assert.equal(env.client.presence(2), undefined, "dropped users are forgotten at once");
  env.clock.advance(1000);
  ws = await online(env, [], { version: 2 });
  sub = ws.frames("presence_sub");
  assert.deepEqual(sub.map((f) => f.uids), [[3]]);
  ws.recv({ type: "presence", rid: sub[0].rid, items: [{ uid: 3, online: false, last_seen: 5 }] });
  assert.deepEqual(await off, [{ uid: 3, online: false, last_seen: 5 }]);

  // Unsubscribe: an empty list goes out, and later reconnects send nothing.
  const un = env.client.subscribePresence([]);
  sub = ws.frames("presence_sub");
  assert.deepEqual(sub.at(-1).uids, []);
  ws.recv({ type: "presence", rid: sub.at(-1).rid, items: [] });
  assert.deepEqual(await un, []);
  ws.serverClose(1006);
  env.clock.advance(1000);
  ws = await online(env, [], { version: 2 });
  assert.equal(ws.frames("presence_sub").length, 0);
});

test("v2 presence on a v1 server rejects instead of sending", async () => {
  const env = newClient({ uid: 1 });
  env.client.start();
  // Subscribed before the first welcome: the v1 welcome rejects it.
  const early = env.client.subscribePresence([2]);
  const ws = await online(env);
  await assert.rejects(early, (e) => e.code === "not_supported");
  await assert.rejects(env.client.subscribePresence([2]), (e) => e.code === "not_supported");
  assert.equal(ws.frames("presence_sub").length, 0);
});

test("v2 history pages and convs' last messages carry decoded events; receipts work before convs lists the chat", async () => {
  const env = newClient({ uid: 2 });
  env.client.start();
  const ws = env.WS.last();
  ws.open();
  ws.welcome({ version: 2, uid: 2 });
  // The receipts reply comes before the catch-up's convs reply.
  const rp = env.client.receipts("g:7");
  ws.recv({ type: "receipts", rid: ws.frames("receipts")[0].rid, conv: "g:7", items: [{ uid: 1, read_seq: 2 }] });
  await rp;
  assert.deepEqual(env.client.readBy("g:7", 2), [1]);
  const last = { conv: "g:7", seq: 2, from: 1, ts: 5, kind: "system", body: '{"event":"renamed","name":"crew"}', cmid: "sys:2" };
  ws.recv({ type: "convs", rid: ws.frames("convs")[0].rid, items: [{ conv: "g:7", group: 7, name: "crew", last_seq: 2, read_seq: 1, unread: 1, public: false, owner: 1, last }] });
  await flush();
  assert.deepEqual(env.client.convs.get("g:7").last.event, { event: "renamed", name: "crew" });
  assert.deepEqual(env.client.readBy("g:7", 2), [1], "kept by the convs reply");
  const hp = env.client.history("g:7", { limit: 50 });
  const h = ws.frames("history").at(-1);
  ws.recv({ type: "history", rid: h.rid, conv: "g:7", messages: [
    { seq: 1, from: 1, ts: 4, kind: "system", body: '{"event":"created","name":"team","public":false,"count":2}', cmid: "sys:1" },
    { seq: 2, from: 1, ts: 5, kind: "text", body: '{"event":"left"}', cmid: "sys:x" },
  ], more: false });
  const res = await hp;
  assert.equal(res.messages[0].event.event, "created");
  assert.equal(res.messages[1].event, undefined, "kind text is never an event");
});
