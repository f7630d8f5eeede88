// Magpie chat UI on the JS SDK. Every piece of user data reaches the DOM
// through textContent or attributes, never through the HTML parser.
import { MagpieAPI, MagpieClient, APIError, directConv, groupConv, parseConv, peerOf, randomId } from "./sdk/magpie.js";

const api = new MagpieAPI();
const $ = (id) => document.getElementById(id);
const SESSION_KEY = "magpie.session";
// The open chat of a tab, restored after a reload (sessionStorage: per tab,
// like the device id, so two tabs keep their own).
const openKey = (uid) => `magpie.open.${uid}`;
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
const ICON_CHECK2 = "M18 7l-1.4-1.4-6.3 6.3 1.4 1.4zm4.2-1.4L11.7 16.2 7.5 12l-1.4 1.4 5.6 5.6 12-12zM.4 13.4 6 19l1.4-1.4L1.8 12z";
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
  chats: new Map(), // conv -> {bySeq, pending, more, loaded, loading, count, divider, newBelow, receipts}
  groups: new Map(), // gid -> {members: [uid], more, loading} from group_members
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
    // divider: seq above which the "New messages" line is drawn (0: none);
    // newBelow: messages that arrived while scrolled up (the jump button's
    // count); receipts: the server answered `receipts` (a small group or a
    // direct chat), so read marks are known.
    c = { bySeq: new Map(), pending: new Map(), more: false, loaded: false, loading: false, count: 0, divider: 0, newBelow: 0, receipts: false };
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

const fmtNum = new Intl.NumberFormat();

// lastSeenText says when a user was last online (PROTOCOL §16 last_seen).
function lastSeenText(ts) {
  if (!ts) return "offline";
  const now = Date.now();
  if (now - ts < 60000) return "last seen just now";
  if (now - ts < 3600000) return `last seen ${Math.floor((now - ts) / 60000)} min ago`;
  const today = startOfDay(now);
  if (ts >= today) return `last seen today at ${fmtTime.format(ts)}`;
  if (ts >= today - 86400000) return `last seen yesterday at ${fmtTime.format(ts)}`;
  return `last seen ${fmtDate.format(ts)}`;
}

// ---------- group system messages ----------

function nameList(uids, who) {
  const names = (Array.isArray(uids) ? uids : []).map((u) => who(u, false));
  if (names.length <= 1) return names.join("");
  if (names.length <= 3) return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
  return `${names.slice(0, 2).join(", ")} and ${names.length - 2} others`;
}

// systemText is the human sentence for a group event (message.event, set
// by the SDK for system messages of a version 2 server).
function systemText(m) {
  const ev = m.event || {};
  const me = S.session ? S.session.uid : 0;
  const who = (uid, first) => (uid === me ? (first ? "You" : "you") : userName(uid));
  const actor = who(m.from, true);
  switch (ev.event) {
    case "created":
      return `${actor} created the group “${ev.name ?? ""}”`;
    case "added":
      return `${actor} added ${nameList(ev.members, who)}`;
    case "removed":
      return `${actor} removed ${nameList(ev.members, who)}`;
    case "joined":
      return `${actor} joined`;
    case "left":
      if (ev.owner) return `${actor} left; ${who(ev.owner, false)} ${ev.owner === me ? "are" : "is"} now the owner`;
      return `${actor} left`;
    case "renamed":
      return `${actor} renamed the group to ${ev.name ?? ""}`;
    default:
      return `${actor} changed the group`;
  }
}

