// Magpie chat UI on the JS SDK. Every piece of user data reaches the DOM
// through textContent or attributes, never through the HTML parser.
import { MagpieAPI, MagpieClient, APIError, directConv, groupConv, parseConv, randomId } from "./sdk/magpie.js";

const api = new MagpieAPI();
const $ = (id) => document.getElementById(id);
const SESSION_KEY = "magpie.session";
const DEVICE_KEY = "magpie.device";
const PAGE = 50;
const PEOPLE_PAGE = 100;

/** el creates an element with a class and text content. */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function svgIcon(path) {
  const ns = "http://www.w3.org/2000/svg";
  const s = document.createElementNS(ns, "svg");
  s.setAttribute("viewBox", "0 0 24 24");
  s.setAttribute("aria-hidden", "true");
  const p = document.createElementNS(ns, "path");
  p.setAttribute("d", path);
  s.append(p);
  return s;
}
const ICON_CHECK = "M9 16.2 4.8 12l-1.4 1.4L9 19 21 7l-1.4-1.4z";
const ICON_CLOCK = "M12 2a10 10 0 1 0 10 10A10 10 0 0 0 12 2zm0 18a8 8 0 1 1 8-8 8 8 0 0 1-8 8zm.5-13H11v6l5.2 3.2.8-1.3-4.5-2.7z";

// ---------- session ----------

function loadSession() {
  for (const store of [sessionStorage, localStorage]) {
    try {
      const s = JSON.parse(store.getItem(SESSION_KEY) || "null");
      if (s && s.token && s.ws_url && s.uid && (!s.expires_at || s.expires_at > Date.now() + 5000)) return s;
    } catch {
      // ignore a corrupt entry
    }
  }
  return null;
}

function saveSession(s) {
  const v = JSON.stringify(s);
  sessionStorage.setItem(SESSION_KEY, v);
  localStorage.setItem(SESSION_KEY, v);
}

function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
  localStorage.removeItem(SESSION_KEY);
}

// One device id per tab: a reload of the tab replaces its old connection
// (4004 closes the stale one) and two tabs never fight over one id.
function deviceId() {
  let d = sessionStorage.getItem(DEVICE_KEY);
  if (!d) {
    d = `web-${randomId().slice(0, 16)}`;
    sessionStorage.setItem(DEVICE_KEY, d);
  }
  return d;
}

// ---------- state ----------

const S = {
  session: null,
  client: null,
  users: new Map(), // uid -> username
  usersLoadedAt: 0,
  active: null, // conv id of the open chat
  activeTarget: null, // {to} or {group}
  chats: new Map(), // conv -> {bySeq: Map, pending: Map, more, loaded, loading}
  tab: "chats",
  query: "",
  people: [],
  peopleMore: false,
  renderQueued: false,
  readQueued: false,
};

function chatState(conv) {
  let c = S.chats.get(conv);
  if (!c) {
    c = { bySeq: new Map(), pending: new Map(), more: false, loaded: false, loading: false, count: 0 };
    S.chats.set(conv, c);
  }
  return c;
}

function userName(uid) {
  const name = S.users.get(uid);
  if (name) return name;
  // Someone new (registered after the list was loaded): refresh, at most every 5 s.
  if (S.session && Date.now() - S.usersLoadedAt > 5000) {
    S.usersLoadedAt = Date.now();
    loadUsers();
  }
  return `user ${uid}`;
}

function convTitle(it) {
  if (!it) return "";
  if (it.group) return it.name || `Group ${it.group}`;
  return userName(it.peer);
}

function hueOf(s) {
  let h = 0;
  for (const ch of String(s)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function setAvatar(node, label, isGroup) {
  const text = String(label || "?").trim();
  const parts = text.split(/[\s_.-]+/).filter(Boolean);
  const initials = parts.length > 1 ? [...parts[0]][0] + [...parts[1]][0] : [...text].slice(0, 1).join("");
  node.textContent = initials || "?";
  node.style.setProperty("--hue", String(hueOf(text)));
  node.classList.toggle("group", !!isGroup);
}

// ---------- time formatting ----------

const fmtTime = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const fmtWeekday = new Intl.DateTimeFormat(undefined, { weekday: "short" });
const fmtDate = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const fmtDay = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });

