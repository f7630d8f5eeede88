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