// typingText is what the chat header says while others type.
function typingText(conv, isGroup) {
  if (!S.client) return "";
  const ids = S.client.typers(conv);
  if (!ids.length) return "";
  if (!isGroup) return "typing…";
  const names = ids.map(userName);
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

function previewOf(it) {
  if (!it.last) return it.group ? "No messages yet" : "";
  const m = it.last;
  if (m.event) return systemText(m);
  const who = m.from === S.session.uid ? "You: " : it.group ? `${userName(m.from)}: ` : "";
  return who + String(m.body ?? "").replace(/\s+/g, " ");
}

// ---------- notifications ----------

// Desktop notifications: permission is asked only from the bell button (a
// user action), never on load; a notification is shown for a message from
// someone else while the tab is hidden.
function notifySupported() {
  return typeof window.Notification === "function";
}

function renderNotifyBtn() {
  $("notify-btn").hidden = !notifySupported() || Notification.permission !== "default";
}

async function askNotify() {
  if (!notifySupported()) return;
  try {
    await Notification.requestPermission();
  } catch {
    // an old callback-only browser: the permission shows on the next render
  }
  renderNotifyBtn();
}

function maybeNotify(m) {
  if (!notifySupported() || Notification.permission !== "granted" || document.visibilityState !== "hidden") return;
  if (!S.session || m.from === S.session.uid) return;
  const it = S.client && S.client.convs.get(m.conv);
  const sender = userName(m.from);
  const title = it && it.group ? `${sender} in ${convTitle(it)}` : sender;
  const body = m.event ? systemText(m) : String(m.body ?? "").slice(0, 240);
  try {
    const n = new Notification(title, { body, tag: m.conv });
    n.onclick = () => {
      window.focus();
      const p = parseConv(m.conv);
      if (p) openConv(m.conv, p.kind === "g" ? { group: p.group } : { to: m.from });
      n.close();
    };
  } catch {
    // some browsers allow notifications only from a service worker
  }
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
  if (S.session) sessionStorage.removeItem(openKey(S.session.uid));
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
  S.groups.clear();
  presenceKey = "";
  convRows.clear();
  personRows.clear();
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
  client.on("convs", () => {
    scheduleRender();
    schedulePresence();
  });
  client.on("message", ({ message, source }) => onMessage(message, source));
  client.on("groupevent", ({ message }) => onGroupEvent(message));
  client.on("receipt", ({ conv }) => {
    if (conv === S.active) scheduleChat();
  });
  client.on("typing", scheduleRender);
  client.on("presence", scheduleRender);
  client.on("sendfailed", ({ cmid, conv, code }) => onSendFailed(conv, cmid, code));
  client.on("unauthorized", () => logout("Your session has expired. Please sign in again."));
  client.on("outbox", () => saveOutbox(client));
  restoreOutbox(client);
  client.start();
  renderConn(client.state);
  renderNotifyBtn();
  loadUsers();
  restoreOpenChat(session.uid);
}

function restoreOpenChat(uid) {
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(openKey(uid)) || "null");
  } catch {
    saved = null;
  }
  const p = saved && typeof saved.conv === "string" ? parseConv(saved.conv) : null;
  if (!p) return;
  if (p.kind === "g") openConv(saved.conv, { group: p.group });
  else if (p.a === uid || p.b === uid) openConv(saved.conv, { to: p.a === uid ? p.b : p.a });
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
  // Load what an open chat is missing (first page, or after a failure),
  // and refresh what may have changed while away.
  if (S.active) {
    const c = chatState(S.active);
    if (!c.loaded) loadNewest(S.active);
    loadReceipts(S.active);
    if (S.activeTarget && S.activeTarget.group) loadGroupInfo(S.activeTarget.group);
  }
  schedulePresence();
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
    const rows = items.map(convRow);
    keepRows(convList, rows, convRows, (li) => li.dataset.conv);
    empty.hidden = items.length > 0;
    empty.textContent = q ? "No chats match your search." : "No conversations yet. Find someone under People to say hi.";
  } else {
    const rows = S.people.filter((u) => u.uid !== S.session.uid).map(personRow);
    keepRows(peopleList, rows, personRows, (li) => li.dataset.uid);
    empty.hidden = rows.length > 0;
    empty.textContent = S.query ? "Nobody matches your search." : "Nobody else is here yet.";
  }
}

// The lists are re-rendered on every change (a message, typing, presence),
// so their rows are kept per conversation and person and updated in place:
// a row replaced between mousedown and mouseup would swallow the click.
const convRows = new Map(); // conv -> li
const personRows = new Map(); // uid string -> li