function startOfDay(t) {
  const d = new Date(t);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

function listTime(ts) {
  if (!ts) return "";
  const today = startOfDay(Date.now());
  if (ts >= today) return fmtTime.format(ts);
  if (ts >= today - 6 * 86400000) return fmtWeekday.format(ts);
  return fmtDate.format(ts);
}

function dayLabel(ts) {
  const today = startOfDay(Date.now());
  const d = startOfDay(ts);
  if (d === today) return "Today";
  if (d === today - 86400000) return "Yesterday";
  return fmtDay.format(ts);
}

// ---------- views ----------

function showLogin(notice) {
  $("main-view").hidden = true;
  $("login-view").hidden = false;
  const err = $("auth-error");
  err.hidden = !notice;
  err.textContent = notice || "";
  document.title = "Magpie";
  $("auth-user").focus();
}

let authMode = "login";
function setAuthMode(mode) {
  authMode = mode;
  $("tab-login").classList.toggle("active", mode === "login");
  $("tab-register").classList.toggle("active", mode === "register");
  $("tab-login").setAttribute("aria-selected", String(mode === "login"));
  $("tab-register").setAttribute("aria-selected", String(mode === "register"));
  $("auth-submit").textContent = mode === "login" ? "Sign in" : "Create account";
  $("auth-pass").autocomplete = mode === "login" ? "current-password" : "new-password";
  $("auth-hint").hidden = mode === "login";
  $("auth-error").hidden = true;
}

function authErrorText(e, mode) {
  if (!(e instanceof APIError)) return "Something went wrong. Please try again.";
  if (e.status === 0) return "Cannot reach the server. Check your connection.";
  if (e.status === 401) return "Wrong username or password.";
  if (e.status === 409) return "That username is taken.";
  if (e.status === 429) return "Too many attempts. Wait a minute and try again.";
  if (e.status === 400) return mode === "register" ? "Usernames are 1–32 letters, digits, “_”, “.” or “-”; passwords 8–128 characters." : e.message;
  return e.message || "Something went wrong.";
}

async function onAuthSubmit(ev) {
  ev.preventDefault();
  const username = $("auth-user").value.trim();
  const password = $("auth-pass").value;
  const btn = $("auth-submit");
  const err = $("auth-error");
  err.hidden = true;
  if (!username || !password) {
    err.textContent = "Enter a username and a password.";
    err.hidden = false;
    return;
  }
  btn.disabled = true;
  try {
    if (authMode === "register") await api.register(username, password);
    const res = await api.login(username, password);
    const session = { uid: res.uid, token: res.token, expires_at: res.expires_at, ws_url: res.ws_url, username };
    saveSession(session);
    $("auth-pass").value = "";
    startApp(session);
  } catch (e) {
    err.textContent = authErrorText(e, authMode);
    err.hidden = false;
  } finally {
    btn.disabled = false;
  }
}

function logout(notice) {
  if (S.client) S.client.stop();
  S.client = null;
  clearSession();
  S.session = null;
  S.active = null;
  S.chats.clear();
  showLogin(notice);
}

// ---------- app ----------

function startApp(session) {
  if (S.client) S.client.stop();
  S.session = session;
  S.active = null;
  S.chats.clear();
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  $("me-name").textContent = session.username || userName(session.uid);
  setAvatar($("me-avatar"), session.username || "?");
  S.users.set(session.uid, session.username);
  showChat(false);

  const client = new MagpieClient({ url: session.ws_url, token: session.token, uid: session.uid, device: deviceId() });
  S.client = client;
  window.magpie = client; // handy from the devtools console
  client.on("state", ({ state, code }) => {
    if (client !== S.client) return;
    renderConn(state, code);
    if (state === "online") onOnline();
  });
  client.on("convs", scheduleRender);
  client.on("message", ({ message }) => onMessage(message));
  client.on("sendfailed", ({ cmid, conv, code }) => onSendFailed(conv, cmid, code));
  client.on("unauthorized", () => logout("Your session has expired. Please sign in again."));
  client.on("outbox", () => saveOutbox(client));
  restoreOutbox(client);
  client.start();
  renderConn(client.state);
  loadUsers();
}

// The outbox survives a reload of the tab: unsent messages are queued again
// with their cmids, so a message is neither lost nor stored twice.
function outboxKey(uid) {
  return `magpie.outbox.${uid}`;
}

function saveOutbox(client) {
  if (client !== S.client) return;
  const list = client.pending();
  try {
    if (list.length) sessionStorage.setItem(outboxKey(client.uid), JSON.stringify(list));
    else sessionStorage.removeItem(outboxKey(client.uid));
  } catch {
    // storage full or disabled: the outbox still lives in memory
  }
}

function restoreOutbox(client) {
  let list = [];
  try {
    list = JSON.parse(sessionStorage.getItem(outboxKey(client.uid)) || "[]");
  } catch {
    list = [];
  }
  for (const p of Array.isArray(list) ? list : []) {
    if (!p || typeof p.cmid !== "string" || typeof p.body !== "string" || !p.target) continue;
    const s = client.send(p.target, p.body, { cmid: p.cmid, kind: p.kind });
    chatState(s.conv).pending.set(s.cmid, { body: p.body, ts: Date.now() });
  }
}

function onOnline() {
  // Load what an open chat is missing (first page, or after a failure).
  if (S.active) {
    const c = chatState(S.active);
    if (!c.loaded) loadNewest(S.active);
  }
  if (S.users.size < 2 || Date.now() - S.usersLoadedAt > 60000) loadUsers();
  scheduleRender();
  scheduleRead();
}

async function loadUsers() {
  if (!S.session) return;
  try {
    let after = 0;
    for (let page = 0; page < 25; page++) {
      const list = await api.users(S.session.token, { limit: 200, after });
      for (const u of list) S.users.set(u.uid, u.username);
      if (list.length < 200) break;
      after = list[list.length - 1].uid;
    }
    S.usersLoadedAt = Date.now();
    scheduleRender();
  } catch (e) {
    if (e instanceof APIError && e.status === 401) logout("Your session has expired. Please sign in again.");
  }
}

function renderConn(state, code) {
  const labels = { idle: "Connecting…", connecting: "Connecting…", online: "Online", reconnecting: "Reconnecting…", offline: "Offline" };
  const conn = $("conn");
  conn.dataset.state = state === "idle" ? "connecting" : state;
  $("conn-label").textContent = labels[state] || state;
  const banner = $("banner");
  banner.replaceChildren();
  banner.classList.remove("bad");
  if (state === "reconnecting") {
    banner.append(el("span", "", "Connection lost. Reconnecting… Messages you send now go out as soon as you are back."));
    const b = el("button", "ghost small", "Retry now");
    b.type = "button";
    b.onclick = () => S.client && S.client.reconnectNow();
    banner.append(b);
    banner.hidden = false;
  } else if (state === "offline" && code === 4004) {
    banner.classList.add("bad");
    banner.append(el("span", "", "You are offline: this chat was opened in another tab or window."));
    const b = el("button", "ghost small", "Use here");
    b.type = "button";
    // Most likely a duplicated tab, which copies sessionStorage and so the
    // device id: take a new one so both tabs can stay online.
    b.onclick = () => {
      sessionStorage.removeItem(DEVICE_KEY);
      if (S.session) startApp(S.session);
    };
    banner.append(b);
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

// ---------- rendering: lists ----------

function scheduleRender() {
  if (S.renderQueued) return;
  S.renderQueued = true;
  // A timer, not requestAnimationFrame: hidden tabs get no frames, and the
  // title's unread count must still follow.
  setTimeout(() => {
    S.renderQueued = false;
    renderLists();
    renderChatHeader();
    scheduleRead();
  }, 16);
}

function renderLists() {
  const client = S.client;
  if (!client) return;
  const total = client.totalUnread();
  const tu = $("total-unread");
  tu.textContent = total > 99 ? "99+" : String(total);
  tu.hidden = total === 0;
  tu.dataset.count = String(total);
  document.title = total ? `(${total}) Magpie` : "Magpie";

  const convList = $("conv-list");
  const peopleList = $("people-list");
  convList.hidden = S.tab !== "chats";
  peopleList.hidden = S.tab !== "people";
  const empty = $("list-empty");

  if (S.tab === "chats") {
    const q = S.query.toLowerCase();
    const items = client.conversations().filter((it) => !q || convTitle(it).toLowerCase().includes(q));
    convList.replaceChildren(...items.map(convRow));
    empty.hidden = items.length > 0;
    empty.textContent = q ? "No chats match your search." : "No conversations yet. Find someone under People to say hi.";
  } else {
    const rows = S.people.filter((u) => u.uid !== S.session.uid).map(personRow);
    peopleList.replaceChildren(...rows);
    empty.hidden = rows.length > 0;
    empty.textContent = S.query ? "Nobody matches your search." : "Nobody else is here yet.";
  }
}

function convRow(it) {
  const li = el("li", "item conv");
  li.dataset.conv = it.conv;
  li.tabIndex = 0;
  li.setAttribute("role", "button");
  if (it.conv === S.active) li.classList.add("active");
  if (it.unread > 0) li.classList.add("unread");
  const av = el("span", "avatar");
  const title = convTitle(it);
  setAvatar(av, title, !!it.group);
  const name = el("span", "name", title);
  const time = el("span", "time", it.last ? listTime(it.last.ts) : "");
  let previewText = "";
  if (it.last) {
    const who = it.last.from === S.session.uid ? "You: " : it.group ? `${userName(it.last.from)}: ` : "";
    previewText = who + String(it.last.body ?? "").replace(/\s+/g, " ");
  } else if (it.group) {
    previewText = "No messages yet";
  }
  const preview = el("span", "preview", previewText);
  li.append(av, name, time, preview);
  if (it.unread > 0) {
    const b = el("span", "badge", it.unread > 99 ? "99+" : String(it.unread));
    b.dataset.count = String(it.unread);
    li.append(b);
  } else {
    li.classList.add("nobadge");
  }
  const open = () => openConv(it.conv, it.group ? { group: it.group } : { to: it.peer });
  li.addEventListener("click", open);
  li.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      open();
    }
  });
  return li;
}

