"use strict";
// The web chat page. Every text is set with textContent, never as markup (the page's CSP
// requires Trusted Types too). The page chrome's own words are below; what the company
// says (welcome, pre-chat form, who is there) comes from GET /chat/info, from the
// catalogs (flows/locales), in both languages, so a change of language needs no request.
const UI_TEXTS = {
  de: { title: "Kundenservice", placeholder: "Ihre Nachricht…", send: "Senden",
        offline: "Verbindung wird hergestellt…",
        busy: "Gerade sehr gefragt – Ihre Nachricht wird gleich gesendet…",
        refused: "Der Chat ist von dieser Seite aus nicht erreichbar.", you: "Sie" },
  en: { title: "Customer service", placeholder: "Type your message…", send: "Send",
        offline: "connecting…",
        busy: "Very busy right now – your message will be sent shortly…",
        refused: "The chat cannot be reached from this page.", you: "You" },
};
const INFO_EVERY_MS = 60000;
let LANG = (navigator.language || "en").slice(0, 2) === "de" ? "de" : "en";
let UI = UI_TEXTS[LANG];
let info = null;  // GET /chat/info: company, presence, texts per language
let prechat = null;  // {name, email} from the optional form, sent with the socket

// crypto.randomUUID exists only in secure contexts (https, localhost); plain http on a
// LAN address has getRandomValues only
const newId = () => crypto.randomUUID ? crypto.randomUUID()
  : Array.from(crypto.getRandomValues(new Uint8Array(16)),
               b => b.toString(16).padStart(2, "0")).join("");
// who the visitor is lives in an HttpOnly cookie the server set with this page: no id in
// the URL or in storage (an id kept here by an older version is dropped)
localStorage.removeItem("cicbot.visitor");

const $ = (id) => document.getElementById(id);
const log = $("log");
const welcome = $("welcome");
const shown = new Set();  // outbox ids on screen: a reply in both history and live shows once
const unacked = new Map();  // id → frame, resent after a reconnect (the server dedupes)
let ws = null, retry = 0, retryAfter = 0, reconnectNow = false;
const NO_SESSION = 4401, BAD_ORIGIN = 4403, TOO_MANY = 4429, SERVER_BUSY = 1013;

function say(key) { return (info && info.texts[LANG][key]) || ""; }
function timeText(at) {
  const when = at ? new Date(at) : new Date();
  return new Intl.DateTimeFormat(LANG, { hour: "2-digit", minute: "2-digit" }).format(when);
}
function initials(name) {
  return name.split(/\s+/).filter(Boolean).slice(0, 2).map(w => w[0].toUpperCase()).join("");
}

// the page's chrome in the chosen language (the customer may switch it in the chat)
function translate(lang) {
  if (lang && lang !== LANG && UI_TEXTS[lang]) LANG = lang;
  UI = UI_TEXTS[LANG];
  document.documentElement.lang = LANG;
  const company = info ? info.company : "";
  $("title").textContent = company || UI.title;
  document.title = company ? `${company} · ${UI.title}` : UI.title;
  $("logo").textContent = initials(company || UI.title);
  $("text").placeholder = UI.placeholder;
  $("send").textContent = UI.send;
  $("welcome-text").textContent = say("welcome");
  $("prechat-intro").textContent = say("prechat");
  $("prechat-name-label").textContent = say("name");
  $("prechat-email-label").textContent = say("email");
  $("prechat-start").textContent = say("start");
  for (const node of log.querySelectorAll(".who[data-bot]")) node.textContent = say("bot");
  showPresence();
}

// who is there: the team on duty with agents online, the assistant only, or when the team
// is back; the socket's own state shows only when it is not connected
function showPresence() {
  const state = $("state");
  if (!info) { state.textContent = ""; return; }
  state.textContent = say(info.presence.state);
  state.dataset.state = info.presence.state;
}
async function loadInfo() {
  try {
    const res = await fetch("/chat/info", { cache: "no-store", credentials: "same-origin" });
    if (res.ok) info = await res.json();
  } catch (e) { /* keep the last answer */ }
  translate();
  if (!log.querySelector(".msg")) showWelcome();
}
function setConn(text) {
  $("conn").hidden = !text;
  $("conn").textContent = text || "";
}

function showWelcome() {  // before the customer's first word: who we are, and the form
  const empty = !log.querySelector(".msg");
  welcome.hidden = !empty;
  $("prechat").hidden = !empty || prechat !== null || !(info && info.prechat_form);
}

