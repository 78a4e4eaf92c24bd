// cicbot agent console: the desk (sign-in, live lists, the conversation, the reply box,
// actions, the customer and case panel) and the switch between the desk and the
// supervisor view. Plain JavaScript, no build step, no libraries.
//
// The page loads, all `defer` and in this order (console.html; bot/web/agent_console.py serves
// them): vendor/chart.umd.min.js, console-texts.js (window.CICBOT_TEXTS, the en/de
// texts, read here through t()), console-supervisor.js (window.cicbotSupervisor, the
// supervisor view's factory, called here once with the helpers it needs) and this file.
//
// Rules of this file (the first holds for the other two as well):
//  * every text from the server (customer messages, names, notes) is inserted with
//    textContent or as a text node, never as markup (the page's CSP also requires
//    Trusted Types, so an HTML sink would throw);
//  * the session token (from email + password, POST /api/v1/auth/login) or an API token
//    lives in sessionStorage only (this tab); sign-out ends the session and forgets it;
//  * live updates come from GET /api/v1/events, read with fetch() streaming because it
//    needs the Authorization header; a timer refreshes as well, because events are per
//    worker and a change made on another worker only shows up that way.
"use strict";

(() => {
  const TOKEN_KEY = "cicbot.agent.token";
  // why this tab was signed out, so that a reload still says it (the token is gone by then)
  const ENDED_KEY = "cicbot.agent.ended";
  const POLL_MS = 10000;
  const WATCHDOG_MS = 45000; // the server sends a heartbeat every 15 s
  const LANG = (navigator.language || "en").toLowerCase().startsWith("de") ? "de" : "en";

  const TEXTS = window.CICBOT_TEXTS; // console-texts.js
  const CHANNELS = {
    webchat: { en: "Web chat", de: "Web-Chat" },
    telegram: { en: "Telegram", de: "Telegram" },
    slack: { en: "Slack", de: "Slack" },
    email: { en: "E-mail", de: "E-Mail" },
    console: { en: "Terminal", de: "Terminal" },
  };
  const CASE_STATUSES = ["new", "in_progress", "waiting_customer", "resolved", "closed"];
  const AVATAR_COLOURS = ["#1f6feb", "#8250df", "#bf3989", "#cf222e", "#bc4c00", "#4d7c0f", "#0a7d74", "#5b6cff"];

  // --- small helpers -----------------------------------------------------------

  function t(key, params) {
    const text = TEXTS[LANG][key] ?? TEXTS.en[key] ?? key;
    if (!params) return text;
    return text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  }
  const $ = (id) => document.getElementById(id);
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  // labels the flows define (GET /agent/api/labels, read at sign-in): escalation reasons
  let LABELS = { en: {}, de: {} };
  function label(group, value) { // a known code in the agent's language, else the code readable
    const key = group + "." + value;
    const defined = LABELS[LANG]?.[key] ?? LABELS.en[key];
    if (defined !== undefined) return defined;
    if (key in TEXTS.en) return t(key);
    const words = String(value ?? "").replace(/_/g, " ");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }
  function channelName(ch) {
    return CHANNELS[ch]?.[LANG] ?? String(ch || "?");
  }
  function channelChip(ch) {
    const chip = el("span", "chip channel", channelName(ch));
    if (/^[a-z0-9_-]+$/.test(ch || "")) chip.classList.add("ch-" + ch);
    return chip;
  }
  function contactName(c) {
    return (c && c.name) || t("contact.unnamed", { id: c ? c.id : "?" });
  }
  function initials(name) {
    const letters = String(name).split(/\s+/)
      .map((word) => (word.match(/\p{L}/u) || [""])[0]).filter(Boolean)
      .slice(0, 2).join("").toUpperCase();
    return letters || "?";
  }
  function avatar(node, name, seed) {
    node.textContent = initials(name);
    let h = 0;
    for (const ch of String(seed ?? name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    node.style.background = AVATAR_COLOURS[h % AVATAR_COLOURS.length];
    return node;
  }
  function priorityClass(p) {
    return p >= 40 ? "urgent" : p >= 25 ? "high" : "normal";
  }
  function priorityChip(p) {
    const level = priorityClass(p);
    return el("span", "chip prio-" + level, t("prio." + level, { p }));
  }
  function duration(ms) {
    const min = Math.max(0, Math.floor(ms / 60000));
    if (min < 1) return t("time.now");
    if (min < 60) return t("time.min", { n: min });
    if (min < 24 * 60) return t("time.h", { h: Math.floor(min / 60), m: min % 60 });
    return t("time.d", { n: Math.floor(min / 1440) });
  }
  const dateFmt = new Intl.DateTimeFormat(LANG, { day: "numeric", month: "short", year: "numeric" });
  const timeFmt = new Intl.DateTimeFormat(LANG, { hour: "2-digit", minute: "2-digit" });
  const fullFmt = new Intl.DateTimeFormat(LANG, { dateStyle: "medium", timeStyle: "short" });
  const relFmt = new Intl.RelativeTimeFormat(LANG, { numeric: "auto" });
  function relative(date) {
    const diff = (date.getTime() - Date.now()) / 1000;
    const abs = Math.abs(diff);
    const [value, unit] = abs < 3600 ? [diff / 60, "minute"] : abs < 86400 ? [diff / 3600, "hour"] : [diff / 86400, "day"];
    return relFmt.format(Math.round(value), unit);
  }
  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  // --- state -------------------------------------------------------------------

  const state = {
    token: null,
    me: null,
    agents: new Map(), // id → {id, name, role, active}
    queue: [],
    queueTotal: 0,
    mine: [],
    all: [],
    allTotal: 0,
    list: sessionStorage.getItem("cicbot.agent.list") || "mine", // the tab: mine, queue or all
    current: null, // the open conversation's id
    detail: null,
    signature: "",
    mode: "reply",
    drafts: new Map(),
    busy: false,
    timers: [],
    seq: { lists: 0, conv: 0 }, // a slower, older answer never overwrites a newer one
    view: "desk", // or "supervisor" (supervisors and admins only)
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const token = state.token;
    const headers = { Authorization: "Bearer " + token, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path.startsWith("/agent/") ? path : "/api/v1" + path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "network", t("error.network"));
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const err = data && data.error ? data.error : {};
      if (res.status === 401 && state.token && state.token === token && state.me) signOut("login.expired");
      throw new ApiError(res.status, err.code || "http_error", err.message || res.statusText);
    }
    return data;
  }

  function toast(message, isError) {
    const node = el("div", "toast" + (isError ? " error" : ""), message);
    $("toasts").append(node);
    setTimeout(() => node.remove(), isError ? 7000 : 3500);
  }
  function failed(e) {
    if (e instanceof ApiError && e.status === 401) return; // signed out already
    toast(e instanceof ApiError && e.status === 0 ? e.message : t("error.generic", { message: e.message }), true);
  }

  // --- sign in / out -------------------------------------------------------------

  function translatePage() {
    document.documentElement.lang = LANG;
    document.title = t("title") + " · cicbot";
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
    for (const node of document.querySelectorAll("[data-i18n-label]")) node.setAttribute("aria-label", t(node.dataset.i18nLabel));
  }

  function showLogin(message) {
    $("app").hidden = true;
    $("login").hidden = false;
    const error = $("login-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("login-submit").disabled = false;
    $("login-submit").textContent = t("login.submit");
    ($("email").value ? $("password") : $("email")).focus();
  }

  async function signInWithPassword(email, password) {
    let res, data = null;
    try {
      res = await fetch("/api/v1/auth/login", {
        method: "POST", cache: "no-store",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ email, password }),
      });
      try { data = await res.json(); } catch (e) { data = null; }
    } catch (e) {
      showLogin(t("login.network"));
      return;
    }
    if (res.status === 401 || res.status === 422) { showLogin(t("login.wrong")); return; }
    if (res.status === 429) { showLogin(t("login.throttled")); return; }
    if (!res.ok || !data || !data.token) { showLogin(t("error.generic", { message: res.statusText })); return; }
    $("password").value = "";
    signIn(data.token, false);
  }

  async function signIn(token, remembered) {
    state.token = token;
    let me;
    try {
      me = await api("GET", "/me");
    } catch (e) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      if (e.status === 401) showLogin(remembered ? t("login.expired") : t("login.invalid"));
      else if (e.status === 0) showLogin(t("login.network"));
      else showLogin(t("error.generic", { message: e.message }));
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.removeItem(ENDED_KEY);
    state.me = me;
    try {
      LABELS = await api("GET", "/agent/api/labels");
    } catch (e) { /* the codes, made readable, still say it */ }
    $("token").value = "";
    $("login").hidden = true;
    $("app").hidden = false;
    $("me-name").textContent = me.name;
    $("me-role").textContent = t("role." + me.role);
    avatar($("me-avatar"), me.name, "agent" + me.id);
    $("views").hidden = !isSupervisor();
    start();
  }

  function signOut(reason) {
    if (state.token && state.token.startsWith("cis_") && !reason) {
      // end the session on the server too (a signed-out tab's token is worthless)
      fetch("/api/v1/auth/logout", { method: "POST", headers: { Authorization: "Bearer " + state.token } }).catch(() => {});
    }
    showView("desk");
    supervisor.clear();
    $("views").hidden = true;
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.me = null;
    state.current = null;
    state.detail = null;
    state.signature = "";
    state.drafts.clear();
    for (const timer of state.timers) clearInterval(timer);
    state.timers = [];
    stopEvents();
    $("list-mine").replaceChildren();
    $("list-queue").replaceChildren();
    $("list-all").replaceChildren();
    inbox.clear();
    $("timeline").replaceChildren();
    $("text").value = "";
    showConversation(false);
    if (location.hash) history.replaceState(null, "", location.pathname);
    if (reason) sessionStorage.setItem(ENDED_KEY, reason);
    else sessionStorage.removeItem(ENDED_KEY);
    showLogin(reason ? t(reason) : null);
  }

  function isSupervisor() {
    return state.me && (state.me.role === "supervisor" || state.me.role === "admin");
  }

  // --- live updates: server-sent events over fetch ---------------------------------

  let events = { ctrl: null, retry: 0, timer: null };

  function setConn(which) {
    $("conn").dataset.state = which;
    $("conn-text").textContent = t("conn." + which);
  }

  function stopEvents() {
    clearTimeout(events.timer);
    if (events.ctrl) events.ctrl.abort();
    events = { ctrl: null, retry: 0, timer: null };
  }

  async function connectEvents() {
    if (!state.token) return;
    const ctrl = new AbortController();
    events.ctrl = ctrl;
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ctrl.abort(), WATCHDOG_MS);
    };
    try {
      arm();
      const res = await fetch("/api/v1/events", {
        headers: { Authorization: "Bearer " + state.token, Accept: "text/event-stream" },
        cache: "no-store",
        signal: ctrl.signal,
      });
      if (res.status === 401) {
        if (events.ctrl === ctrl) signOut("login.expired");
        return;
      }
      if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buffer = (buffer + value).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          handleEvent(block);
        }
      }
    } catch (e) {
      // aborted, network error or a server restart: reconnect below
    } finally {
      clearTimeout(watchdog);
    }
    if (events.ctrl !== ctrl || !state.token) return; // stopped on purpose
    setConn("offline");
    const delay = Math.min(30000, 1000 * 2 ** events.retry) * (0.75 + Math.random() * 0.5);
    events.retry = Math.min(events.retry + 1, 6);
    events.timer = setTimeout(connectEvents, delay);
  }

  function handleEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue; // a comment: the heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    let payload = {};
    try { payload = data.length ? JSON.parse(data.join("\n")) : {}; } catch (e) { payload = {}; }
    if (name === "hello") {
      events.retry = 0;
      setConn("live");
      refreshAll(); // catch up on whatever happened while disconnected
    } else if (name === "queue") {
      soon("lists", refreshLists);
    } else if (name === "conversation") {
      if (payload.id === state.current) soon("conv", refreshConversation);
      soon("lists", refreshLists);
    }
  }

  const pending = new Map();
  function soon(key, fn) { // coalesce bursts of events into one request
    if (pending.has(key)) return;
    pending.set(key, setTimeout(() => { pending.delete(key); fn(); }, 120));
  }

  // --- the lists on the left --------------------------------------------------------

  async function refreshLists() {
    if (!state.token) return;
    const seq = ++state.seq.lists;
    try {
      const [queue, mine, all] = await Promise.all([
        api("GET", "/queue?limit=100"), api("GET", "/conversations/mine"), api("GET", "/conversations?limit=100"),
      ]);
      if (seq !== state.seq.lists || !state.token) return;
      state.queue = queue.items;
      state.queueTotal = queue.total;
      state.mine = mine.items;
      state.all = all.items;
      state.allTotal = all.total;
      renderLists();
    } catch (e) {
      if (e.status !== 401 && e.status !== 0) failed(e);
    }
  }

  function renderLists() {
    renderList($("list-mine"), $("empty-mine"), state.mine, "mine");
    renderList($("list-queue"), $("empty-queue"), state.queue, "queue");
    renderList($("list-all"), $("empty-all"), state.all, "all");
    $("count-mine").textContent = String(state.mine.length);
    $("count-queue").textContent = String(state.queueTotal);
    $("count-all").textContent = String(state.allTotal);
    document.title = (state.queueTotal ? `(${state.queueTotal}) ` : "") + t("title") + " · cicbot";
  }

  function renderList(list, empty, items, kind) {
    const focused = document.activeElement && list.contains(document.activeElement)
      ? document.activeElement.dataset.id : null;
    list.replaceChildren(...items.map((c) => conversationItem(c, kind)));
    empty.hidden = items.length > 0;
    if (focused) list.querySelector(`[data-id="${CSS.escape(focused)}"]`)?.focus();
  }

  function conversationItem(c, kind) {
    const li = el("li");
    const item = el("button", "conv-item p-" + priorityClass(c.priority));
    item.type = "button";
    item.dataset.id = String(c.id);
    item.dataset.testid = "conv-" + c.id;
    if (c.id === state.current) item.classList.add("selected");
    const name = contactName(c.contact);
    item.append(avatar(el("span", "avatar"), name, "contact" + c.contact_id));
    const body = el("div");
    const top = el("div", "conv-row");
    top.append(el("span", "conv-name", name));
    const since = kind === "queue" || (kind === "all" && c.status === "queued") ? c.queued_at : c.updated_at;
    if (since) {
      const ms = Date.now() - new Date(since).getTime();
      const wait = el("span", "wait", duration(ms));
      wait.dataset.since = since;
      if (kind === "queue") wait.title = t("list.waiting", { t: duration(ms) });
      classifyWait(wait, kind === "queue" ? ms : 0);
      top.append(wait);
    }
    const bottom = el("div", "conv-row");
    bottom.append(channelChip(c.channel));
    if (c.contact && c.contact.value_segment) {
      const seg = el("span", "chip seg-" + c.contact.value_segment.replace(/[^A-Za-z0-9]/g, ""), c.contact.value_segment);
      seg.title = t("segment", { s: c.contact.value_segment });
      bottom.append(seg);
    }
    if (c.priority > 0) bottom.append(priorityChip(c.priority));
    if (kind === "all") {
      const owner = c.status === "agent" && c.assignee ? agentName(c.assignee) : t("list.waiting_chip");
      bottom.append(el("span", "chip owner" + (c.assignee ? "" : " waiting"), owner));
    }
    bottom.append(el("span", "conv-id", "#" + c.id));
    body.append(top, bottom);
    item.append(body);
    item.addEventListener("click", () => select(c.id));
    li.append(item);
    return li;
  }

  function showList(which) { // the tabs Mine / Unassigned / All (as in Chatwoot)
    if (!["mine", "queue", "all"].includes(which)) which = "mine";
    state.list = which;
    sessionStorage.setItem("cicbot.agent.list", which);
    for (const b of document.querySelectorAll(".list-tab")) b.setAttribute("aria-selected", String(b.dataset.list === which));
    for (const sec of document.querySelectorAll(".list-section[data-list]")) sec.hidden = inbox.searching() || sec.dataset.list !== which;
  }

  function classifyWait(node, ms) {
    node.classList.toggle("warn", ms >= 5 * 60000 && ms < 15 * 60000);
    node.classList.toggle("late", ms >= 15 * 60000);
  }

  function tickTimes() {
    for (const node of document.querySelectorAll(".wait[data-since]")) {
      const ms = Date.now() - new Date(node.dataset.since).getTime();
      node.textContent = duration(ms);
      if (node.closest("#list-queue")) classifyWait(node, ms);
    }
  }

  // --- the conversation in the middle ------------------------------------------------

  function showConversation(on) {
    $("app").classList.toggle("has-conv", on); // a phone shows the list or this, not both
    $("conv").hidden = !on;
    $("placeholder").hidden = on;
    $("details-body").hidden = !on;
    $("details-empty").hidden = on;
  }

  function select(id) {
    if (state.current !== null) state.drafts.set(state.current, $("text").value);
    if (state.current !== id) {
      state.current = id;
      state.detail = null;
      state.signature = "";
      $("text").value = state.drafts.get(id) || "";
      $("timeline").replaceChildren();
    }
    history.replaceState(null, "", "#/conversations/" + id);
    for (const node of document.querySelectorAll(".conv-item")) {
      node.classList.toggle("selected", node.dataset.id === String(id));
    }
    showConversation(true);
    refreshConversation().then(() => $("text").focus());
  }

  async function refreshConversation() {
    const id = state.current;
    if (id === null || !state.token) return;
    const seq = ++state.seq.conv;
    let detail;
    try {
      detail = await api("GET", `/conversations/${id}`);
    } catch (e) {
      if (e.status === 404 && state.current === id) {
        toast(t("conv.not_found"), true);
        state.current = null;
        showConversation(false);
        history.replaceState(null, "", location.pathname);
      } else if (e.status !== 401 && e.status !== 0) {
        failed(e);
      }
      return;
    }
    if (state.current !== id || seq !== state.seq.conv || !state.me) return; // moved on, or a newer answer came
    state.detail = detail;
    renderConversation(detail);
  }

  function agentName(id) {
    if (state.me && id === state.me.id) return state.me.name;
    return state.agents.get(id)?.name ?? t("who.agent", { id });
  }
  function who(actor) {
    const m = /^agent:(\d+)$/.exec(actor || "");
    if (m) return agentName(Number(m[1]));
    if (actor === "customer") return t("who.customer");
    if (actor === "bot") return t("who.bot");
    return t("who.system");
  }

  function renderConversation(d) {
    const name = contactName(d.contact);
    $("conv-name").replaceChildren(document.createTextNode(name + " "), el("span", "conv-id", "#" + d.id));
    const meta = $("conv-meta");
    let statusText = t("status." + d.status);
    if (d.status === "agent" && d.assignee) {
      statusText = d.assignee === state.me.id ? t("assigned.you") : t("assigned.other", { name: agentName(d.assignee) });
    }
    const status = el("span", "chip status-" + d.status, statusText);
    status.dataset.testid = "conv-status";
    meta.replaceChildren(channelChip(d.channel), status);
    if (d.priority > 0) meta.append(priorityChip(d.priority));

    const mineNow = d.status === "agent" && d.assignee === state.me.id;
    const canAct = d.status === "agent" && (mineNow || isSupervisor());
    $("btn-claim").hidden = !(d.status === "queued" || d.status === "bot");
    $("btn-transfer").hidden = !canAct;
    $("btn-handback").hidden = !canAct;
    $("btn-resolve").hidden = !canAct;
    renderComposer(d, canAct);

    const last = d.timeline.length ? d.timeline[d.timeline.length - 1].id : 0;
    const signature = [d.id, d.status, d.assignee, last, d.timeline.length, state.agents.size].join("|");
    if (signature !== state.signature) {
      const box = $("timeline");
      const first = state.signature === "";
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
      renderTimeline(d);
      if (first || atBottom) box.scrollTop = box.scrollHeight;
      state.signature = signature;
    }
    renderDetails(d);
  }

  function renderTimeline(d) {
    const box = $("timeline");
    const nodes = [];
    let day = null;
    let thread;
    const threads = new Set(d.timeline.map((tp) => tp.conversation_id)).size > 1;
    for (const tp of d.timeline) {
      const at = new Date(tp.created_at);
      if (!day || !sameDay(day, at)) {
        day = at;
        nodes.push(el("div", "day", dateFmt.format(at)));
      }
      if (threads && tp.conversation_id !== thread) {
        thread = tp.conversation_id;
        const label = el("div", "thread");
        label.append(el("span", null, tp.conversation_id === d.id ? t("tp.this_thread") : t("tp.thread", { id: tp.conversation_id ?? "–" })));
        label.append(channelChip(tp.channel));
        nodes.push(label);
      }
      nodes.push(touchpoint(tp, d));
    }
    box.replaceChildren(...nodes);
  }

  function metaLine(tp, whoText) {
    const line = el("div", "tp-meta");
    line.append(el("span", "tp-who", whoText), channelChip(tp.channel));
    const time = el("time", null, timeFmt.format(new Date(tp.created_at)));
    time.dateTime = tp.created_at;
    time.title = fullFmt.format(new Date(tp.created_at));
    line.append(time);
    return line;
  }

  function touchpoint(tp, d) {
    const other = tp.conversation_id !== d.id ? " other-conv" : "";
    if (tp.direction === "in" || tp.direction === "out") {
      const isAgent = /^agent:/.test(tp.actor || "");
      const cls = tp.direction === "in" ? "in" : "out " + (isAgent ? "agent" : "bot");
      const node = el("div", "tp " + cls + (tp.kind === "button" ? " button" : "") + other);
      node.dataset.kind = tp.kind;
      node.dataset.direction = tp.direction;
      let whoText = who(tp.actor);
      if (tp.direction === "in") whoText = tp.actor === "customer" ? contactName(d.contact) : whoText;
      node.append(metaLine(tp, tp.kind === "button" ? whoText + " · " + t("tp.button") : whoText));
      node.append(el("div", "bubble", tp.text ?? ""));
      const buttons = (tp.payload && Array.isArray(tp.payload.buttons)) ? tp.payload.buttons : [];
      if (tp.direction === "out" && buttons.length) {
        const row = el("div", "tp-buttons");
        for (const b of buttons) row.append(el("span", null, b && b.label));
        node.append(row);
      }
      return node;
    }
    if (tp.kind === "note") {
      const node = el("div", "note" + other);
      node.dataset.kind = "note";
      node.append(metaLine(tp, t("tp.note") + " · " + who(tp.actor)));
      node.append(el("div", "note-text", tp.text ?? ""));
      return node;
    }
    const node = el("div", "event" + (tp.kind === "delivery_failed" ? " warn" : "") + other);
    node.dataset.kind = tp.kind;
    const label = el("span", null, eventText(tp) + " · " + timeFmt.format(new Date(tp.created_at)));
    label.title = fullFmt.format(new Date(tp.created_at)) + " · " + channelName(tp.channel);
    node.append(label);
    return node;
  }

  function eventText(tp) {
    const p = tp.payload || {};
    const params = { who: who(tp.actor) };
    for (const [k, v] of Object.entries(p)) {
      params[k] = typeof v === "boolean" ? t(v ? "yes" : "no") : typeof v === "object" ? "" : String(v);
    }
    if (tp.kind === "case_status") params.status = t("case.status." + p.status);
    if (tp.kind === "escalated") params.reason = label("reason", p.reason);
    if (tp.kind === "case_opened") {
      params.category = label("category", p.category);
      params.severity = label("severity", p.severity);
    }
    if (tp.kind === "lifecycle_changed") {
      params.old = label("phase", p.old);
      params.new = label("phase", p.new);
    }
    if (tp.kind === "transferred") params.to = p.to_name || agentName(p.to);
    const key = "ev." + tp.kind;
    if (key in TEXTS.en) return t(key, params);
    const words = String(tp.kind || "event").replace(/_/g, " ");
    const extra = Object.entries(p)
      .filter(([, v]) => typeof v === "string" || typeof v === "number")
      .slice(0, 3).map(([k, v]) => `${k}: ${v}`).join(", ");
    return words.charAt(0).toUpperCase() + words.slice(1) + (tp.text ? ": " + tp.text : "") + (extra ? " (" + extra + ")" : "");
  }

  // --- the reply box -------------------------------------------------------------

  // replies and internal notes follow one rule: the agent's own conversation (a
  // supervisor's: any an agent owns); the server refuses the rest with 403 / 409
  function renderComposer(d, canAct) {
    const composer = $("composer");
    const note = state.mode === "note";
    composer.classList.toggle("is-note", note);
    for (const b of composer.querySelectorAll(".mode")) {
      const active = b.dataset.mode === state.mode;
      b.classList.toggle("active", active);
      b.setAttribute("aria-selected", String(active));
    }
    const text = $("text");
    const locked = !canAct;
    text.disabled = locked;
    $("send").disabled = locked || state.busy;
    $("send").textContent = note ? t("composer.add_note") : t("composer.send");
    text.placeholder = note ? t("composer.note_placeholder") : t("composer.reply_placeholder", { channel: channelName(d.channel) });
    const lock = $("composer-lock");
    lock.hidden = !locked;
    if (locked) {
      lock.textContent = d.status === "closed" ? t("composer.locked_closed")
        : d.status === "agent" ? t("composer.locked_other", { name: agentName(d.assignee) })
        : t("composer.locked_claim");
    }
    grow();
  }

  function grow() {
    const text = $("text");
    text.style.height = "auto";
    text.style.height = Math.min(text.scrollHeight, 220) + "px";
  }

  function setMode(mode) {
    state.mode = mode;
    if (state.detail) renderConversation(state.detail);
    $("text").focus();
  }

  async function send() {
    const d = state.detail;
    const text = $("text").value;
    if (!d || !text.trim() || state.busy) return;
    const note = state.mode === "note";
    state.busy = true;
    $("send").disabled = true;
    try {
      await api("POST", `/conversations/${d.id}/${note ? "note" : "reply"}`, { text });
      if (state.current === d.id) {
        $("text").value = "";
        state.drafts.delete(d.id);
        grow();
      }
      await refreshConversation();
    } catch (e) {
      failed(e);
    } finally {
      state.busy = false;
      if (state.detail) renderConversation(state.detail);
    }
  }

  // --- actions ---------------------------------------------------------------------

  async function act(path, done, body) {
    const d = state.detail;
    if (!d || state.busy) return;
    state.busy = true;
    const buttons = document.querySelectorAll(".actions .btn");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      await api("POST", `/conversations/${d.id}/${path}`, body);
      toast(done);
      await Promise.all([refreshConversation(), refreshLists()]);
    } catch (e) {
      failed(e);
      await Promise.all([refreshConversation(), refreshLists()]);
    } finally {
      state.busy = false;
      buttons.forEach((b) => { b.disabled = false; });
      if (state.detail) renderConversation(state.detail);
    }
  }

  async function loadAgents() {
    try {
      const data = await api("GET", "/agent/api/colleagues");
      state.agents = new Map(data.items.map((a) => [a.id, a]));
      if (state.detail) renderConversation(state.detail);
    } catch (e) {
      // names fall back to "Agent #id"
    }
  }

  async function openTransfer() {
    await loadAgents();
    const d = state.detail;
    if (!d) return;
    const options = [...state.agents.values()].filter((a) => a.active && a.id !== d.assignee);
    if (!options.length) { toast(t("transfer.none"), true); return; }
    const select = $("transfer-to");
    select.replaceChildren(...options.map((a) => {
      const o = el("option", null, `${a.name} (${t("role." + a.role)})`);
      o.value = String(a.id);
      return o;
    }));
    $("transfer-dialog").showModal();
  }

  // --- the customer and case panel ---------------------------------------------------

  function renderDetails(d) {
    const c = d.contact;
    const name = contactName(c);
    avatar($("cust-avatar"), name, "contact" + c.id);
    $("cust-name").textContent = name;
    const chips = [];
    if (c.value_segment) {
      chips.push(el("span", "chip seg-" + c.value_segment.replace(/[^A-Za-z0-9]/g, ""), t("segment", { s: c.value_segment })));
    }
    if (c.lifecycle_phase) chips.push(el("span", "chip phase-" + c.lifecycle_phase.replace(/[^a-z_]/g, ""), label("phase", c.lifecycle_phase)));
    $("cust-chips").replaceChildren(...chips);

    const facts = [];
    const fact = (key, value) => {
      if (value === null || value === undefined || value === "") return;
      facts.push(el("dt", null, t(key)), el("dd", null, value));
    };
    fact("fact.email", c.email);
    fact("fact.phone", c.phone);
    fact("fact.language", c.locale ? c.locale.toUpperCase() : null);
    fact("fact.since", c.created_at ? dateFmt.format(new Date(c.created_at)) : null);
    fact("fact.last", c.last_contact_at ? relative(new Date(c.last_contact_at)) : null);
    fact("fact.id", String(c.id));
    $("cust-facts").replaceChildren(...facts);

    $("cust-identities").replaceChildren(...d.identities.map((i) => {
      const li = el("li");
      li.append(channelChip(i.channel));
      const ext = el("span", "ext", i.external_id);
      ext.title = i.external_id;
      li.append(ext);
      if (!i.reachable) li.append(el("span", "unreachable", t("unreachable")));
      return li;
    }));

    const box = $("cases");
    const focused = document.activeElement && box.contains(document.activeElement);
    if (!focused) { // never rebuild a select the agent is using
      box.replaceChildren(...d.cases.map((k) => caseCard(k, d)));
    }
    $("count-cases").textContent = String(d.cases.length);
    $("cases-empty").hidden = d.cases.length > 0;
  }

  function caseCard(k, d) {
    const card = el("div", "case" + (k.conversation_id === d.id ? " current" : ""));
    card.dataset.reference = k.reference;
    const head = el("div", "case-head");
    head.append(el("span", "case-ref", k.reference));
    const select = el("select");
    select.setAttribute("aria-label", k.reference);
    for (const s of CASE_STATUSES) {
      const o = el("option", null, t("case.status." + s));
      o.value = s;
      select.append(o);
    }
    if (!CASE_STATUSES.includes(k.status)) {
      const o = el("option", null, k.status);
      o.value = k.status;
      select.append(o);
    }
    select.value = k.status;
    select.addEventListener("change", async () => {
      const status = select.value;
      select.disabled = true;
      try {
        await api("PATCH", `/cases/${encodeURIComponent(k.reference)}`, { status });
        toast(t("case.updated", { reference: k.reference, status: t("case.status." + status) }));
      } catch (e) {
        failed(e);
      } finally {
        select.disabled = false;
        select.blur();
        refreshConversation();
      }
    });
    head.append(select);
    card.append(head);
    if (k.description) card.append(el("div", "case-desc", k.description));
    const facts = el("div", "case-facts");
    const parts = [label("category", k.category), k.severity && t("case.severity", { s: label("severity", k.severity) }), k.order_reference].filter(Boolean);
    if (parts.length) facts.append(el("span", null, parts.join(" · ")));
    if (k.sla_due_at && !["resolved", "closed"].includes(k.status)) {
      const due = new Date(k.sla_due_at);
      const overdue = due.getTime() < Date.now();
      const line = el("span", overdue ? "overdue" : null, t(overdue ? "case.overdue" : "case.sla_due", { t: overdue ? fullFmt.format(due) : relative(due) }));
      line.title = fullFmt.format(due);
      facts.append(line);
    }
    facts.append(el("span", null, t("case.opened", { t: fullFmt.format(new Date(k.created_at)) })));
    card.append(facts);
    return card;
  }

  // --- the supervisor view (console-supervisor.js) -------------------------------------

  const supervisor = window.cicbotSupervisor({
    $, el, t, label, channelName, lang: LANG, fullFmt, api, ApiError, isSupervisor,
    currentView: () => state.view,
  });

  const inbox = window.cicbotInbox({
    $, el, t, api, failed, channelName, contactName, fullFmt,
    select: (id) => select(id),
    showList: () => showList(state.list),
    text: () => $("text"),
  });

  function showView(view) {
    if (view === "supervisor" && !isSupervisor()) view = "desk";
    const changed = state.view !== view;
    state.view = view;
    $("app").classList.toggle("view-supervisor", view === "supervisor");
    $("supervisor").hidden = view !== "supervisor";
    for (const b of document.querySelectorAll(".view-tab")) b.setAttribute("aria-pressed", String(b.dataset.view === view));
    if (view === "supervisor") {
      history.replaceState(null, "", "#/supervisor");
      if (changed) supervisor.load();
    } else {
      if (changed) supervisor.clear();
      history.replaceState(null, "", state.current !== null ? "#/conversations/" + state.current : location.pathname);
    }
  }

  // --- start ---------------------------------------------------------------------

  async function refreshAll() {
    await Promise.all([refreshLists(), refreshConversation()]);
  }

  function start() {
    setConn("connecting");
    stopEvents();
    loadAgents();
    refreshLists();
    showList(state.list);
    inbox.loadCanned();
    const m = /^#\/conversations\/(\d+)$/.exec(location.hash);
    if (m) select(Number(m[1]));
    else showConversation(false);
    if (location.hash === "#/supervisor") showView("supervisor");
    connectEvents();
    state.timers.push(setInterval(refreshAll, POLL_MS));
    state.timers.push(setInterval(tickTimes, 30000));
    state.timers.push(setInterval(loadAgents, 5 * 60000));
  }

  function wire() {
    translatePage();
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token").value.trim();
      const email = $("email").value.trim();
      const password = $("password").value;
      if (!token && !(email && password)) { showLogin(t("login.empty")); return; }
      sessionStorage.removeItem(ENDED_KEY); // a new attempt: the old reason is told
      $("login-submit").disabled = true;
      $("login-submit").textContent = t("login.checking");
      if (email && password) signInWithPassword(email, password);
      else signIn(token, false);
    });
    $("signout").addEventListener("click", () => signOut(null));
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    $("text").addEventListener("keydown", (e) => {
      if (inbox.cannedKey(e)) return; // the canned-reply menu took the key
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
        e.preventDefault();
        send();
      }
    });
    $("text").addEventListener("input", grow);
    for (const b of document.querySelectorAll(".mode")) b.addEventListener("click", () => setMode(b.dataset.mode));
    $("btn-claim").addEventListener("click", () => act("claim", t("done.claimed")).then(() => $("text").focus()));
    $("btn-resolve").addEventListener("click", () => act("resolve", t("done.resolved")));
    $("btn-handback").addEventListener("click", () => act("handback", t("done.handed_back")));
    $("btn-transfer").addEventListener("click", openTransfer);
    $("btn-back").addEventListener("click", () => { // a phone: back to the list
      if (state.current !== null) state.drafts.set(state.current, $("text").value);
      state.current = null;
      state.detail = null;
      state.signature = "";
      showConversation(false);
      history.replaceState(null, "", location.pathname);
      for (const node of document.querySelectorAll(".conv-item.selected")) node.classList.remove("selected");
    });
    $("transfer-cancel").addEventListener("click", () => $("transfer-dialog").close());
    $("transfer-ok").addEventListener("click", () => {
      const id = Number($("transfer-to").value);
      $("transfer-dialog").close();
      if (id) act("transfer", t("done.transferred", { name: agentName(id) }), { agent_id: id });
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && state.token) refreshAll();
    });
    window.addEventListener("hashchange", () => {
      const m = /^#\/conversations\/(\d+)$/.exec(location.hash);
      if (m && state.token && Number(m[1]) !== state.current) select(Number(m[1]));
      if (state.token) showView(location.hash === "#/supervisor" ? "supervisor" : "desk");
    });
    for (const b of document.querySelectorAll(".view-tab")) b.addEventListener("click", () => showView(b.dataset.view));
    for (const b of document.querySelectorAll(".list-tab")) b.addEventListener("click", () => showList(b.dataset.list));
    inbox.wire();
    supervisor.wire();

    const saved = sessionStorage.getItem(TOKEN_KEY);
    const ended = sessionStorage.getItem(ENDED_KEY);
    if (saved) signIn(saved, true);
    else showLogin(ended === "login.expired" ? t(ended) : null);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