function personRow(u) {
  const li = el("li", "item person");
  li.dataset.uid = String(u.uid);
  li.tabIndex = 0;
  li.setAttribute("role", "button");
  const av = el("span", "avatar");
  setAvatar(av, u.username);
  li.append(av, el("span", "name", u.username), el("span", "tag", ""), el("span", "preview", "Send a message"));
  const conv = directConv(S.session.uid, u.uid);
  if (conv === S.active) li.classList.add("active");
  const open = () => openConv(conv, { to: u.uid });
  li.addEventListener("click", open);
  li.addEventListener("keydown", (e) => {
    if (e.key === "Enter") open();
  });
  return li;
}

let peopleTimer = null;
function searchPeople() {
  clearTimeout(peopleTimer);
  peopleTimer = setTimeout(async () => {
    if (!S.session) return;
    const q = S.query;
    try {
      const list = await api.users(S.session.token, { q, limit: PEOPLE_PAGE });
      if (q !== S.query) return; // a newer search is running
      S.people = list;
      S.peopleMore = list.length === PEOPLE_PAGE;
      for (const u of list) S.users.set(u.uid, u.username);
      scheduleRender();
    } catch (e) {
      if (e instanceof APIError && e.status === 401) logout("Your session has expired. Please sign in again.");
    }
  }, 150);
}

