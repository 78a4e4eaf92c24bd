"use strict";
const LANG = (navigator.language || "en").slice(0, 2) === "de" ? "de" : "en";
const UI = {
  de: { title: "Kundenservice", placeholder: "Ihre Nachricht…", send: "Senden",
        online: "online", offline: "Verbindung wird hergestellt…",
        busy: "Gerade sehr gefragt – Ihre Nachricht wird gleich gesendet…",
        refused: "Der Chat ist von dieser Seite aus nicht erreichbar." },
  en: { title: "Customer service", placeholder: "Type your message…", send: "Send",
        online: "online", offline: "connecting…",
        busy: "Very busy right now – your message will be sent shortly…",
        refused: "The chat cannot be reached from this page." },
}[LANG];
document.documentElement.lang = LANG;
document.getElementById("title").textContent = UI.title;
document.getElementById("text").placeholder = UI.placeholder;
document.getElementById("send").textContent = UI.send;

// crypto.randomUUID exists only in secure contexts (https, localhost); plain http on a
// LAN address has getRandomValues only
const newId = () => crypto.randomUUID ? crypto.randomUUID()
  : Array.from(crypto.getRandomValues(new Uint8Array(16)),
               b => b.toString(16).padStart(2, "0")).join("");
// who the visitor is lives in an HttpOnly cookie the server set with this page: no id in
// the URL or in storage (an id kept here by an older version is dropped)
localStorage.removeItem("cicbot.visitor");

const log = document.getElementById("log");
const shown = new Set();  // outbox ids on screen: a reply in both history and live shows once
const unacked = new Map();  // id → frame, resent after a reconnect (the server dedupes)
let ws = null, retry = 0, retryAfter = 0;
const NO_SESSION = 4401, BAD_ORIGIN = 4403, TOO_MANY = 4429, SERVER_BUSY = 1013;

function bubble(direction, text, pendingId) {
  const div = document.createElement("div");
  div.className = "msg " + (direction === "in" ? "in" : "out");
  div.textContent = text;  // never as markup: customer and bot text stay text
  if (pendingId) { div.classList.add("pending"); div.dataset.id = pendingId; }
  log.appendChild(div);
  return div;
}
function choices(list) {
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
function send(frame, shown) {
  frame.id = newId();
  unacked.set(frame.id, frame);
  bubble("in", shown, frame.id);
  scroll();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
}
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams({ lang: LANG });
  ws = new WebSocket(`${proto}://${location.host}/ws/chat?${q}`);
  ws.onopen = () => {
    retry = 0;
    document.getElementById("state").textContent = UI.online;
    for (const frame of unacked.values()) ws.send(JSON.stringify(frame));
  };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "history") {
      log.replaceChildren();
      shown.clear();
      for (const h of m.messages) {
        if (h.id != null) shown.add(h.id);
        bubble(h.direction, h.text); choices(h.choices);
      }
      for (const [id, f] of unacked) bubble("in", f.text || f.label, id);
    } else if (m.type === "message") {
      if (shown.has(m.id)) return;  // already in the history just received
      shown.add(m.id);
      bubble("out", m.text); choices(m.choices);
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
    const state = document.getElementById("state");
    if (ev.code === BAD_ORIGIN) { state.textContent = UI.refused; return; }
    let wait = Math.min(1000 * 2 ** retry++, 15000);
    if (ev.code === TOO_MANY || ev.code === SERVER_BUSY) {
      state.textContent = UI.busy;
      wait = Math.max(wait, 1000 * retryAfter);
    } else {
      state.textContent = UI.offline;
    }
    retryAfter = 0;
    // no (or an outdated) session cookie: fetching the page again sets a new one
    const renew = ev.code === NO_SESSION
      ? fetch(location.pathname, { cache: "no-store", credentials: "same-origin" })
      : Promise.resolve();
    renew.catch(() => {}).finally(() => setTimeout(connect, wait));
  };
}
document.getElementById("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  const text = input.value;
  if (!text.trim()) return;
  input.value = "";
  send({ type: "message", text }, text);
});
connect();