// keepRows shows rows in list, moving nodes only when the order changed,
// and forgets cached rows that are no longer listed.
function keepRows(list, rows, cache, key) {
  const cur = list.children;
  if (cur.length !== rows.length || rows.some((r, i) => cur[i] !== r)) list.replaceChildren(...rows);
  if (cache.size > rows.length) {
    const keep = new Set(rows.map(key));
    for (const k of [...cache.keys()]) if (!keep.has(k)) cache.delete(k);
  }
}

function convRow(it) {
  let li = convRows.get(it.conv);
  if (!li) {
    li = el("li");
    li.dataset.conv = it.conv;
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    const p = parseConv(it.conv);
    const open = () => openConv(it.conv, p && p.kind === "g" ? { group: p.group } : { to: peerOf(it.conv, S.session.uid) });
    li.addEventListener("click", open);
    li.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        open();
      }
    });
    convRows.set(it.conv, li);
  }
  li.className = "item conv";
  li.replaceChildren();
  if (it.conv === S.active) li.classList.add("active");
  if (it.unread > 0) li.classList.add("unread");
  const av = el("span", "avatar");
  const title = convTitle(it);
  setAvatar(av, title, !!it.group);
  const name = el("span", "name", title);
  const time = el("span", "time", it.last ? listTime(it.last.ts) : "");
  const typing = typingText(it.conv, !!it.group);
  const preview = el("span", "preview", typing || previewOf(it));
  preview.classList.toggle("typing", !!typing);
  li.append(avatarBox(av, it.peer), name, time, preview);
  if (it.unread > 0) {
    const b = el("span", "badge", it.unread > 99 ? "99+" : String(it.unread));
    b.dataset.count = String(it.unread);
    li.append(b);
  } else {
    li.classList.add("nobadge");
  }
  return li;
}

// avatarBox wraps an avatar with the online dot of a direct peer.
function avatarBox(av, peer) {
  const box = el("span", "avatar-box");
  box.append(av);
  const p = peer && S.client ? S.client.presence(peer) : undefined;
  if (p) {
    const dot = el("span", "presence-dot");
    dot.classList.toggle("on", p.online);
    dot.title = p.online ? "online" : lastSeenText(p.last_seen);
    box.append(dot);
  }
  return box;
}

function personRow(u) {
  const conv = directConv(S.session.uid, u.uid);
  let li = personRows.get(String(u.uid));
  if (!li) {
    li = el("li", "item person");
    li.dataset.uid = String(u.uid);
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    const av = el("span", "avatar");
    setAvatar(av, u.username);
    li.append(av, el("span", "name", u.username), el("span", "tag", ""), el("span", "preview", "Send a message"));
    const open = () => openConv(conv, { to: u.uid });
    li.addEventListener("click", open);
    li.addEventListener("keydown", (e) => {
      if (e.key === "Enter") open();
    });
    personRows.set(String(u.uid), li);
  }
  li.classList.toggle("active", conv === S.active);
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
  if (S.active !== conv) $("input").value = "";
  S.active = conv;
  S.activeTarget = target;
  const c = chatState(conv);
  // The "New messages" line goes above the first unread message, read from
  // the list before the chat is marked read.
  const it = S.client.convs.get(conv);
  c.divider = it && it.unread > 0 ? it.read_seq + 1 : 0;
  c.newBelow = 0;
  try {
    sessionStorage.setItem(openKey(S.session.uid), JSON.stringify({ conv }));
  } catch {
    // storage disabled: nothing restored after a reload
  }
  showChat(true);
  autoGrow();
  renderChatHeader();
  renderMessages({ toBottom: true });
  if (!c.loaded) loadNewest(conv);
  if (target.group) loadGroupInfo(target.group);
  loadReceipts(conv);
  schedulePresence();
  scheduleRender();
  scheduleRead();
  if (window.matchMedia("(min-width: 761px)").matches) $("input").focus();
}