// morePeople loads the next page of the People list (uid cursor).
let peopleLoading = false;
async function morePeople() {
  if (peopleLoading || !S.peopleMore || !S.session || !S.people.length) return;
  peopleLoading = true;
  const q = S.query;
  try {
    const after = S.people[S.people.length - 1].uid;
    const list = await api.users(S.session.token, { q, limit: PEOPLE_PAGE, after });
    if (q === S.query) {
      S.people = S.people.concat(list);
      S.peopleMore = list.length === PEOPLE_PAGE;
      for (const u of list) S.users.set(u.uid, u.username);
      scheduleRender();
    }
  } catch {
    // the next scroll retries
  } finally {
    peopleLoading = false;
  }
}

function setTab(tab) {
  S.tab = tab;
  $("tab-chats").classList.toggle("active", tab === "chats");
  $("tab-people").classList.toggle("active", tab === "people");
  $("search").placeholder = tab === "chats" ? "Search chats" : "Search people";
  if (tab === "people") searchPeople();
  scheduleRender();
}

// ---------- chat ----------

function showChat(on) {
  $("chat-empty").hidden = on;
  $("chat-pane").hidden = !on;
  $("main-view").classList.toggle("show-chat", on);
}

function openConv(conv, target) {
  if (!S.client) return;
  S.active = conv;
  S.activeTarget = target;
  const c = chatState(conv);
  showChat(true);
  $("input").value = "";
  autoGrow();
  renderChatHeader();
  renderMessages({ toBottom: true });
  if (!c.loaded) loadNewest(conv);
  if (target.group) loadGroupInfo(target.group);
  scheduleRender();
  scheduleRead();
  if (window.matchMedia("(min-width: 761px)").matches) $("input").focus();
}