function bubble(direction, text, opts = {}) {
  const row = document.createElement("div");
  row.className = "row " + (direction === "in" ? "in" : "out");
  const div = document.createElement("div");
  div.className = "msg " + (direction === "in" ? "in" : "out");
  div.textContent = text;  // never as markup: customer and bot text stay text
  if (opts.pendingId) { div.classList.add("pending"); div.dataset.id = opts.pendingId; }
  const meta = document.createElement("div");
  meta.className = "meta";
  if (direction !== "in") {
    const agent = opts.sender || null;
    const avatar = document.createElement("span");
    avatar.className = "avatar " + (agent ? "agent" : "bot");
    avatar.textContent = agent ? initials(agent) : "";
    avatar.setAttribute("aria-hidden", "true");
    row.appendChild(avatar);
    const who = document.createElement("span");
    who.className = "who";
    if (agent) { who.textContent = agent; div.classList.add("agent"); }
    else { who.dataset.bot = "1"; who.textContent = say("bot"); }
    meta.appendChild(who);
  }
  const time = document.createElement("time");
  time.dateTime = opts.at || new Date().toISOString();
  time.textContent = timeText(opts.at);
  meta.appendChild(time);
  const body = document.createElement("div");
  body.className = "body";
  body.append(meta, div);
  row.appendChild(body);
  log.appendChild(row);
  welcome.hidden = true;
  return div;
}
function choices(list) {
  // an earlier question's buttons are answered or stale: only the newest row is live
  for (const b of log.querySelectorAll(".choices button")) b.disabled = true;
  if (!list || !list.length) return;
  const box = document.createElement("div");
  box.className = "choices";
  for (const c of list) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = c.label;
    b.onclick = () => {
      box.querySelectorAll("button").forEach(x => x.disabled = true);
      send({ type: "button", payload: c.payload, label: c.label }, c.label);
    };
    box.appendChild(b);
  }
  log.appendChild(box);
}
function scroll() { log.scrollTop = log.scrollHeight; }
function send(frame, text) {
  frame.id = newId();
  unacked.set(frame.id, frame);
  bubble("in", text, { pendingId: frame.id });
  $("prechat").hidden = true;
  scroll();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
}
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams({ lang: LANG });
  if (prechat && prechat.name) q.set("name", prechat.name);
  if (prechat && prechat.email) q.set("email", prechat.email);
  ws = new WebSocket(`${proto}://${location.host}/ws/chat?${q}`);
  ws.onopen = () => {
    retry = 0;
    setConn(null);
    for (const frame of unacked.values()) ws.send(JSON.stringify(frame));
  };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "history") {
      for (const node of log.querySelectorAll(".row, .choices, .error")) node.remove();
      shown.clear();
      if (m.locale) translate(m.locale);
      for (const h of m.messages) {
        if (h.id != null) shown.add(h.id);
        bubble(h.direction, h.text, { at: h.at, sender: h.sender }); choices(h.choices);
      }
      for (const [id, f] of unacked) bubble("in", f.text || f.label, { pendingId: id });
      showWelcome();
    } else if (m.type === "message") {
      if (shown.has(m.id)) return;  // already in the history just received
      shown.add(m.id);
      if (m.locale) translate(m.locale);
      bubble("out", m.text, { at: m.at, sender: m.sender }); choices(m.choices);
    } else if (m.type === "ack") {
      unacked.delete(m.id);
      const el = log.querySelector(`[data-id="${CSS.escape(m.id)}"]`);
      if (el) el.classList.remove("pending");
    } else if (m.type === "error" && m.retry_after) {
      retryAfter = m.retry_after;  // a limit: the close follows, the message is resent
    } else if (m.type === "error") {
      const d = document.createElement("div"); d.className = "error"; d.textContent = m.error;
      log.appendChild(d);
    }
    scroll();
  };
  ws.onclose = (ev) => {
    if (reconnectNow) { reconnectNow = false; connect(); return; }  // the form's details
    if (ev.code === BAD_ORIGIN) { setConn(UI.refused); return; }
    let wait = Math.min(1000 * 2 ** retry++, 15000);
    if (ev.code === TOO_MANY || ev.code === SERVER_BUSY) {
      setConn(UI.busy);
      wait = Math.max(wait, 1000 * retryAfter);
    } else {
      setConn(UI.offline);
    }
    retryAfter = 0;
    // no (or an outdated) session cookie: fetching the page again sets a new one
    const renew = ev.code === NO_SESSION
      ? fetch(location.pathname, { cache: "no-store", credentials: "same-origin" })
      : Promise.resolve();
    renew.catch(() => {}).finally(() => setTimeout(connect, wait));
  };
}
$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim()) return;
  input.value = "";
  send({ type: "message", text }, text);
});
$("prechat").addEventListener("submit", (e) => {
  e.preventDefault();
  prechat = { name: $("prechat-name").value.trim(), email: $("prechat-email").value.trim() };
  $("prechat").hidden = true;
  $("text").focus();
  if (ws && ws.readyState === WebSocket.OPEN) { reconnectNow = true; ws.close(); }
});
translate();
loadInfo();
setInterval(loadInfo, INFO_EVERY_MS);
connect();