function closeChat() {
  S.active = null;
  if (S.session) sessionStorage.removeItem(openKey(S.session.uid));
  showChat(false);
  scheduleRender();
}

// loadGroupInfo fetches the member list of a group (the first 1,000): the
// header's count, the info dialog, and "read by everyone".
async function loadGroupInfo(gid) {
  if (!S.client || S.client.state !== "online") return;
  const g = S.groups.get(gid) || { members: [], more: false, loading: false, loaded: false };
  S.groups.set(gid, g);
  if (g.loading) {
    g.again = true;
    return;
  }
  g.loading = true;
  try {
    const res = await S.client.groupMembers(gid, { limit: 1000 });
    g.members = Array.isArray(res.members) ? res.members : [];
    g.more = !!res.more;
    g.loaded = true;
    chatState(groupConv(gid)).count = res.count;
  } catch (e) {
    if (e.code === "not_member" || e.code === "not_found") {
      g.members = [];
      g.loaded = true;
    }
  } finally {
    g.loading = false;
  }
  if (g.again) {
    g.again = false;
    loadGroupInfo(gid);
    return;
  }
  renderChatHeader();
  if ($("info-dialog").open) renderInfo();
  if (groupConv(gid) === S.active) scheduleChat();
}

// loadReceipts asks who has read how far (version 2): a direct chat, or a
// group of at most the server's --receipt-members (a larger one answers
// forbidden and shows no read marks).
async function loadReceipts(conv) {
  const client = S.client;
  if (!client || client.state !== "online" || client.version < 2) return;
  const c = chatState(conv);
  try {
    await client.receipts(conv);
    c.receipts = true;
  } catch (e) {
    if (e.code) c.receipts = false;
  }
  if (conv === S.active) scheduleChat();
}

function renderChatHeader() {
  if (!S.active || !S.client) return;
  const client = S.client;
  const it = client.convs.get(S.active);
  const t = S.activeTarget || {};
  const p = parseConv(S.active);
  const isGroup = !!t.group;
  const title = it ? convTitle(it) : isGroup ? `Group ${t.group}` : userName(t.to);
  $("chat-title").textContent = title;
  setAvatar($("chat-avatar"), title, isGroup);
  const c = chatState(S.active);
  const typing = typingText(S.active, isGroup);
  const dot = $("chat-presence");
  dot.hidden = true;
  let sub;
  if (isGroup) {
    const n = c.count || (it && it.count) || 0;
    const vis = it && it.public !== undefined ? (it.public ? " · public" : " · private") : "";
    sub = `Group #${p ? p.group : t.group}${n ? ` · ${n} member${n === 1 ? "" : "s"}` : ""}${vis}`;
  } else {
    const pr = client.presence(t.to);
    if (pr) {
      dot.hidden = false;
      dot.classList.toggle("on", pr.online);
      sub = pr.online ? "online" : lastSeenText(pr.last_seen);
    } else {
      sub = `@${userName(t.to)}`;
    }
  }
  const subEl = $("chat-sub");
  subEl.textContent = typing || sub;
  subEl.classList.toggle("typing", !!typing);
  // A group the user was removed from (or left elsewhere) stays readable
  // until the list is reloaded, without a composer.
  const gone = isGroup && it && it.member === false;
  $("leave-btn").hidden = !isGroup || gone;
  $("info-btn").hidden = !isGroup || gone;
  $("composer").hidden = gone;
  $("not-member").hidden = !gone;
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

function onMessage(m, source) {
  const c = S.chats.get(m.conv);
  if (c) {
    c.bySeq.set(m.seq, m);
    if (m.cmid && m.from === S.session.uid) c.pending.delete(m.cmid);
  }
  if (source === "push") maybeNotify(m);
  if (m.conv === S.active) {
    const ac = chatState(m.conv);
    const box = $("messages");
    const atBottom = nearBottom(box);
    if (m.from !== S.session.uid && (!atBottom || document.visibilityState !== "visible")) {
      // Unseen: mark where the new messages start, and count them on the
      // jump button while the reader is scrolled up.
      if (!ac.divider) ac.divider = m.seq;
      if (!atBottom) ac.newBelow++;
    }
    renderMessages({ stick: true });
    scheduleRead();
  }
}

// onGroupEvent: a membership or name change in a group (version 2). The
// open group's member list is fetched again; names and owners the SDK
// already applied to the conversation item.
function onGroupEvent(m) {
  const p = parseConv(m.conv);
  if (!p) return;
  if (m.conv === S.active && m.event.event !== "renamed") loadGroupInfo(p.group);
  scheduleRender();
  if ($("info-dialog").open && m.conv === S.active) renderInfo();
}

function maxBody() {
  return (S.client && S.client.welcome && S.client.welcome.max_body) || 16384;
}

function onSendFailed(conv, cmid, code) {
  const c = S.chats.get(conv);
  if (!c) return;
  const p = c.pending.get(cmid);
  if (!p) return;
  p.failed =
    code === "too_large"
      ? `Too long (the limit is ${fmtNum.format(maxBody())} bytes)`
      : code === "not_member"
        ? "Not a member"
        : "Not sent";
  if (conv === S.active) renderMessages({ stick: true });
}

function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

// updateJump shows the jump-to-bottom button while the reader is scrolled
// up, with the count of messages that arrived meanwhile.
function updateJump() {
  if (!S.active) return;
  const c = chatState(S.active);
  const box = $("messages");
  const near = nearBottom(box);
  if (near) c.newBelow = 0;
  $("jump-btn").hidden = near;
  const count = $("jump-count");
  count.hidden = c.newBelow === 0;
  count.textContent = c.newBelow > 99 ? "99+" : String(c.newBelow);
  count.dataset.count = String(c.newBelow);
}

function jumpToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
  updateJump();
  scheduleRead();
}

