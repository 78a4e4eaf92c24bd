// cicbot agent console: search across contacts and messages, and canned replies (`/` in
// the reply box). Plain JavaScript, no build step (issue 20, finding 6).
//
// Published as one factory, window.cicbotInbox(deps), which console.js calls once; it
// returns {wire, clear, searching, loadCanned, cannedKey}. What it needs from the desk
// comes in `deps`: $, el, t, api, failed, channelName, contactName, fullFmt, select(id)
// (open a conversation), showList() (show the chosen tab again) and text() (the reply box).
//
// Rules (as in console.js): every text from the server goes in with textContent via el(),
// never as markup; no inline styles or scripts (the page's CSP).
"use strict";

window.cicbotInbox = function cicbotInbox(deps) {
  const NEEDS = ["$", "el", "t", "api", "failed", "channelName", "contactName", "fullFmt", "select", "showList", "text"];
  const missing = NEEDS.filter((name) => deps[name] === undefined);
  if (missing.length) throw new TypeError("cicbotInbox: missing " + missing.join(", "));
  const { $, el, t, api, failed, channelName, contactName, fullFmt, select, showList, text } = deps;

  // --- search ------------------------------------------------------------------------

  const search = { timer: null, seq: 0, query: "" };

  function searching() {
    return search.query !== "";
  }

  function onSearchInput() {
    clearTimeout(search.timer);
    const query = $("search").value.trim();
    search.timer = setTimeout(() => runSearch(query), 250); // one request per pause in typing
  }

  async function runSearch(query) {
    search.query = query;
    const seq = ++search.seq;
    $("search-results").hidden = !query;
    showList();
    if (!query) return;
    let found;
    try {
      found = await api("GET", "/search?q=" + encodeURIComponent(query));
    } catch (e) {
      if (e.status !== 401) failed(e);
      return;
    }
    if (seq !== search.seq) return; // a newer query is on its way
    $("search-contacts").replaceChildren(...found.contacts.map(contactHit));
    $("search-messages").replaceChildren(...found.messages.map((m) => messageHit(m, query)));
    $("search-empty").hidden = found.contacts.length + found.messages.length > 0;
  }

  function hitButton(conversationId) {
    const item = el("button", "conv-item search-hit");
    item.type = "button";
    if (conversationId) {
      item.dataset.id = String(conversationId);
      item.addEventListener("click", () => select(conversationId));
    } else {
      item.disabled = true;
    }
    return item;
  }

  function contactHit(c) {
    const li = el("li");
    const item = hitButton(c.conversation_id);
    const body = el("div");
    body.append(el("div", "conv-name", contactName(c)));
    const facts = [c.email, c.phone].filter(Boolean).join(" · ");
    body.append(el("div", "hit-sub", facts || (c.conversation_id ? "#" + c.conversation_id : t("search.no_conv"))));
    item.append(body);
    li.append(item);
    return li;
  }

  function messageHit(m, query) {
    const li = el("li");
    const item = hitButton(m.conversation_id);
    const body = el("div");
    const top = el("div", "conv-row");
    top.append(el("span", "conv-name", contactName(m.contact)), el("span", "hit-sub", channelName(m.channel)));
    body.append(top, snippet(m.text || "", query));
    body.append(el("div", "hit-sub", fullFmt.format(new Date(m.created_at))));
    item.append(body);
    li.append(item);
    return li;
  }

  function snippet(whole, query) { // the match in its context, the match itself marked
    const at = whole.toLowerCase().indexOf(query.toLowerCase());
    const box = el("div", "hit-text");
    if (at < 0) { box.textContent = whole.slice(0, 120); return box; }
    const start = Math.max(0, at - 40);
    box.append(document.createTextNode((start ? "…" : "") + whole.slice(start, at)));
    box.append(el("mark", null, whole.slice(at, at + query.length)));
    box.append(document.createTextNode(whole.slice(at + query.length, at + query.length + 60)));
    return box;
  }

  // --- canned replies ----------------------------------------------------------------

  const canned = { items: [], shown: [], active: 0 };

  async function loadCanned() {
    try {
      canned.items = (await api("GET", "/canned")).items;
    } catch (e) {
      canned.items = []; // the box works without them
    }
  }

  function cannedQuery() { // "/deliv" at the start of the box, nothing typed after a space
    const m = /^\/([\w-]*)$/.exec(text().value);
    return m ? m[1].toLowerCase() : null;
  }

  function renderCanned() {
    const query = cannedQuery();
    const menu = $("canned-menu");
    if (query === null || text().disabled) { closeCanned(); return; }
    canned.shown = canned.items.filter((c) => c.short_code.startsWith(query));
    canned.active = Math.min(canned.active, Math.max(0, canned.shown.length - 1));
    if (!canned.shown.length) {
      menu.replaceChildren(el("li", "canned-none", t("canned.none", { q: "/" + query })));
    } else {
      menu.replaceChildren(...canned.shown.map((c, i) => {
        const li = el("li", "canned-item" + (i === canned.active ? " active" : ""));
        li.setAttribute("role", "option");
        li.setAttribute("aria-selected", String(i === canned.active));
        li.dataset.code = c.short_code;
        li.append(el("span", "canned-code", "/" + c.short_code), el("span", "canned-text", c.text));
        li.addEventListener("mousedown", (e) => { e.preventDefault(); insertCanned(c); });
        return li;
      }));
    }
    menu.hidden = false;
  }

  function closeCanned() {
    $("canned-menu").hidden = true;
    canned.shown = [];
    canned.active = 0;
  }

  function insertCanned(c) { // into the box, for the agent to read and edit: never sent by itself
    const box = text();
    box.value = c.text;
    box.dispatchEvent(new Event("input")); // the box grows to fit
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    closeCanned();
  }

  function cannedKey(e) { // true when the open menu took the key
    if ($("canned-menu").hidden || !canned.shown.length) {
      if (e.key === "Escape") closeCanned();
      return !$("canned-menu").hidden && (e.key === "Enter" || e.key === "Tab");
    }
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const n = canned.shown.length;
      canned.active = (canned.active + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
      renderCanned();
      return true;
    }
    if (e.key === "Enter" || e.key === "Tab") {
      e.preventDefault();
      insertCanned(canned.shown[canned.active]);
      return true;
    }
    if (e.key === "Escape") { e.preventDefault(); closeCanned(); return true; }
    return false;
  }

  // --- wiring ------------------------------------------------------------------------

  function wire() {
    $("search").addEventListener("input", onSearchInput);
    $("search").addEventListener("keydown", (e) => {
      if (e.key === "Escape") { $("search").value = ""; onSearchInput(); }
    });
    text().addEventListener("input", renderCanned);
    text().addEventListener("blur", () => setTimeout(closeCanned, 150));
  }

  function clear() {
    clearTimeout(search.timer);
    search.query = "";
    search.seq++;
    $("search").value = "";
    $("search-results").hidden = true;
    $("search-contacts").replaceChildren();
    $("search-messages").replaceChildren();
    canned.items = [];
    closeCanned();
  }

  return { wire, clear, searching, loadCanned, cannedKey };
};