function closeChat() {
  S.active = null;
  showChat(false);
  scheduleRender();
}

async function loadGroupInfo(gid) {
  try {
    const g = await S.client.groupMembers(gid, { limit: 1 });
    chatState(groupConv(gid)).count = g.count;
    renderChatHeader();
  } catch {
    // not critical
  }
}

function renderChatHeader() {
  if (!S.active || !S.client) return;
  const it = S.client.convs.get(S.active);
  const t = S.activeTarget || {};
  const p = parseConv(S.active);
  const isGroup = !!t.group;
  const title = it ? convTitle(it) : isGroup ? `Group ${t.group}` : userName(t.to);
  $("chat-title").textContent = title;
  setAvatar($("chat-avatar"), title, isGroup);
  const c = chatState(S.active);
  let sub;
  if (isGroup) {
    const n = c.count || (it && it.count) || 0;
    sub = `Group #${p ? p.group : t.group}${n ? ` · ${n} member${n === 1 ? "" : "s"}` : ""}`;
  } else {
    sub = `@${userName(t.to)}`;
  }
  $("chat-sub").textContent = sub;
  $("leave-btn").hidden = !isGroup;
}

function addMessages(conv, list) {
  const c = chatState(conv);
  for (const m of list) {
    c.bySeq.set(m.seq, { ...m, conv });
    if (m.cmid && m.from === S.session.uid) c.pending.delete(m.cmid);
  }
}

async function loadNewest(conv) {
  const c = chatState(conv);
  if (c.loading || !S.client || S.client.state !== "online") return;
  c.loading = true;
  try {
    const res = await S.client.history(conv, { limit: PAGE });
    addMessages(conv, res.messages || []);
    c.more = !!res.more;
    c.loaded = true;
  } catch (e) {
    if (e.code === "not_member" || e.code === "not_found") c.loaded = true;
  } finally {
    c.loading = false;
  }
  if (conv === S.active) {
    renderMessages({ toBottom: true });
    fillViewport(conv);
    scheduleRead();
  }
}