let chatQueued = false;
// scheduleChat re-renders the open chat once for a burst of receipts or
// member changes.
function scheduleChat() {
  if (chatQueued) return;
  chatQueued = true;
  setTimeout(() => {
    chatQueued = false;
    renderMessages({ stick: true });
  }, 16);
}

// readInfo returns, for a message of the user, who has read it: {status:
// "read"|"sent", readers}. Direct chats use the peer's read seq; groups
// whose receipts the server answers count the members at or past it.
function readInfo(conv, m) {
  const client = S.client;
  if (!client || !m.seq) return { status: "sent", readers: [] };
  const readers = client.readBy(conv, m.seq);
  if (!conv.startsWith("g:")) return { status: readers.length ? "read" : "sent", readers };
  const c = chatState(conv);
  const others = Math.max(0, (c.count || 0) - 1);
  return { status: c.receipts && others > 0 && readers.length >= others ? "read" : "sent", readers: c.receipts ? readers : [] };
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
  let lastMine = null;
  for (const m of msgs) if (m.from === me && !m.event) lastMine = m;
  const rows = [];
  let prev = null;
  let lastDay = null;
  let divided = false;
  for (const m of msgs) {
    const day = startOfDay(m.ts);
    if (day !== lastDay) {
      rows.push(el("li", "day", dayLabel(m.ts)));
      lastDay = day;
      prev = null;
    }
    if (c.divider && !divided && m.seq >= c.divider && m.from !== me) {
      const d = el("li", "divider", "New messages");
      d.id = "new-divider";
      rows.push(d);
      divided = true;
      prev = null;
    }
    if (m.event) {
      rows.push(noteRow(m));
      prev = null;
      continue;
    }
    const first = !prev || prev.from !== m.from || m.ts - prev.ts > 5 * 60000;
    rows.push(messageRow(m, m.from === me, first, isGroup, null, m === lastMine));
    prev = m;
  }
  for (const [cmid, p] of c.pending) {
    rows.push(messageRow({ cmid, body: p.body, ts: p.ts, from: me }, true, !prev || prev.from !== me, isGroup, p, false));
    prev = { from: me, ts: p.ts };
  }
  $("msg-list").replaceChildren(...rows);
  $("older").hidden = !(c.loading && c.loaded);
  $("history-start").hidden = !(c.loaded && !c.more && msgs.length > 0);
  if (toBottom || (stick && wasNear)) box.scrollTop = box.scrollHeight;
  else if (keepFromBottom) box.scrollTop = box.scrollHeight - fromBottom;
  updateJump();
}

