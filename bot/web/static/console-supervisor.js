// cicbot agent console: the supervisor view, charts of GET /api/v1/analytics. Plain
// JavaScript, no build step; Chart.js is vendored (static/vendor, loaded before this file).
//
// Published as one factory, window.cicbotSupervisor(deps), which console.js calls once; it
// returns {load, clear, wire}: load() fetches and renders the report of the chosen period,
// clear() empties the view (on leaving it or signing out), wire() hooks up the period
// picker. Everything it needs from the desk comes in `deps`, explicitly (the only other
// global of the page's scripts it uses is Chart, and it copes with its absence):
//   $, el, t, label, channelName  the DOM and text helpers of console.js
//   lang, fullFmt                 the agent's language and console.js's date-time format
//   api, ApiError                 the authenticated fetch of /api/v1 and its error class
//   isSupervisor()                whether the signed-in agent may see this view
//   currentView()                 "desk" or "supervisor": a late answer for a view left is dropped
//
// Rules of this file (as in console.js):
//  * every text (captions, labels, figures) goes in with textContent via el(), never as
//    markup; the page's CSP requires Trusted Types, so an HTML sink would throw;
//  * no inline styles or scripts: the CSP allows only this origin's script and style files.
"use strict";

window.cicbotSupervisor = function cicbotSupervisor(deps) {
  const NEEDS = ["$", "el", "t", "label", "channelName", "lang", "fullFmt", "api", "ApiError", "isSupervisor", "currentView"];
  const missing = NEEDS.filter((name) => deps[name] === undefined);
  if (missing.length) throw new TypeError("cicbotSupervisor: missing " + missing.join(", "));
  const { $, el, t, label, channelName, lang: LANG, fullFmt, api, ApiError, isSupervisor, currentView } = deps;

  // Supervisors and admins only (the API answers 403 to others anyway). Every chart has a
  // caption and its figures as a table in a <details>, for screen readers and for the
  // browser test (tests/browser/test_supervisor.py).

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
    // labels on two lines at most (long ones overlapped), with the median under the name:
    // a bot's 0.4 s next to agents' minutes is a sliver of a bar, so the value is written
    // out, and every non-empty bar keeps a few pixels (minBarLength)
    const chart = entries.some(([, st]) => st.count > 0) ? {
      type: "bar",
      data: {
        labels: entries.map(([name, st]) => [...wrap(name), st.count ? t("sv.median") + " " + seconds(st.p50) : "–"]),
        datasets: [
          { label: t("sv.median"), data: entries.map(([, st]) => scaled(st.p50)), backgroundColor: "#1f6feb", minBarLength: 4 },
          { label: t("sv.p90"), data: entries.map(([, st]) => scaled(st.p90)), backgroundColor: "#8fb8f6", minBarLength: 4 },
        ],
      },
      options: { scales: { y: { beginAtZero: true, title: { display: true, text: unit } } },
                 plugins: { tooltip: { callbacks: { label: (c) => c.dataset.label + ": " + seconds(c.raw * div) } } } },
    } : null;
    return { chart, head: [t("sv.col.who"), t("sv.col.count"), t("sv.col.mean"), t("sv.median"), t("sv.p90")], rows };
  }

  function wrap(text, width = 16) { // a chart label as lines (Chart.js draws an array as lines)
    const lines = [];
    for (const word of String(text).split(" ")) {
      const last = lines.length - 1;
      if (last >= 0 && (lines[last] + " " + word).length <= width) lines[last] += " " + word;
      else lines.push(word);
    }
    return lines;
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
      const out = statsRows([[t("sv.conv_bot"), x.conversations_bot], [t("sv.conv_agent"), x.conversations_agent], [t("sv.cases"), x.cases]]);
      const res = r.resolutions;
      if (res && res.agent) out.note = t("sv.reopened", { n: numFmt.format(res.reopened), of: numFmt.format(res.agent), rate: percent(res.reopen_rate) });
      return out;
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
        chart: countsChart(entries.map(([s]) => label("sv.sev", s)), entries.map(([, k]) => k), entries.map(([s], i) => SEVERITY_COLOURS[s] ?? SERIES[i % SERIES.length])),
        head: [t("sv.col.severity"), t("sv.col.count")],
        rows: entries.map(([s, k]) => [cell(label("sv.sev", s), s), n(k)]),
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
      if (seq !== sv.seq || currentView() !== "supervisor") return;
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

  function wire() { // the period picker
    for (const b of document.querySelectorAll("#sv-days button")) {
      b.addEventListener("click", () => { sv.days = Number(b.dataset.days); loadSupervisor(); });
    }
  }

  return Object.freeze({ load: loadSupervisor, clear: clearSupervisor, wire });
};