async function loadOlder(conv) {
  const c = chatState(conv);
  if (c.loading || !c.more || !S.client || S.client.state !== "online") return;
  const seqs = [...c.bySeq.keys()];
  if (!seqs.length) return;
  const oldest = Math.min(...seqs);
  if (oldest <= 1) {
    c.more = false;
    return;
  }
  c.loading = true;
  $("older").hidden = false;
  try {
    const res = await S.client.history(conv, { before: oldest, limit: PAGE });
    addMessages(conv, res.messages || []);
    c.more = !!res.more;
  } catch {
    // try again on the next scroll
  } finally {
    c.loading = false;
  }
  if (conv === S.active) {
    renderMessages({ keepFromBottom: true });
    fillViewport(conv);
  }
}

// fillViewport loads older pages until the list can scroll, so "scroll up
// for more" works on tall screens too.
function fillViewport(conv) {
  const box = $("messages");
  const c = chatState(conv);
  if (conv === S.active && c.more && box.scrollHeight <= box.clientHeight + 10) loadOlder(conv);
}

function onMessage(m) {
  const c = S.chats.get(m.conv);
  if (c) {
    c.bySeq.set(m.seq, m);
    if (m.cmid && m.from === S.session.uid) c.pending.delete(m.cmid);
  }
  if (m.conv === S.active) {
    renderMessages({ stick: true });
    scheduleRead();
  }
}

function onSendFailed(conv, cmid, code) {
  const c = S.chats.get(conv);
  if (!c) return;
  const p = c.pending.get(cmid);
  if (!p) return;
  p.failed = code === "too_large" ? "Too long" : code === "not_member" ? "Not a member" : "Not sent";
  if (conv === S.active) renderMessages({ stick: true });
}

function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

// renderMessages rebuilds the open chat. toBottom scrolls to the end;
// stick keeps a reader at the bottom at the bottom; keepFromBottom keeps the
// visible messages in place while older ones are prepended.
function renderMessages({ toBottom = false, stick = false, keepFromBottom = false } = {}) {
  const conv = S.active;
  if (!conv) return;
  const c = chatState(conv);
  const box = $("messages");
  const wasNear = nearBottom(box);
  const fromBottom = box.scrollHeight - box.scrollTop;
  const me = S.session.uid;
  const isGroup = conv.startsWith("g:");
  const msgs = [...c.bySeq.values()].sort((a, b) => a.seq - b.seq);
  const rows = [];
  let prev = null;
  let lastDay = null;
  for (const m of msgs) {
    const day = startOfDay(m.ts);
    if (day !== lastDay) {
      rows.push(el("li", "day", dayLabel(m.ts)));
      lastDay = day;
      prev = null;
    }
    const first = !prev || prev.from !== m.from || m.ts - prev.ts > 5 * 60000;
    rows.push(messageRow(m, m.from === me, first, isGroup));
    prev = m;
  }
  for (const [cmid, p] of c.pending) {
    rows.push(messageRow({ cmid, body: p.body, ts: p.ts, from: me }, true, !prev || prev.from !== me, isGroup, p));
    prev = { from: me, ts: p.ts };
  }
  $("msg-list").replaceChildren(...rows);
  $("older").hidden = !(c.loading && c.loaded);
  $("history-start").hidden = !(c.loaded && !c.more && msgs.length > 0);
  if (toBottom || (stick && wasNear)) box.scrollTop = box.scrollHeight;
  else if (keepFromBottom) box.scrollTop = box.scrollHeight - fromBottom;
}