// noteRow shows a group system message as a centred note.
function noteRow(m) {
  const li = el("li", "note");
  li.dataset.seq = String(m.seq);
  li.dataset.event = String(m.event.event);
  const text = el("span", "note-text", systemText(m));
  text.title = fmtTime.format(m.ts || Date.now());
  li.append(text);
  return li;
}

function messageRow(m, mine, first, isGroup, pending, newestMine) {
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
    // ✓ stored, ✓✓ read by the peer (or by every member of a small group).
    const { status, readers } = readInfo(S.active, m);
    li.dataset.status = status;
    if (isGroup && newestMine && readers.length) meta.append(el("span", "readby", `read by ${readers.length}`));
    if (readers.length) li.title = `Read by ${readers.map(userName).join(", ")}`;
    const icon = svgIcon(status === "read" ? ICON_CHECK2 : ICON_CHECK);
    icon.classList.add(status === "read" ? "read" : "sent");
    meta.append(icon);
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

function byteLength(s) {
  return new TextEncoder().encode(s).length;
}

// checkLimit states the server's body limit (welcome's max_body) as soon
// as the draft passes it, and keeps the send button off until it fits.
function checkLimit() {
  const body = $("input").value.replace(/\s+$/, "");
  const n = body.length * 3 <= maxBody() ? body.length : byteLength(body); // cheap when clearly short
  const over = n > maxBody();
  const note = $("limit-note");
  note.hidden = !over;
  if (over) note.textContent = `Too long: ${fmtNum.format(n)} bytes; a message can have at most ${fmtNum.format(maxBody())} bytes.`;
  return over;
}

function sendCurrent() {
  const input = $("input");
  const body = input.value.replace(/\s+$/, "");
  if (!body.trim() || !S.client || !S.active) return;
  if (checkLimit()) {
    input.focus();
    return;
  }
  const target = S.activeTarget;
  const s = S.client.send(target, body);
  const conv = S.active;
  const c = chatState(conv);
  // Settled in onMessage; a message stored before this line ran cannot exist.
  c.pending.set(s.cmid, { body, ts: Date.now() });
  c.divider = 0; // answering means the new messages were seen
  c.newBelow = 0;
  input.value = "";
  autoGrow();
  renderMessages({ toBottom: true });
}

function autoGrow() {
  const t = $("input");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight + 2, 160)}px`;
  const over = checkLimit();
  $("send-btn").disabled = !t.value.trim() || over;
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

// renderPicker fills list with a checkbox per known user whose name starts
// with the filter, except the user and those in exclude; selected holds
// the ticked uids.
function renderPicker(list, filter, selected, exclude = new Set(), onChange = () => {}) {
  const q = filter.trim().toLowerCase();
  const users = [...S.users.entries()]
    .filter(([uid, name]) => uid !== S.session.uid && !exclude.has(uid) && (!q || name.toLowerCase().startsWith(q)))
    .sort((a, b) => a[1].localeCompare(b[1]));
  const rows = users.map(([uid, name]) => {
    const li = el("li");
    const label = el("label");
    const cb = el("input");
    cb.type = "checkbox";
    cb.value = String(uid);
    cb.checked = selected.has(uid);
    cb.onchange = () => {
      if (cb.checked) selected.add(uid);
      else selected.delete(uid);
      onChange();
    };
    const av = el("span", "avatar");
    setAvatar(av, name);
    label.append(cb, av, el("span", "", name));
    li.append(label);
    return li;
  });
  list.replaceChildren(...rows);
}

const selectedMembers = new Set();
function renderMemberList() {
  renderPicker($("member-list"), $("member-search").value, selectedMembers);
}

function openGroupDialog() {
  selectedMembers.clear();
  $("group-name").value = "";
  $("group-id").value = "";
  $("member-search").value = "";
  $("group-public").checked = false;
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
      const g = await client.createGroup(name, [...selectedMembers], { public: $("group-public").checked });
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
    fail(groupErrorText(e));
  }
}

function groupErrorText(e) {
  switch (e.code) {
    case "not_found":
      return "There is no such group.";
    case "forbidden":
      return groupMode === "join" && $("group-dialog").open
        ? "That group is private: a member has to add you."
        : "Only the group's owner can do that.";
    case "not_member":
      return "You are not a member of this group.";
    case undefined:
    case "":
      return "Could not reach the server.";
    default:
      return e.message || e.code;
  }
}

async function leaveActiveGroup() {
  const t = S.activeTarget;
  if (!t || !t.group || !S.client) return;
  if (!confirm("Leave this group?")) return;
  try {
    await S.client.leaveGroup(t.group);
    S.chats.delete(groupConv(t.group));
    S.groups.delete(t.group);
    if ($("info-dialog").open) $("info-dialog").close();
    closeChat();
  } catch {
    // stays; the user can retry
  }
}

// ---------- group info dialog ----------

const selectedAdds = new Set();

function openInfo() {
  const t = S.activeTarget;
  if (!t || !t.group) return;
  selectedAdds.clear();
  $("add-search").value = "";
  $("info-error").hidden = true;
  const it = S.client && S.client.convs.get(groupConv(t.group));
  $("rename-input").value = it ? convTitle(it) : "";
  renderInfo();
  $("info-dialog").showModal();
  loadGroupInfo(t.group);
}

// renderInfo shows the open group's members to every member; its owner
// also gets rename and remove, and every member add (PROTOCOL §13).
function renderInfo() {
  const t = S.activeTarget;
  if (!t || !t.group || !S.client) return;
  const client = S.client;
  const me = S.session.uid;
  const conv = groupConv(t.group);
  const it = client.convs.get(conv);
  const g = S.groups.get(t.group) || { members: [], more: false };
  const v2 = client.version >= 2;
  const owner = it && it.owner;
  const isOwner = v2 && owner === me;
  $("info-title").textContent = it ? convTitle(it) : `Group ${t.group}`;
  const meta = [];
  if (v2 && it && it.public !== undefined) meta.push(it.public ? "Public group: anyone can join with its id" : "Private group: members add people");
  meta.push(`id ${t.group}`);
  if (owner) meta.push(`owner ${owner === me ? "you" : userName(owner)}`);
  $("info-meta").textContent = meta.join(" · ");
  $("rename-box").hidden = !isOwner;
  const count = chatState(conv).count || g.members.length;
  $("info-count").textContent = count ? `(${count})` : "";
  const members = [...g.members].sort((a, b) => (a === me ? -1 : b === me ? 1 : userName(a).localeCompare(userName(b))));
  const rows = members.map((uid) => {
    const li = el("li", "member");
    li.dataset.uid = String(uid);
    const av = el("span", "avatar");
    setAvatar(av, userName(uid));
    li.append(av, el("span", "name", uid === me ? `${userName(uid)} (you)` : userName(uid)));
    if (uid === owner) li.append(el("span", "tag owner", "owner"));
    if (isOwner && uid !== me) {
      const b = el("button", "ghost small remove-btn", "Remove");
      b.type = "button";
      b.onclick = () => infoAction(() => client.removeMembers(t.group, [uid]));
      li.append(b);
    }
    return li;
  });
  if (g.more) rows.push(el("li", "muted small", `and ${Math.max(0, count - g.members.length)} more`));
  $("info-members").replaceChildren(...rows);
  $("add-box").hidden = !v2 || (it && it.member === false);
  renderPicker($("add-list"), $("add-search").value, selectedAdds, new Set(g.members), () => {
    $("add-btn").disabled = selectedAdds.size === 0;
  });
  $("add-btn").disabled = selectedAdds.size === 0;
}

// infoAction runs a group request from the info dialog and shows its error.
async function infoAction(fn) {
  const err = $("info-error");
  err.hidden = true;
  if (!S.client || S.client.state !== "online") {
    err.textContent = "You are offline. Try again when connected.";
    err.hidden = false;
    return false;
  }
  try {
    await fn();
    if (S.activeTarget && S.activeTarget.group) await loadGroupInfo(S.activeTarget.group);
    return true;
  } catch (e) {
    err.textContent = groupErrorText(e);
    err.hidden = false;
    return false;
  }
}

async function addSelected() {
  const t = S.activeTarget;
  if (!t || !t.group || selectedAdds.size === 0) return;
  const uids = [...selectedAdds];
  if (await infoAction(() => S.client.addMembers(t.group, uids))) {
    selectedAdds.clear();
    renderInfo();
  }
}

async function renameActive() {
  const t = S.activeTarget;
  const name = $("rename-input").value.trim();
  if (!t || !t.group) return;
  const err = $("info-error");
  if (!name || new TextEncoder().encode(name).length > 64) {
    err.textContent = "A group name has 1 to 64 bytes.";
    err.hidden = false;
    return;
  }
  if (await infoAction(() => S.client.renameGroup(t.group, name))) {
    renderInfo();
    renderChatHeader();
  }
}

// ---------- presence ----------

// The user subscribes to the peers of their direct chats (the newest
// 1,000, and the open one); the SDK renews it after every reconnect.
let presenceKey = "";
let presenceTimer = null;
function schedulePresence() {
  if (presenceTimer !== null) return;
  presenceTimer = setTimeout(() => {
    presenceTimer = null;
    syncPresence();
  }, 200);
}

function syncPresence() {
  const client = S.client;
  if (!client || client.state !== "online" || client.version < 2) return;
  const peers = new Set();
  if (S.activeTarget && S.activeTarget.to) peers.add(S.activeTarget.to);
  for (const it of client.conversations()) {
    if (peers.size >= 1000) break;
    if (it.peer) peers.add(it.peer);
  }
  const list = [...peers].sort((a, b) => a - b);
  const key = list.join(",");
  if (key === presenceKey) return;
  presenceKey = key;
  client.subscribePresence(list).then(scheduleRender, () => {
    if (presenceKey === key) presenceKey = ""; // try again on the next change
  });
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
  $("info-btn").onclick = openInfo;
  $("chat-title").addEventListener("click", () => S.activeTarget && S.activeTarget.group && openInfo());
  $("info-close").onclick = () => $("info-dialog").close();
  $("info-done").onclick = () => $("info-dialog").close();
  $("info-leave").onclick = leaveActiveGroup;
  $("rename-btn").onclick = renameActive;
  $("add-btn").onclick = addSelected;
  $("add-search").addEventListener("input", renderInfo);
  $("info-form").addEventListener("submit", (e) => e.preventDefault());
  $("notify-btn").onclick = askNotify;
  $("jump-btn").onclick = jumpToBottom;
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendCurrent();
  });
  $("input").addEventListener("input", () => {
    autoGrow();
    if (S.client && S.active && $("input").value.trim()) S.client.typing(S.active);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendCurrent();
    }
  });
  $("messages").addEventListener("scroll", () => {
    if (S.active && $("messages").scrollTop < 120) loadOlder(S.active);
    updateJump();
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
    if (e.key === "Escape" && S.active && !$("group-dialog").open && !$("info-dialog").open && window.matchMedia("(max-width: 760px)").matches) closeChat();
  });
  // "last seen 5 min ago" and typing indicators age without events.
  setInterval(() => {
    if (S.active && S.client) renderChatHeader();
  }, 30000);
}

wire();
setAuthMode("login");
const saved = loadSession();
if (saved) startApp(saved);
else showLogin();
