// cicbot agent console. Plain JavaScript, no build step, no dependencies.
//
// Rules of this file:
//  * every text from the server (customer messages, names, notes) is inserted with
//    textContent or as a text node, never as markup (the page's CSP also requires
//    Trusted Types, so an HTML sink would throw);
//  * the API token lives in sessionStorage only (this tab), and sign-out forgets it;
//  * live updates come from GET /api/v1/events, read with fetch() streaming because it
//    needs the Authorization header; a timer refreshes as well, because events are per
//    worker and a change made on another worker only shows up that way.
"use strict";

(() => {
  const TOKEN_KEY = "cicbot.agent.token";
  const POLL_MS = 10000;
  const WATCHDOG_MS = 45000; // the server sends a heartbeat every 15 s
  const LANG = (navigator.language || "en").toLowerCase().startsWith("de") ? "de" : "en";

  const TEXTS = {
    en: {
      "title": "Agent console",
      "login.title": "Agent console",
      "login.hint": "Sign in with your personal API token.",
      "login.token": "API token",
      "login.placeholder": "cic_…",
      "login.submit": "Sign in",
      "login.checking": "Signing in…",
      "login.foot": "The token stays in this browser tab only and is forgotten when you sign out or close the tab.",
      "login.empty": "Please paste your API token.",
      "login.invalid": "This token is not valid: it is unknown or has been revoked. Ask an administrator for a new one.",
      "login.expired": "Your session has ended: the token is no longer valid. Please sign in again.",
      "login.network": "The server cannot be reached. Check your connection and try again.",
      "app.title": "Agent console",
      "app.signout": "Sign out",
      "conn.live": "Live",
      "conn.connecting": "Connecting…",
      "conn.offline": "Reconnecting…",
      "role.agent": "Agent", "role.supervisor": "Supervisor", "role.admin": "Admin",
      "list.mine": "Mine",
      "list.queue": "Queue",
      "list.mine_empty": "Nothing assigned to you.",
      "list.queue_empty": "No one is waiting.",
      "list.waiting": "waiting {t}",
      "list.with": "with {name}",
      "conv.placeholder": "Select a conversation on the left.",
      "conv.not_found": "This conversation does not exist (any more).",
      "contact.unnamed": "Contact #{id}",
      "status.bot": "With the bot", "status.queued": "Waiting", "status.agent": "With an agent", "status.closed": "Closed",
      "prio.urgent": "Urgent · {p}", "prio.high": "High · {p}", "prio.normal": "Priority {p}",
      "segment": "Segment {s}",
      "assigned.you": "Assigned to you",
      "assigned.other": "Assigned to {name}",
      "action.claim": "Claim",
      "action.transfer": "Transfer",
      "action.handback": "Hand back to bot",
      "action.resolve": "Resolve",
      "composer.reply": "Reply",
      "composer.note": "Internal note",
      "composer.hint": "Enter to send · Shift+Enter for a new line",
      "composer.send": "Send",
      "composer.add_note": "Add note",
      "composer.reply_placeholder": "Reply to the customer on {channel}…",
      "composer.note_placeholder": "Internal note – only your colleagues see it…",
      "composer.locked_claim": "Claim this conversation to reply. Internal notes are always possible.",
      "composer.locked_other": "{name} is handling this conversation. You can add an internal note.",
      "composer.locked_closed": "This conversation is closed. You can still add an internal note.",
      "who.customer": "Customer", "who.bot": "Bot", "who.system": "System",
      "who.agent": "Agent #{id}",
      "tp.button": "pressed a button",
      "tp.note": "Internal note",
      "tp.thread": "Conversation #{id}",
      "tp.this_thread": "This conversation",
      "ev.claimed": "{who} took over the conversation",
      "ev.escalated": "Queued for an agent ({reason}, priority {priority})",
      "ev.case_opened": "Case {reference} opened · {category} · {severity}",
      "ev.case_status": "Case {reference} → {status}",
      "ev.resolved": "{who} resolved the conversation",
      "ev.handed_back": "{who} handed the conversation back to the bot",
      "ev.transferred": "{who} transferred the conversation to {to}",
      "ev.left_queue": "The customer left the queue",
      "ev.flow_started": "Flow started: {flow}",
      "ev.lifecycle_changed": "Lifecycle: {old} → {new}",
      "ev.consent": "Consent {purpose}: {granted}",
      "ev.survey_completed": "Survey completed: {survey}",
      "ev.delivery_failed": "Delivery failed: {error}",
      "ev.selfservice": "Self-service: {question}",
      "yes": "yes", "no": "no",
      "details.empty": "The customer and their cases appear here.",
      "details.identities": "Channels",
      "details.cases": "Cases",
      "details.no_cases": "No cases for this customer.",
      "fact.email": "E-mail", "fact.phone": "Phone", "fact.language": "Language",
      "fact.phase": "Lifecycle", "fact.since": "Customer since", "fact.last": "Last contact",
      "fact.id": "Contact ID",
      "unreachable": "unreachable",
      "case.status.new": "New", "case.status.in_progress": "In progress",
      "case.status.waiting_customer": "Waiting for customer", "case.status.resolved": "Resolved",
      "case.status.closed": "Closed",
      "case.sla_due": "Due {t}",
      "case.overdue": "Overdue since {t}",
      "case.opened": "Opened {t}",
      "case.updated": "Case {reference}: {status}. The customer has been told.",
      "case.severity": "Severity: {s}",
      "case.this": "this conversation",
      "transfer.title": "Transfer conversation",
      "transfer.to": "To",
      "transfer.cancel": "Cancel",
      "transfer.ok": "Transfer",
      "transfer.none": "There is no other active agent to transfer to.",
      "done.claimed": "You are now handling this conversation.",
      "done.resolved": "Conversation resolved.",
      "done.handed_back": "The bot has the conversation again.",
      "done.transferred": "Transferred to {name}.",
      "error.generic": "Something went wrong: {message}",
      "error.network": "The server cannot be reached.",
      "phase.prospect": "Prospect", "phase.active": "Active customer", "phase.at_risk": "At risk",
      "phase.lost": "Lost", "phase.terminated": "Terminated",
      "severity.low": "low", "severity.medium": "medium", "severity.high": "high", "severity.critical": "critical",
      "category.delivery": "Delivery", "category.product": "Faulty product", "category.billing": "Billing",
      "category.service": "Service", "category.other": "Other",
      "reason.customer_request": "customer asked for a person", "reason.complaint": "complaint",
      "reason.selfservice_misses": "self-service could not answer", "reason.failed_answers": "repeated invalid answers",
      "reason.low_csat": "low satisfaction rating", "reason.winback_offer": "win-back offer accepted",
      "view.desk": "Conversations", "view.supervisor": "Supervisor view", "view.label": "Views",
      "sv.title": "Supervisor view",
      "sv.period": "Period",
      "sv.last_week": "Last 7 days", "sv.last_month": "Last 30 days", "sv.last_quarter": "Last 90 days",
      "sv.range": "{since} – {until}",
      "sv.loading": "Loading the figures…",
      "sv.forbidden": "The supervisor view is for supervisors and admins only.",
      "sv.no_charts": "The charts could not be loaded; the figures are shown as tables.",
      "sv.no_data": "No data yet for this period.",
      "sv.no_data_chart": "No data yet",
      "sv.figures": "Figures",
      "sv.kpi.deflection": "Self-service deflection", "sv.kpi.conversations": "Conversations",
      "sv.kpi.csat": "CSAT average", "sv.kpi.sla": "SLA breach rate", "sv.kpi.recovery": "Win-back recovery rate",
      "sv.deflection_sub": "{n} of {of} conversations answered without a person",
      "sv.of5": "of 5",
      "sv.breached_of": "{n} of {of} cases",
      "sv.volume": "Customer messages per day and channel",
      "sv.channels": "Channel mix (customer messages)",
      "sv.first_response": "First response time: bot and agents",
      "sv.resolution": "Resolution time",
      "sv.by_category": "Complaints by category",
      "sv.by_severity": "Complaints by severity",
      "sv.sla": "SLA of complaint cases",
      "sv.csat": "Customer satisfaction (CSAT)",
      "sv.csat_average": "Average {avg} of 5 from {n} answers",
      "sv.winback": "Win-back: reasons for leaving",
      "sv.recovery": "Recovery rate {rate}: {n} of {of} accepted an offer",
      "sv.median": "Median", "sv.p90": "90th percentile", "sv.average": "Average",
      "sv.bot": "Bot", "sv.agents": "Agents",
      "sv.conv_bot": "Conversations (bot only)", "sv.conv_agent": "Conversations (with an agent)", "sv.cases": "Complaint cases",
      "sv.sla_kept": "Within SLA", "sv.sla_late": "Resolved late", "sv.sla_open": "Open and overdue",
      "sv.sla_breached": "SLA breached", "sv.sla_rate": "Breach rate",
      "sv.respondents": "Respondents", "sv.offers_accepted": "Offers accepted", "sv.recovery_rate": "Recovery rate",
      "sv.reactivated": "Contacts active again",
      "sv.col.day": "Day", "sv.col.total": "Total", "sv.col.channel": "Channel", "sv.col.in": "From customers",
      "sv.col.out": "To customers", "sv.col.internal": "Internal", "sv.col.who": "",
      "sv.col.count": "Count", "sv.col.mean": "Mean", "sv.col.category": "Category", "sv.col.severity": "Severity",
      "sv.col.figure": "", "sv.col.value": "Value", "sv.col.rating": "Rating", "sv.col.answers": "Answers",
      "winback.price": "Price", "winback.quality": "Quality", "winback.service": "Service",
      "winback.competitor": "Better offer elsewhere", "winback.no_longer_needed": "No longer needed", "winback.other": "Something else",
      "time.now": "just now", "time.min": "{n} min", "time.h": "{h} h {m} min", "time.d": "{n} d",
    },
    de: {
      "title": "Agenten-Konsole",
      "login.title": "Agenten-Konsole",
      "login.hint": "Melden Sie sich mit Ihrem persönlichen API-Token an.",
      "login.token": "API-Token",
      "login.placeholder": "cic_…",
      "login.submit": "Anmelden",
      "login.checking": "Anmeldung…",
      "login.foot": "Das Token bleibt nur in diesem Browser-Tab und wird beim Abmelden oder Schließen des Tabs vergessen.",
      "login.empty": "Bitte fügen Sie Ihr API-Token ein.",
      "login.invalid": "Dieses Token ist ungültig: unbekannt oder widerrufen. Bitten Sie eine Administratorin oder einen Administrator um ein neues.",
      "login.expired": "Ihre Sitzung ist beendet: Das Token ist nicht mehr gültig. Bitte melden Sie sich erneut an.",
      "login.network": "Der Server ist nicht erreichbar. Prüfen Sie die Verbindung und versuchen Sie es erneut.",
      "app.title": "Agenten-Konsole",
      "app.signout": "Abmelden",
      "conn.live": "Live",
      "conn.connecting": "Verbinde…",
      "conn.offline": "Verbindung wird wiederhergestellt…",
      "role.agent": "Agent", "role.supervisor": "Teamleitung", "role.admin": "Admin",
      "list.mine": "Meine",
      "list.queue": "Warteschlange",
      "list.mine_empty": "Ihnen ist nichts zugewiesen.",
      "list.queue_empty": "Niemand wartet.",
      "list.waiting": "wartet {t}",
      "list.with": "bei {name}",
      "conv.placeholder": "Wählen Sie links ein Gespräch aus.",
      "conv.not_found": "Dieses Gespräch gibt es nicht (mehr).",
      "contact.unnamed": "Kontakt #{id}",
      "status.bot": "Beim Bot", "status.queued": "Wartet", "status.agent": "Bei einem Agenten", "status.closed": "Abgeschlossen",
      "prio.urgent": "Dringend · {p}", "prio.high": "Hoch · {p}", "prio.normal": "Priorität {p}",
      "segment": "Segment {s}",
      "assigned.you": "Ihnen zugewiesen",
      "assigned.other": "Zugewiesen: {name}",
      "action.claim": "Übernehmen",
      "action.transfer": "Weitergeben",
      "action.handback": "An den Bot zurück",
      "action.resolve": "Erledigt",
      "composer.reply": "Antwort",
      "composer.note": "Interne Notiz",
      "composer.hint": "Enter sendet · Umschalt+Enter für neue Zeile",
      "composer.send": "Senden",
      "composer.add_note": "Notiz speichern",
      "composer.reply_placeholder": "Antwort an den Kunden über {channel}…",
      "composer.note_placeholder": "Interne Notiz – nur Ihre Kolleginnen und Kollegen sehen sie…",
      "composer.locked_claim": "Übernehmen Sie das Gespräch, um zu antworten. Interne Notizen gehen immer.",
      "composer.locked_other": "{name} bearbeitet dieses Gespräch. Sie können eine interne Notiz schreiben.",
      "composer.locked_closed": "Dieses Gespräch ist abgeschlossen. Interne Notizen sind weiter möglich.",
      "who.customer": "Kunde", "who.bot": "Bot", "who.system": "System",
      "who.agent": "Agent #{id}",
      "tp.button": "hat eine Schaltfläche gewählt",
      "tp.note": "Interne Notiz",
      "tp.thread": "Gespräch #{id}",
      "tp.this_thread": "Dieses Gespräch",
      "ev.claimed": "{who} hat das Gespräch übernommen",
      "ev.escalated": "An einen Agenten übergeben ({reason}, Priorität {priority})",
      "ev.case_opened": "Fall {reference} eröffnet · {category} · {severity}",
      "ev.case_status": "Fall {reference} → {status}",
      "ev.resolved": "{who} hat das Gespräch abgeschlossen",
      "ev.handed_back": "{who} hat das Gespräch an den Bot zurückgegeben",
      "ev.transferred": "{who} hat das Gespräch an {to} weitergegeben",
      "ev.left_queue": "Der Kunde wartet nicht mehr",
      "ev.flow_started": "Dialog gestartet: {flow}",
      "ev.lifecycle_changed": "Lebenszyklus: {old} → {new}",
      "ev.consent": "Einwilligung {purpose}: {granted}",
      "ev.survey_completed": "Umfrage beantwortet: {survey}",
      "ev.delivery_failed": "Zustellung fehlgeschlagen: {error}",
      "ev.selfservice": "Self-Service: {question}",
      "yes": "ja", "no": "nein",
      "details.empty": "Hier erscheinen der Kunde und seine Fälle.",
      "details.identities": "Kanäle",
      "details.cases": "Fälle",
      "details.no_cases": "Keine Fälle für diesen Kunden.",
      "fact.email": "E-Mail", "fact.phone": "Telefon", "fact.language": "Sprache",
      "fact.phase": "Lebenszyklus", "fact.since": "Kunde seit", "fact.last": "Letzter Kontakt",
      "fact.id": "Kontakt-ID",
      "unreachable": "nicht erreichbar",
      "case.status.new": "Neu", "case.status.in_progress": "In Bearbeitung",
      "case.status.waiting_customer": "Wartet auf Kunden", "case.status.resolved": "Gelöst",
      "case.status.closed": "Geschlossen",
      "case.sla_due": "Fällig {t}",
      "case.overdue": "Überfällig seit {t}",
      "case.opened": "Eröffnet {t}",
      "case.updated": "Fall {reference}: {status}. Der Kunde wurde informiert.",
      "case.severity": "Schwere: {s}",
      "case.this": "dieses Gespräch",
      "transfer.title": "Gespräch weitergeben",
      "transfer.to": "An",
      "transfer.cancel": "Abbrechen",
      "transfer.ok": "Weitergeben",
      "transfer.none": "Es gibt keinen anderen aktiven Agenten.",
      "done.claimed": "Sie bearbeiten jetzt dieses Gespräch.",
      "done.resolved": "Gespräch abgeschlossen.",
      "done.handed_back": "Der Bot hat das Gespräch wieder.",
      "done.transferred": "An {name} weitergegeben.",
      "error.generic": "Das hat nicht geklappt: {message}",
      "error.network": "Der Server ist nicht erreichbar.",
      "phase.prospect": "Interessent", "phase.active": "Aktiver Kunde", "phase.at_risk": "Abwanderungsgefahr",
      "phase.lost": "Verloren", "phase.terminated": "Beendet",
      "severity.low": "gering", "severity.medium": "mittel", "severity.high": "hoch", "severity.critical": "kritisch",
      "category.delivery": "Lieferung", "category.product": "Defektes Produkt", "category.billing": "Rechnung",
      "category.service": "Service", "category.other": "Sonstiges",
      "reason.customer_request": "Kunde möchte einen Menschen", "reason.complaint": "Beschwerde",
      "reason.selfservice_misses": "Self-Service wusste keine Antwort", "reason.failed_answers": "wiederholt ungültige Antworten",
      "reason.low_csat": "schlechte Zufriedenheitsbewertung", "reason.winback_offer": "Rückgewinnungsangebot angenommen",
      "view.desk": "Gespräche", "view.supervisor": "Teamleitung", "view.label": "Ansichten",
      "sv.title": "Auswertung für die Teamleitung",
      "sv.period": "Zeitraum",
      "sv.last_week": "Letzte 7 Tage", "sv.last_month": "Letzte 30 Tage", "sv.last_quarter": "Letzte 90 Tage",
      "sv.range": "{since} – {until}",
      "sv.loading": "Zahlen werden geladen…",
      "sv.forbidden": "Diese Ansicht ist nur für Teamleitung und Admins.",
      "sv.no_charts": "Die Diagramme konnten nicht geladen werden; die Zahlen stehen in den Tabellen.",
      "sv.no_data": "Für diesen Zeitraum gibt es noch keine Daten.",
      "sv.no_data_chart": "Noch keine Daten",
      "sv.figures": "Zahlen",
      "sv.kpi.deflection": "Self-Service-Quote", "sv.kpi.conversations": "Gespräche",
      "sv.kpi.csat": "Zufriedenheit (Ø)", "sv.kpi.sla": "SLA-Verletzungen", "sv.kpi.recovery": "Rückgewinnungsquote",
      "sv.deflection_sub": "{n} von {of} Gesprächen ohne Mitarbeiter beantwortet",
      "sv.of5": "von 5",
      "sv.breached_of": "{n} von {of} Fällen",
      "sv.volume": "Kundennachrichten pro Tag und Kanal",
      "sv.channels": "Kanalmix (Kundennachrichten)",
      "sv.first_response": "Erste Antwort: Bot und Agenten",
      "sv.resolution": "Bearbeitungsdauer bis zur Lösung",
      "sv.by_category": "Beschwerden nach Kategorie",
      "sv.by_severity": "Beschwerden nach Schwere",
      "sv.sla": "SLA der Beschwerdefälle",
      "sv.csat": "Kundenzufriedenheit (CSAT)",
      "sv.csat_average": "Durchschnitt {avg} von 5 aus {n} Antworten",
      "sv.winback": "Rückgewinnung: Gründe für die Kündigung",
      "sv.recovery": "Rückgewinnungsquote {rate}: {n} von {of} haben ein Angebot angenommen",
      "sv.median": "Median", "sv.p90": "90. Perzentil", "sv.average": "Durchschnitt",
      "sv.bot": "Bot", "sv.agents": "Agenten",
      "sv.conv_bot": "Gespräche (nur Bot)", "sv.conv_agent": "Gespräche (mit Agent)", "sv.cases": "Beschwerdefälle",
      "sv.sla_kept": "SLA eingehalten", "sv.sla_late": "Zu spät gelöst", "sv.sla_open": "Offen und überfällig",
      "sv.sla_breached": "SLA verletzt", "sv.sla_rate": "Verletzungsquote",
      "sv.respondents": "Befragte", "sv.offers_accepted": "Angebote angenommen", "sv.recovery_rate": "Rückgewinnungsquote",
      "sv.reactivated": "Wieder aktive Kontakte",
      "sv.col.day": "Tag", "sv.col.total": "Summe", "sv.col.channel": "Kanal", "sv.col.in": "Von Kunden",
      "sv.col.out": "An Kunden", "sv.col.internal": "Intern", "sv.col.who": "",
      "sv.col.count": "Anzahl", "sv.col.mean": "Mittelwert", "sv.col.category": "Kategorie", "sv.col.severity": "Schwere",
      "sv.col.figure": "", "sv.col.value": "Wert", "sv.col.rating": "Bewertung", "sv.col.answers": "Antworten",
      "winback.price": "Preis", "winback.quality": "Qualität", "winback.service": "Service",
      "winback.competitor": "Besseres Angebot woanders", "winback.no_longer_needed": "Nicht mehr benötigt", "winback.other": "Sonstiges",
      "time.now": "gerade eben", "time.min": "{n} Min.", "time.h": "{h} Std. {m} Min.", "time.d": "{n} T.",
    },
  };
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
  function label(group, value) { // a known code in the agent's language, else the code readable
    const key = group + "." + value;
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
      if (res.status === 401 && state.token && state.token === token && state.me) signOut(t("login.expired"));
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
    $("token").focus();
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
    state.me = me;
    $("token").value = "";
    $("login").hidden = true;
    $("app").hidden = false;
    $("me-name").textContent = me.name;
    $("me-role").textContent = t("role." + me.role);
    avatar($("me-avatar"), me.name, "agent" + me.id);
    $("views").hidden = !isSupervisor();
    start();
  }

  function signOut(message) {
    showView("desk");
    clearSupervisor();
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
    $("timeline").replaceChildren();
    $("text").value = "";
    showConversation(false);
    if (location.hash) history.replaceState(null, "", location.pathname);
    showLogin(message);
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
        if (events.ctrl === ctrl) signOut(t("login.expired"));
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
      const [queue, mine] = await Promise.all([api("GET", "/queue?limit=100"), api("GET", "/conversations/mine")]);
      if (seq !== state.seq.lists || !state.token) return;
      state.queue = queue.items;
      state.queueTotal = queue.total;
      state.mine = mine.items;
      renderLists();
    } catch (e) {
      if (e.status !== 401 && e.status !== 0) failed(e);
    }
  }

  function renderLists() {
    renderList($("list-mine"), $("empty-mine"), state.mine, "mine");
    renderList($("list-queue"), $("empty-queue"), state.queue, "queue");
    $("count-mine").textContent = String(state.mine.length);
    $("count-queue").textContent = String(state.queueTotal);
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
    const since = kind === "queue" ? c.queued_at : c.updated_at;
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
    bottom.append(el("span", "conv-id", "#" + c.id));
    body.append(top, bottom);
    item.append(body);
    item.addEventListener("click", () => select(c.id));
    li.append(item);
    return li;
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

  function renderComposer(d, canReply) {
    const composer = $("composer");
    const note = state.mode === "note";
    composer.classList.toggle("is-note", note);
    for (const b of composer.querySelectorAll(".mode")) {
      const active = b.dataset.mode === state.mode;
      b.classList.toggle("active", active);
      b.setAttribute("aria-selected", String(active));
    }
    const text = $("text");
    const locked = !note && !canReply;
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

  // --- the supervisor view: charts of GET /api/v1/analytics ---------------------------
  //
  // Supervisors and admins only (the API answers 403 to others anyway). Chart.js is
  // vendored (static/vendor); every chart has a caption and its figures as a table in a
  // <details>, for screen readers and for the browser test.

  const sv = { days: 30, seq: 0, charts: [], report: null, styled: false };
  const numFmt = new Intl.NumberFormat(LANG);
  const oneFmt = new Intl.NumberFormat(LANG, { maximumFractionDigits: 1 });
  const pctFmt = new Intl.NumberFormat(LANG, { style: "percent", maximumFractionDigits: 1 });
  const dayFmt = new Intl.DateTimeFormat(LANG, { day: "numeric", month: "short", timeZone: "UTC" });
  const CHANNEL_COLOURS = { webchat: "#1f6feb", telegram: "#229ed9", slack: "#7c3aed", email: "#e36209", console: "#57606a" };
  const SERIES = ["#1f6feb", "#8250df", "#0a7d74", "#bc4c00", "#bf3989", "#4d7c0f", "#cf222e", "#57606a"];
  const SEVERITIES = ["low", "medium", "high", "critical"];
  const SEVERITY_COLOURS = { low: "#4d7c0f", medium: "#d4a72c", high: "#bc4c00", critical: "#b42318" };
  const CSAT_COLOURS = ["#b42318", "#e36209", "#d4a72c", "#57a64a", "#1a7f37"];

  function seconds(x) { // a duration for people: 42 s, 3.5 min, 2 h, 1.5 d
    if (x === null || x === undefined) return "–";
    if (x < 60) return oneFmt.format(x) + " s";
    if (x < 3600) return oneFmt.format(x / 60) + " min";
    if (x < 86400) return oneFmt.format(x / 3600) + " h";
    return oneFmt.format(x / 86400) + " d";
  }
  const percent = (x) => (x === null || x === undefined ? "–" : pctFmt.format(x));
  const channelColour = (ch, i) => CHANNEL_COLOURS[ch] ?? SERIES[i % SERIES.length];
  const cell = (text, value) => ({ text, value: value ?? null });
  const n = (x) => cell(x === null || x === undefined ? "–" : numFmt.format(x), x);

  function statsRows(entries) { // [[label, stats]] → table rows and a p50/p90 bar chart
    const rows = entries.map(([name, st]) => [cell(name), n(st.count), cell(seconds(st.mean), st.mean), cell(seconds(st.p50), st.p50), cell(seconds(st.p90), st.p90)]);
    const top = Math.max(0, ...entries.map(([, st]) => st.p90 ?? 0));
    const [unit, div] = top >= 2 * 86400 ? ["d", 86400] : top >= 2 * 3600 ? ["h", 3600] : top >= 120 ? ["min", 60] : ["s", 1];
    const scaled = (x) => (x === null ? null : x / div); // one unit per chart: round ticks
    const chart = entries.some(([, st]) => st.count > 0) ? {
      type: "bar",
      data: {
        labels: entries.map(([name]) => name),
        datasets: [
          { label: t("sv.median"), data: entries.map(([, st]) => scaled(st.p50)), backgroundColor: "#1f6feb" },
          { label: t("sv.p90"), data: entries.map(([, st]) => scaled(st.p90)), backgroundColor: "#8fb8f6" },
        ],
      },
      options: { scales: { y: { beginAtZero: true, title: { display: true, text: unit } } },
                 plugins: { tooltip: { callbacks: { label: (c) => c.dataset.label + ": " + seconds(c.raw * div) } } } },
    } : null;
    return { chart, head: [t("sv.col.who"), t("sv.col.count"), t("sv.col.mean"), t("sv.median"), t("sv.p90")], rows };
  }

  function countsChart(labels, values, colours, horizontal) {
    return {
      type: "bar",
      data: { labels, datasets: [{ label: t("sv.col.count"), data: values, backgroundColor: colours, maxBarThickness: 56 }] },
      options: { indexAxis: horizontal ? "y" : "x", plugins: { legend: { display: false } },
                 scales: { [horizontal ? "x" : "y"]: { beginAtZero: true, ticks: { precision: 0 } } } },
    };
  }

  // One entry per chart: its caption and, from the report, a chart and/or a table (or
  // neither, which shows "no data yet" in its card).
  const CHARTS = [
    { id: "volume", wide: true, title: "sv.volume", build(r) {
      const channels = [...new Set(r.volume.map((v) => v.channel))].sort();
      const byDay = new Map();
      for (const v of r.volume) {
        if (!byDay.has(v.day)) byDay.set(v.day, {});
        byDay.get(v.day)[v.channel] = v.messages;
      }
      const days = []; // every day of the period, so gaps show as gaps
      const end = r.period.until.slice(0, 10);
      for (let d = new Date(r.period.since.slice(0, 10) + "T00:00:00Z"); ; d.setUTCDate(d.getUTCDate() + 1)) {
        const iso = d.toISOString().slice(0, 10);
        days.push(iso);
        if (iso >= end || days.length > 3700) break;
      }
      const chart = r.volume.length ? {
        type: "bar",
        data: {
          labels: days.map((d) => dayFmt.format(new Date(d + "T00:00:00Z"))),
          datasets: channels.map((ch, i) => ({ label: channelName(ch), data: days.map((d) => byDay.get(d)?.[ch] ?? 0), backgroundColor: channelColour(ch, i), stack: "messages" })),
        },
        options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } },
      } : null;
      const rows = [...byDay.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([day, counts]) => [
        cell(dayFmt.format(new Date(day + "T00:00:00Z")), day),
        ...channels.map((ch) => n(counts[ch] ?? 0)),
        n(Object.values(counts).reduce((a, b) => a + b, 0)),
      ]);
      return { chart, head: [t("sv.col.day"), ...channels.map(channelName), t("sv.col.total")], rows, channels };
    } },
    { id: "channels", title: "sv.channels", build(r) {
      const entries = Object.entries(r.channels);
      const incoming = entries.map(([, c]) => c.in);
      const chart = incoming.some((x) => x > 0) ? {
        type: "doughnut",
        data: { labels: entries.map(([ch]) => channelName(ch)), datasets: [{ data: incoming, backgroundColor: entries.map(([ch], i) => channelColour(ch, i)) }] },
        options: { plugins: { legend: { position: "right" } } },
      } : null;
      const rows = entries.map(([ch, c]) => [cell(channelName(ch), ch), n(c.in), n(c.out), n(c.internal)]);
      return { chart, head: [t("sv.col.channel"), t("sv.col.in"), t("sv.col.out"), t("sv.col.internal")], rows: entries.length ? rows : null };
    } },
    { id: "first_response", title: "sv.first_response", build(r) {
      const f = r.first_response_seconds;
      return statsRows([[t("sv.bot"), f.bot], [t("sv.agents"), f.agent]]);
    } },
    { id: "resolution", title: "sv.resolution", build(r) {
      const x = r.resolution_seconds;
      return statsRows([[t("sv.conv_bot"), x.conversations_bot], [t("sv.conv_agent"), x.conversations_agent], [t("sv.cases"), x.cases]]);
    } },
    { id: "complaints_category", title: "sv.by_category", build(r) {
      const entries = Object.entries(r.complaints.by_category);
      if (!entries.length) return {};
      return {
        chart: countsChart(entries.map(([c]) => label("category", c)), entries.map(([, k]) => k), entries.map((_, i) => SERIES[i % SERIES.length]), true),
        head: [t("sv.col.category"), t("sv.col.count")],
        rows: entries.map(([c, k]) => [cell(label("category", c), c), n(k)]),
      };
    } },
    { id: "complaints_severity", title: "sv.by_severity", build(r) {
      const rank = (s) => (SEVERITIES.includes(s) ? SEVERITIES.indexOf(s) : SEVERITIES.length);
      const entries = Object.entries(r.complaints.by_severity).sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b));
      if (!entries.length) return {};
      return {
        chart: countsChart(entries.map(([s]) => label("severity", s)), entries.map(([, k]) => k), entries.map(([s], i) => SEVERITY_COLOURS[s] ?? SERIES[i % SERIES.length])),
        head: [t("sv.col.severity"), t("sv.col.count")],
        rows: entries.map(([s, k]) => [cell(label("severity", s), s), n(k)]),
      };
    } },
    { id: "sla", title: "sv.sla", build(r) {
      const s = r.sla;
      if (!s.cases) return {};
      const late = s.breached - s.open_breached;
      return {
        chart: {
          type: "doughnut",
          data: { labels: [t("sv.sla_kept"), t("sv.sla_late"), t("sv.sla_open")],
                  datasets: [{ data: [s.cases - s.breached, late, s.open_breached], backgroundColor: ["#1a7f37", "#d4a72c", "#b42318"] }] },
          options: { plugins: { legend: { position: "right" } } },
        },
        head: [t("sv.col.figure"), t("sv.col.value")],
        rows: [
          [cell(t("sv.cases")), n(s.cases)],
          [cell(t("sv.sla_breached")), n(s.breached)],
          [cell(t("sv.sla_open")), n(s.open_breached)],
          [cell(t("sv.sla_rate")), cell(percent(s.breach_rate), s.breach_rate)],
        ],
      };
    } },
    { id: "csat", title: "sv.csat", build(r) {
      const c = r.csat;
      if (!c.responses) return {};
      const stars = Object.keys(c.distribution);
      return {
        note: t("sv.csat_average", { avg: oneFmt.format(c.average), n: numFmt.format(c.responses) }),
        chart: countsChart(stars, stars.map((k) => c.distribution[k]), stars.map((_, i) => CSAT_COLOURS[i % CSAT_COLOURS.length])),
        head: [t("sv.col.rating"), t("sv.col.answers")],
        rows: [...stars.map((k) => [cell(k, Number(k)), n(c.distribution[k])]), [cell(t("sv.average")), cell(oneFmt.format(c.average), c.average)]],
      };
    } },
    { id: "winback", title: "sv.winback", build(r) {
      const w = r.winback;
      if (!w.respondents && !w.reactivated_contacts) return {};
      const reasons = Object.entries(w.reasons);
      return {
        note: t("sv.recovery", { rate: percent(w.recovery_rate), n: numFmt.format(w.offers_accepted), of: numFmt.format(w.respondents) }),
        chart: reasons.length ? countsChart(reasons.map(([k]) => label("winback", k)), reasons.map(([, v]) => v), reasons.map((_, i) => SERIES[i % SERIES.length]), true) : null,
        head: [t("sv.col.figure"), t("sv.col.value")],
        rows: [
          ...reasons.map(([k, v]) => [cell(label("winback", k), k), n(v)]),
          [cell(t("sv.respondents")), n(w.respondents)],
          [cell(t("sv.offers_accepted")), n(w.offers_accepted)],
          [cell(t("sv.recovery_rate")), cell(percent(w.recovery_rate), w.recovery_rate)],
          [cell(t("sv.reactivated")), n(w.reactivated_contacts)],
        ],
      };
    } },
  ];

  function isEmptyReport(r) {
    const res = r.resolution_seconds;
    return !r.volume.length && !Object.keys(r.channels).length && !r.self_service.conversations
      && !r.complaints.total && !r.csat.responses && !r.winback.respondents && !r.winback.reactivated_contacts
      && !res.conversations_bot.count && !res.conversations_agent.count && !res.cases.count;
  }

  function kpi(id, value, text, sub, headline) {
    const box = el("div", "kpi" + (headline ? " headline" : ""));
    box.dataset.kpi = id;
    const v = el("div", "kpi-value", text);
    v.dataset.value = value === null || value === undefined ? "" : String(value);
    box.append(v, el("div", "kpi-label", t("sv.kpi." + id)));
    if (sub) box.append(el("div", "kpi-sub", sub));
    return box;
  }

  function dataTable(caption, head, rows) {
    const table = el("table", "sv-table");
    table.append(el("caption", null, caption));
    const tr = el("tr");
    for (const h of head) {
      const th = el("th", null, h);
      th.scope = "col";
      tr.append(th);
    }
    table.append(el("thead"));
    table.tHead.append(tr);
    const body = el("tbody");
    for (const row of rows) {
      const line = el("tr");
      row.forEach((c, i) => {
        const td = el(i === 0 ? "th" : "td", null, c.text);
        if (i === 0) td.scope = "row";
        if (c.value !== null) td.dataset.value = String(c.value);
        line.append(td);
      });
      body.append(line);
    }
    table.append(body);
    return table;
  }

  function destroyCharts() {
    for (const chart of sv.charts) chart.destroy();
    sv.charts = [];
  }
  function clearSupervisor() { // on leaving the view: nothing stale (or for others) stays
    destroyCharts();
    sv.seq++; // an answer still on its way is dropped
    sv.report = null;
    for (const id of ["sv-kpis", "sv-charts", "sv-period", "sv-status"]) $(id).replaceChildren();
    $("sv-body").hidden = true;
    $("sv-empty").hidden = true;
    $("supervisor").removeAttribute("aria-busy");
  }

  function renderSupervisor(r) {
    destroyCharts();
    const since = new Date(r.period.since);
    const until = new Date(r.period.until);
    $("sv-period").textContent = t("sv.range", { since: fullFmt.format(since), until: fullFmt.format(until) });
    const empty = isEmptyReport(r);
    $("sv-empty").hidden = !empty;
    $("sv-body").hidden = empty;
    if (empty) {
      $("sv-kpis").replaceChildren();
      $("sv-charts").replaceChildren();
      return;
    }
    const ss = r.self_service;
    $("sv-kpis").replaceChildren(
      kpi("deflection", ss.deflection_rate, percent(ss.deflection_rate), t("sv.deflection_sub", { n: numFmt.format(ss.without_human), of: numFmt.format(ss.conversations) }), true),
      kpi("conversations", ss.conversations, numFmt.format(ss.conversations)),
      kpi("csat", r.csat.average, r.csat.average === null ? "–" : oneFmt.format(r.csat.average), t("sv.of5")),
      kpi("sla", r.sla.breach_rate, percent(r.sla.breach_rate), t("sv.breached_of", { n: numFmt.format(r.sla.breached), of: numFmt.format(r.sla.cases) })),
      kpi("recovery", r.winback.recovery_rate, percent(r.winback.recovery_rate)),
    );
    const pending = [];
    const cards = CHARTS.map((spec) => {
      const built = spec.build(r);
      const card = el("figure", "chart-card" + (spec.wide ? " wide" : ""));
      card.dataset.chart = spec.id;
      const caption = el("figcaption", null, t(spec.title));
      caption.id = "sv-cap-" + spec.id;
      card.append(caption);
      if (built.note) card.append(el("p", "chart-note", built.note));
      if (!built.chart && !built.rows) {
        card.classList.add("is-empty");
        card.append(el("p", "empty", t("sv.no_data_chart")));
        return card;
      }
      if (built.chart) {
        const box = el("div", "chart-box");
        const canvas = el("canvas");
        canvas.setAttribute("role", "img");
        canvas.setAttribute("aria-labelledby", caption.id);
        box.append(canvas);
        card.append(box);
        pending.push([canvas, built.chart]);
      } else {
        card.append(el("p", "empty", t("sv.no_data_chart")));
      }
      if (built.rows) {
        const details = el("details", "figures");
        details.append(el("summary", null, t("sv.figures")), dataTable(t(spec.title), built.head, built.rows));
        card.append(details);
      }
      return card;
    });
    $("sv-charts").replaceChildren(...cards);
    if (typeof Chart === "undefined") { // the vendored script failed to load: tables only
      $("sv-status").textContent = t("sv.no_charts");
      return;
    }
    if (!sv.styled) { // once: the console's font and colours, and no motion if so asked
      Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      Chart.defaults.color = "#5f6b7a";
      if (matchMedia("(prefers-reduced-motion: reduce)").matches) Chart.defaults.animation = false;
      sv.styled = true;
    }
    for (const [canvas, config] of pending) {
      config.options = { responsive: true, maintainAspectRatio: false, ...config.options };
      sv.charts.push(new Chart(canvas, config));
    }
  }

  async function loadSupervisor() {
    if (!isSupervisor()) return;
    const seq = ++sv.seq;
    for (const b of document.querySelectorAll("#sv-days button")) b.setAttribute("aria-pressed", String(Number(b.dataset.days) === sv.days));
    $("supervisor").setAttribute("aria-busy", "true");
    $("sv-status").textContent = t("sv.loading");
    try {
      const r = await api("GET", "/analytics?days=" + sv.days);
      if (seq !== sv.seq || state.view !== "supervisor") return;
      sv.report = r;
      $("sv-status").textContent = "";
      renderSupervisor(r);
    } catch (e) {
      if (seq !== sv.seq) return;
      $("sv-status").textContent = e instanceof ApiError && e.status === 403 ? t("sv.forbidden") : t("error.generic", { message: e.message });
    } finally {
      if (seq === sv.seq) $("supervisor").removeAttribute("aria-busy");
    }
  }

  function showView(view) {
    if (view === "supervisor" && !isSupervisor()) view = "desk";
    const changed = state.view !== view;
    state.view = view;
    $("app").classList.toggle("view-supervisor", view === "supervisor");
    $("supervisor").hidden = view !== "supervisor";
    for (const b of document.querySelectorAll(".view-tab")) b.setAttribute("aria-pressed", String(b.dataset.view === view));
    if (view === "supervisor") {
      history.replaceState(null, "", "#/supervisor");
      if (changed) loadSupervisor();
    } else {
      if (changed) clearSupervisor();
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
      if (!token) { showLogin(t("login.empty")); return; }
      $("login-submit").disabled = true;
      $("login-submit").textContent = t("login.checking");
      signIn(token, false);
    });
    $("signout").addEventListener("click", () => signOut(null));
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    $("text").addEventListener("keydown", (e) => {
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
    for (const b of document.querySelectorAll("#sv-days button")) {
      b.addEventListener("click", () => { sv.days = Number(b.dataset.days); loadSupervisor(); });
    }

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved, true);
    else showLogin(null);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