function messageRow(m, mine, first, isGroup, pending) {
  const li = el("li", "msg");
  li.classList.toggle("mine", mine);
  li.classList.toggle("first", first);
  if (m.seq) li.dataset.seq = String(m.seq);
  if (m.cmid) li.dataset.cmid = m.cmid;
  if (isGroup && !mine && first) {
    const s = el("div", "sender", userName(m.from));
    s.style.setProperty("--hue", String(hueOf(userName(m.from))));
    li.append(s);
  }
  const bubble = el("div", "bubble");
  bubble.append(el("div", "body", m.body));
  const meta = el("div", "meta");
  meta.append(el("time", "", fmtTime.format(m.ts || Date.now())));
  if (pending) {
    if (pending.failed) {
      li.classList.add("failed");
      meta.append(el("span", "", pending.failed));
    } else {
      li.classList.add("pending");
      li.title = "Sending…";
      meta.append(svgIcon(ICON_CLOCK));
    }
  } else if (mine) {
    meta.append(svgIcon(ICON_CHECK));
  }
  bubble.append(meta);
  li.append(bubble);
  if (pending && pending.failed) {
    const b = el("button", "retry", "Dismiss");
    b.type = "button";
    b.onclick = () => {
      chatState(S.active).pending.delete(m.cmid);
      renderMessages();
    };
    li.append(b);
  }
  return li;
}

function sendCurrent() {
  const input = $("input");
  const body = input.value.replace(/\s+$/, "");
  if (!body.trim() || !S.client || !S.active) return;
  const max = (S.client.welcome && S.client.welcome.max_body) || 16384;
  if (new TextEncoder().encode(body).length > max) {
    input.setCustomValidity("Too long");
    input.reportValidity();
    return;
  }
  input.setCustomValidity("");
  const target = S.activeTarget;
  const s = S.client.send(target, body);
  const conv = S.active;
  const c = chatState(conv);
  // Settled in onMessage; a message stored before this line ran cannot exist.
  c.pending.set(s.cmid, { body, ts: Date.now() });
  input.value = "";
  autoGrow();
  renderMessages({ toBottom: true });
}

function autoGrow() {
  const t = $("input");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight + 2, 160)}px`;
  $("send-btn").disabled = !t.value.trim();
}

// ---------- read marks ----------

// scheduleRead marks the open chat read in a microtask: still inside the
// task that showed the message, so the read frame is on the socket before
// anyone can see the message and, say, reload the page. markRead updates
// the unread count at once, so repeated calls send nothing more.
function scheduleRead() {
  if (S.readQueued) return;
  S.readQueued = true;
  queueMicrotask(() => {
    S.readQueued = false;
    markActiveRead();
  });
}

function markActiveRead() {
  const client = S.client;
  if (!client || !S.active || document.visibilityState !== "visible" || client.state !== "online") return;
  const it = client.convs.get(S.active);
  if (it && it.unread > 0) client.markRead(S.active, it.last_seq);
}

// ---------- groups dialog ----------

let groupMode = "create";
function setGroupMode(mode) {
  groupMode = mode;
  $("gtab-create").classList.toggle("active", mode === "create");
  $("gtab-join").classList.toggle("active", mode === "join");
  $("gpane-create").hidden = mode !== "create";
  $("gpane-join").hidden = mode !== "join";
  $("group-submit").textContent = mode === "create" ? "Create group" : "Join group";
  $("group-error").hidden = true;
}

const selectedMembers = new Set();
function renderMemberList() {
  const q = $("member-search").value.trim().toLowerCase();
  const users = [...S.users.entries()]
    .filter(([uid, name]) => uid !== S.session.uid && (!q || name.toLowerCase().startsWith(q)))
    .sort((a, b) => a[1].localeCompare(b[1]));
  const rows = users.map(([uid, name]) => {
    const li = el("li");
    const label = el("label");
    const cb = el("input");
    cb.type = "checkbox";
    cb.value = String(uid);
    cb.checked = selectedMembers.has(uid);
    cb.onchange = () => (cb.checked ? selectedMembers.add(uid) : selectedMembers.delete(uid));
    const av = el("span", "avatar");
    setAvatar(av, name);
    label.append(cb, av, el("span", "", name));
    li.append(label);
    return li;
  });
  $("member-list").replaceChildren(...rows);
}

function openGroupDialog() {
  selectedMembers.clear();
  $("group-name").value = "";
  $("group-id").value = "";
  $("member-search").value = "";
  setGroupMode("create");
  renderMemberList();
  $("group-dialog").showModal();
  $("group-name").focus();
}

async function submitGroup() {
  const err = $("group-error");
  err.hidden = true;
  const client = S.client;
  const fail = (msg) => {
    err.textContent = msg;
    err.hidden = false;
  };
  if (!client || client.state !== "online") return fail("You are offline. Try again when connected.");
  try {
    if (groupMode === "create") {
      const name = $("group-name").value.trim();
      if (!name) return fail("Give the group a name.");
      if (new TextEncoder().encode(name).length > 64) return fail("The name is too long.");
      const g = await client.createGroup(name, [...selectedMembers]);
      $("group-dialog").close();
      setTab("chats");
      openConv(groupConv(g.group), { group: g.group });
    } else {
      const id = Number($("group-id").value.trim());
      if (!Number.isSafeInteger(id) || id <= 0) return fail("Enter a group id (a number).");
      const g = await client.joinGroup(id);
      $("group-dialog").close();
      setTab("chats");
      openConv(groupConv(g.group), { group: g.group });
    }
  } catch (e) {
    fail(e.code === "not_found" ? "There is no such group." : e.code ? e.message || e.code : "Could not reach the server.");
  }
}

async function leaveActiveGroup() {
  const t = S.activeTarget;
  if (!t || !t.group || !S.client) return;
  if (!confirm("Leave this group?")) return;
  try {
    await S.client.leaveGroup(t.group);
    S.chats.delete(groupConv(t.group));
    closeChat();
  } catch {
    // stays; the user can retry
  }
}

// onReturn runs when the tab is shown or focused: mark the open chat read,
// and reload the conversation list at most every 10 s, since v1 does not
// push membership changes (a group someone added you to shows up here).
let lastRefresh = 0;
function onReturn() {
  scheduleRead();
  if (document.visibilityState !== "visible" || !S.client) return;
  if (Date.now() - lastRefresh < 10000) return;
  lastRefresh = Date.now();
  S.client.refreshConvs();
}

// ---------- wiring ----------

function wire() {
  $("tab-login").onclick = () => setAuthMode("login");
  $("tab-register").onclick = () => setAuthMode("register");
  $("auth-form").addEventListener("submit", onAuthSubmit);
  $("logout-btn").onclick = () => logout();
  $("tab-chats").onclick = () => setTab("chats");
  $("tab-people").onclick = () => setTab("people");
  $("search").addEventListener("input", (e) => {
    S.query = e.target.value.trim();
    if (S.tab === "people") searchPeople();
    scheduleRender();
  });
  $("back-btn").onclick = closeChat;
  $("leave-btn").onclick = leaveActiveGroup;
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendCurrent();
  });
  $("input").addEventListener("input", () => {
    $("input").setCustomValidity("");
    autoGrow();
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendCurrent();
    }
  });
  $("messages").addEventListener("scroll", () => {
    if (S.active && $("messages").scrollTop < 120) loadOlder(S.active);
  });
  $("people-list").addEventListener("scroll", () => {
    const l = $("people-list");
    if (l.scrollHeight - l.scrollTop - l.clientHeight < 200) morePeople();
  });
  $("group-btn").onclick = openGroupDialog;
  $("group-close").onclick = () => $("group-dialog").close();
  $("group-cancel").onclick = () => $("group-dialog").close();
  $("gtab-create").onclick = () => setGroupMode("create");
  $("gtab-join").onclick = () => setGroupMode("join");
  $("group-submit").onclick = submitGroup;
  $("member-search").addEventListener("input", renderMemberList);
  $("group-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submitGroup();
  });
  document.addEventListener("visibilitychange", onReturn);
  window.addEventListener("focus", onReturn);
  window.addEventListener("online", () => S.client && S.client.reconnectNow());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && S.active && !$("group-dialog").open && window.matchMedia("(max-width: 760px)").matches) closeChat();
  });
}

wire();
setAuthMode("login");
const saved = loadSession();
if (saved) startApp(saved);
else showLogin();
