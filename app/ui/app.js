/*
 * The analytics page of Ollama Metrics Proxy: plain ES2020, no framework, no build step.
 *
 * Everything shown comes from the proxy's /analytics/* API (relative URLs, so the page also
 * works behind a path prefix). Stored prompts and responses are hostile input: every value
 * reaches the DOM as a Text node (textContent, Node.append of strings, SVG <title> text),
 * never as markup. The Content-Security-Policy the page is served with backs this up.
 */
"use strict";

(() => {
  const API = "../analytics/";
  const TOKEN_KEY = "ollama-metrics.analytics-token";
  const PAGE_SIZE = 50;
  const LIVE_MS = 5000;
  const RANGE_HOURS = { "15m": 0.25, "1h": 1, "6h": 6, "24h": 24, "7d": 168, "30d": 720, all: 8784 };
  const MAX_STATS_HOURS = 8784;
  const MAX_BARS = 240;
  const COMMON_STATUSES = [200, 400, 404, 499, 500, 503];
  /* The fixed choices of two filters (anything else in the URL is ignored). */
  const CHOICES = { cold: ["true", "false"], placement: ["gpu", "mixed", "cpu"] };
  const COLD_CAUSES = {
    first_load: "first load: it was not in memory",
    expired: "its keep-alive had expired",
    evicted: "another model had evicted it",
    unloaded: "it had been unloaded",
    options: "the request's options differ from the loaded model's",
    unknown: "cause unknown",
  };
  /* The SVG namespace, taken from a parsed <svg> rather than spelled out here. */
  const SVG_NS = document.getElementById("svg-proto").content.firstElementChild.namespaceURI;

  const $ = (id) => document.getElementById(id);

  /* ---------- DOM helpers: data only ever becomes text ---------- */

  function fill(node, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function el(tag, attrs, ...children) {
    return fill(document.createElement(tag), attrs, children);
  }

  function svg(tag, attrs, ...children) {
    return fill(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  /* ---------- formatting ---------- */

  function fmtSeconds(value) {
    if (value === null || value === undefined) return "—";
    if (value < 1) return `${(value * 1000).toFixed(1)} ms`;
    if (value < 100) return `${value.toFixed(2)} s`;
    return `${value.toFixed(0)} s`;
  }

  function fmtInt(value) {
    return value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US");
  }

  function fmtRate(value) {
    return value === null || value === undefined ? "—" : value.toFixed(1);
  }

  function fmtPercent(value) {
    return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`;
  }

  function fmtTime(unix) {
    const d = new Date(unix * 1000);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtCompact(value) {
    if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
    if (value >= 1e4) return `${(value / 1e3).toFixed(0)}k`;
    if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
    return String(Math.round(value * 100) / 100);
  }

  function excerpt(text, length) {
    const flat = (text || "").replace(/\s+/g, " ").trim();
    return flat.length > length ? `${flat.slice(0, length - 1)}…` : flat;
  }

  function failed(record) {
    return record.status >= 400 || Boolean(record.error) || record.upstream_error !== null;
  }

  /* ---------- the API ---------- */

  class AuthNeeded extends Error {}

  async function api(path, params) {
    const url = new URL(API + path, location.href);
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== "" && value !== null && value !== undefined) url.searchParams.set(name, value);
    }
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(url, { headers, cache: "no-store" });
    if (response.status === 401) throw new AuthNeeded(token ? "rejected" : "missing");
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && body.detail;
      const text = typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : "";
      throw new Error(`${path.split("?")[0]}: ${response.status} ${text || response.statusText}`);
    }
    return body;
  }

  /* ---------- state, kept in the URL hash ---------- */

  const FILTERS = ["q", "model", "endpoint", "category", "status", "app", "node", "cold", "placement", "range",
    "from", "to"];
  /* The selects whose choices are the values seen (f-<name>), with their "any" label. */
  const SEEN = { model: "any model", endpoint: "any endpoint", category: "any category", status: "any status",
    app: "any client app", node: "any node" };
  const state = {
    filters: { q: "", model: "", endpoint: "", category: "", status: "", app: "", node: "", cold: "", placement: "",
      range: "24h", from: "", to: "" },
    id: "",
    cursor: null, /* the cursor of the page shown; null: the newest page */
    previous: [], /* the cursors of the pages before it */
    next: null,
    shown: "", /* what the table shows, to skip re-rendering an unchanged page */
    seen: { model: new Set(), endpoint: new Set(), category: new Set(), status: new Set(), app: new Set(),
      node: new Set() },
  };
  let writtenHash = null;
  let authPending = false;
  let busy = false;
  let again = false;

  function readHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    for (const name of FILTERS) state.filters[name] = params.get(name) || "";
    const range = state.filters.range;
    if (!Object.prototype.hasOwnProperty.call(RANGE_HOURS, range) && range !== "custom") {
      state.filters.range = "24h";
    }
    for (const [name, values] of Object.entries(CHOICES)) {
      if (!values.includes(state.filters[name])) state.filters[name] = "";
    }
    state.id = params.get("id") || "";
  }

  function writeHash() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = state.filters[name];
      if (!value || (name === "range" && value === "24h")) continue;
      if ((name === "from" || name === "to") && state.filters.range !== "custom") continue;
      params.set(name, value);
    }
    if (state.id) params.set("id", state.id);
    const hash = params.toString();
    writtenHash = hash;
    if (location.hash.replace(/^#/, "") !== hash) {
      history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
    }
  }

  function controlsToState() {
    state.filters.q = $("q").value.trim();
    state.filters.model = $("f-model").value;
    state.filters.endpoint = $("f-endpoint").value;
    state.filters.category = $("f-category").value;
    state.filters.status = $("f-status").value;
    state.filters.app = $("f-app").value;
    state.filters.node = $("f-node").value;
    state.filters.cold = $("f-cold").value;
    state.filters.placement = $("f-placement").value;
    state.filters.range = $("f-range").value;
    state.filters.from = $("f-from").value;
    state.filters.to = $("f-to").value;
  }

  function stateToControls() {
    $("q").value = state.filters.q;
    for (const name of Object.keys(SEEN)) {
      if (state.filters[name]) state.seen[name].add(state.filters[name]);
    }
    refreshOptions();
    $("f-cold").value = state.filters.cold;
    $("f-placement").value = state.filters.placement;
    $("f-range").value = state.filters.range;
    $("f-from").value = state.filters.from;
    $("f-to").value = state.filters.to;
    $("custom-range").hidden = state.filters.range !== "custom";
  }

  function timeWindow() {
    const f = state.filters;
    if (f.range === "custom") {
      const from = f.from ? new Date(f.from).getTime() / 1000 : null;
      const to = f.to ? new Date(f.to).getTime() / 1000 : null;
      return { start: Number.isFinite(from) ? from : null, end: Number.isFinite(to) ? to : null };
    }
    if (f.range === "all") return { start: null, end: null };
    return { start: Date.now() / 1000 - RANGE_HOURS[f.range] * 3600, end: null };
  }

  function statsHours() {
    const f = state.filters;
    if (f.range !== "custom") return RANGE_HOURS[f.range];
    const { start } = timeWindow();
    if (start === null) return MAX_STATS_HOURS;
    const hours = (Date.now() / 1000 - start) / 3600;
    return Math.min(Math.max(hours, 0.01), MAX_STATS_HOURS);
  }

  /* ---------- filter choices: values seen in the stats and the results ---------- */

  function refreshOptions() {
    const labels = SEEN;
    for (const name of Object.keys(labels)) {
      const select = $(`f-${name}`);
      const values = [...state.seen[name]].sort((a, b) =>
        name === "status" ? Number(a) - Number(b) : a.localeCompare(b));
      const current = state.filters[name];
      const wanted = ["", ...values].join("\n");
      const have = [...select.options].map((o) => o.value).join("\n");
      if (wanted !== have) {
        select.replaceChildren(
          el("option", { value: "" }, labels[name]),
          ...values.map((value) => el("option", { value }, value)),
        );
      }
      select.value = current;
    }
  }

  function remember(name, value) {
    if (value === null || value === undefined || value === "") return;
    state.seen[name].add(String(value));
  }

  /* ---------- results ---------- */

  async function loadResults() {
    const f = state.filters;
    const { start, end } = timeWindow();
    const page = await api("search", {
      prompt_search: f.q,
      model: f.model,
      endpoint: f.endpoint,
      category: f.category,
      status: f.status,
      client_app: f.app,
      node: f.node,
      cold_start: f.cold,
      placement: f.placement,
      start_time: start === null ? "" : start.toFixed(3),
      end_time: end === null ? "" : end.toFixed(3),
      limit: PAGE_SIZE,
      cursor: state.cursor || "",
    });
    state.next = page.next_cursor;
    for (const record of page.records) {
      remember("model", record.model);
      remember("endpoint", record.endpoint);
      remember("category", record.category);
      remember("status", record.status);
      remember("app", record.client_app);
      remember("node", record.node);
    }
    refreshOptions();
    const shown = JSON.stringify([page.records.map((r) => r.id), page.next_cursor, state.cursor]);
    if (shown !== state.shown) {
      state.shown = shown;
      renderResults(page.records);
    }
    renderPager(page.records.length);
  }

  function renderResults(records) {
    const body = $("results").tBodies[0];
    if (!records.length) {
      body.replaceChildren(el("tr", { id: "results-empty" },
        el("td", { colspan: 12, class: "empty" }, "No requests match.")));
      return;
    }
    body.replaceChildren(...records.map((r) => {
      const tokens = r.prompt_tokens === null && r.completion_tokens === null
        ? "—" : `${fmtInt(r.prompt_tokens)} → ${fmtInt(r.completion_tokens)}`;
      const row = el("tr", { "data-id": r.id, tabindex: 0, class: failed(r) ? "bad" : null },
        el("td", { class: "nowrap" }, fmtTime(r.unix_time)),
        el("td", { "data-field": "node" }, r.node || "—"),
        el("td", null, r.model || "—"),
        el("td", null, r.endpoint),
        el("td", null, r.category),
        el("td", { class: "num", title: r.error || null }, r.status),
        el("td", { class: "num" }, fmtSeconds(r.duration_s)),
        el("td", { class: "num" }, fmtSeconds(r.ttft_s)),
        el("td", { class: "num nowrap" }, tokens),
        el("td", { class: "num" }, fmtRate(r.tokens_per_second)),
        el("td", { class: "why", "data-field": "diagnosis", title: r.diagnosis || null },
          r.diagnosis ? excerpt(r.diagnosis, 160) : null),
        el("td", { class: "excerpt" }, excerpt(r.prompt, 140) || excerpt(r.error, 140)),
      );
      if (r.id === state.id) row.classList.add("selected");
      return row;
    }));
  }

  function renderPager(count) {
    $("prev").disabled = state.previous.length === 0;
    $("next").disabled = !state.next;
    const page = state.previous.length + 1;
    $("page-info").textContent = count ? `page ${page} · ${count} shown · newest first` : "";
  }

  /* ---------- summary ---------- */

  async function loadStats() {
    const hours = statsHours();
    const stats = await api("stats", { hours: hours.toFixed(2) });
    for (const m of stats.models) remember("model", m.name);
    for (const c of stats.categories) remember("category", c.name);
    for (const a of stats.client_apps) remember("app", a.name);
    for (const n of stats.nodes) remember("node", n.name);
    refreshOptions();
    renderStats(stats);
  }

  function card(label, value, detail, field) {
    return el("div", { class: "card", "data-field": field },
      el("div", { class: "card-label" }, label),
      el("div", { class: "card-value" }, value),
      el("div", { class: "card-detail muted" }, detail || ""));
  }

  function renderStats(stats) {
    const label = { "15m": "last 15 minutes", "1h": "last hour", "6h": "last 6 hours", "24h": "last 24 hours",
      "7d": "last 7 days", "30d": "last 30 days", all: "last 366 days" }[state.filters.range];
    $("summary-range").textContent = `· ${label || `since ${fmtTime(stats.since)}`}`;
    const t = stats.tokens;
    $("cards").replaceChildren(
      card("Requests", fmtInt(stats.total_requests), `${fmtInt(stats.cancelled)} cancelled`, "total_requests"),
      card("Error rate", fmtPercent(stats.error_rate), `${fmtInt(stats.errors)} ${stats.errors === 1 ? "error" : "errors"}`, "error_rate"),
      card("Latency p50 / p95", `${fmtSeconds(stats.latency.p50_s)} / ${fmtSeconds(stats.latency.p95_s)}`,
        `avg ${fmtSeconds(stats.latency.avg_s)}`, "latency"),
      card("TTFT p50 / p95", `${fmtSeconds(stats.ttft.p50_s)} / ${fmtSeconds(stats.ttft.p95_s)}`, "", "ttft"),
      card("Tokens", `${fmtCompact(t.prompt_total)} → ${fmtCompact(t.completion_total)}`,
        "prompt → completion", "tokens"),
      card("Tokens/s", fmtRate(stats.tokens_per_second_avg), "average generation speed", "tokens_per_second"),
      card("Queue wait p50 / p95", `${fmtSeconds(stats.queue_wait.p50_s)} / ${fmtSeconds(stats.queue_wait.p95_s)}`,
        "waiting for a free slot in Ollama", "queue_wait"),
      card("Cold starts", fmtInt(stats.cold_starts),
        `${fmtPercent(stats.total_requests ? stats.cold_starts / stats.total_requests : null)} of requests waited for a load`,
        "cold_starts"),
      card("Client apps", fmtInt(stats.client_apps.length),
        stats.client_apps.slice(0, 3).map((a) => `${a.name || "unnamed"} ${fmtInt(a.requests)}`).join(" · "), "client_apps"),
    );
    const buckets = bucketise(stats.hourly, stats.since);
    $("chart-requests").replaceChildren(barChart(buckets, [
      { key: "ok", cls: "s-ok", label: "ok", value: (b) => b.requests - b.errors },
      { key: "errors", cls: "s-err", label: "errors", value: (b) => b.errors },
    ], fmtCompact));
    $("chart-tokens").replaceChildren(barChart(buckets, [
      { key: "prompt_tokens", cls: "s-prompt", label: "prompt", value: (b) => b.prompt_tokens },
      { key: "completion_tokens", cls: "s-completion", label: "completion", value: (b) => b.completion_tokens },
    ], fmtCompact));
    $("chart-errors").replaceChildren(barChart(buckets, [
      { key: "error_rate", cls: "s-err", label: "error rate", value: (b) => (b.requests ? b.errors / b.requests : 0) },
    ], (v) => `${(v * 100).toFixed(0)} %`));
    $("chart-latency").replaceChildren(latencyChart(stats));
    renderModels(stats.models);
  }

  /* The hourly rows, gaps filled with zeros, merged into at most MAX_BARS bars. */
  function bucketise(hourly, since) {
    const now = Date.now() / 1000;
    const first = Math.floor(Math.min(since, ...hourly.map((h) => h.hour)) / 3600) * 3600;
    const hours = Math.max(1, Math.ceil((now - first) / 3600));
    const width = Math.ceil(hours / MAX_BARS) * 3600;
    const buckets = [];
    for (let start = first; start < now; start += width) {
      buckets.push({ start, end: start + width, requests: 0, errors: 0, prompt_tokens: 0, completion_tokens: 0 });
    }
    for (const h of hourly) {
      const bucket = buckets[Math.min(Math.floor((h.hour - first) / width), buckets.length - 1)];
      bucket.requests += h.requests;
      bucket.errors += h.errors;
      bucket.prompt_tokens += h.prompt_tokens;
      bucket.completion_tokens += h.completion_tokens;
    }
    return buckets;
  }

  function barChart(buckets, series, format) {
    const W = 600, H = 170, left = 44, right = 8, top = 10, bottom = 22;
    const totals = buckets.map((b) => series.reduce((sum, s) => sum + s.value(b), 0));
    const max = Math.max(...totals, 0);
    const scale = max > 0 ? (H - top - bottom) / max : 0;
    const step = (W - left - right) / buckets.length;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "bars", role: "img", "data-max": max });
    chart.append(
      svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }),
      svg("text", { x: left - 4, y: top + 4, class: "tick end" }, max > 0 ? format(max) : "0"),
      svg("text", { x: left - 4, y: H - bottom, class: "tick end" }, "0"),
      svg("text", { x: left, y: H - 6, class: "tick" }, fmtTime(buckets[0].start).slice(5, 16)),
      svg("text", { x: W - right, y: H - 6, class: "tick end" }, "now"),
    );
    if (max === 0) {
      chart.append(svg("text", { x: W / 2, y: H / 2, class: "tick middle" }, "no data in this range"));
      return chart;
    }
    buckets.forEach((b, i) => {
      let y = H - bottom;
      for (const s of series) {
        const value = s.value(b);
        if (!value) continue;
        const h = Math.max(value * scale, 1);
        y -= h;
        chart.append(svg("rect", {
          x: (left + i * step + step * 0.1).toFixed(2), y: y.toFixed(2),
          width: Math.max(step * 0.8, 0.5).toFixed(2), height: h.toFixed(2),
          class: s.cls, "data-series": s.key, "data-value": value, "data-start": b.start,
        }, svg("title", null, `${fmtTime(b.start)}: ${s.label} ${format(value)}`)));
      }
    });
    return chart;
  }

  function latencyChart(stats) {
    const rows = [
      ["latency avg", stats.latency.avg_s, "s-ok"],
      ["latency p50", stats.latency.p50_s, "s-ok"],
      ["latency p95", stats.latency.p95_s, "s-ok"],
      ["TTFT p50", stats.ttft.p50_s, "s-prompt"],
      ["TTFT p95", stats.ttft.p95_s, "s-prompt"],
      ["queue wait p95", stats.queue_wait.p95_s, "s-load"],
      ["stream pause p95", stats.stream_max_gap.p95_s, "s-load"],
    ];
    return horizontalBars(rows, "percentiles");
  }

  function horizontalBars(rows, kind) {
    const W = 600, rowH = 26, left = 110, right = 90;
    const H = rows.length * rowH + 6;
    const max = Math.max(...rows.map((r) => r[1] || 0), 0);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: `hbars ${kind}`, role: "img" });
    rows.forEach(([label, value, cls], i) => {
      const y = 4 + i * rowH;
      chart.append(svg("text", { x: left - 8, y: y + 15, class: "tick end" }, label));
      if (value !== null && value !== undefined && max > 0) {
        const w = Math.max((value / max) * (W - left - right), 1);
        chart.append(svg("rect", {
          x: left, y, width: w.toFixed(2), height: rowH - 8, class: cls,
          "data-series": label, "data-value": value,
        }, svg("title", null, `${label}: ${fmtSeconds(value)}`)));
        chart.append(svg("text", { x: left + w + 6, y: y + 15, class: "tick" }, fmtSeconds(value)));
      } else {
        chart.append(svg("text", { x: left, y: y + 15, class: "tick muted" }, "—"));
      }
    });
    return chart;
  }

  function renderModels(models) {
    const body = $("models").tBodies[0];
    if (!models.length) {
      body.replaceChildren(el("tr", null, el("td", { colspan: 11, class: "empty" }, "No requests in this range.")));
      return;
    }
    const most = Math.max(...models.map((m) => m.requests));
    body.replaceChildren(...models.map((m) => {
      const share = svg("svg", { viewBox: "0 0 100 8", class: "share", preserveAspectRatio: "none" },
        svg("rect", { x: 0, y: 0, height: 8, width: ((m.requests / most) * 100).toFixed(2), class: "s-ok",
          "data-value": m.requests }));
      const row = el("tr", { "data-model": m.name, tabindex: 0 },
        el("td", null, m.name || "—"),
        el("td", { class: "num" }, el("span", { class: "share-cell" }, share, fmtInt(m.requests))),
        el("td", { class: `num${m.errors ? " bad-text" : ""}` },
          `${fmtInt(m.errors)} (${fmtPercent(m.requests ? m.errors / m.requests : null)})`),
        el("td", { class: "num" }, fmtSeconds(m.avg_duration_s)),
        el("td", { class: "num" }, fmtInt(m.prompt_tokens)),
        el("td", { class: "num" }, fmtInt(m.completion_tokens)),
        el("td", { class: "num" }, fmtRate(m.tokens_per_second_avg)),
        el("td", { class: `num${m.truncations ? " bad-text" : ""}`, "data-field": "truncations",
          title: "requests whose prompt or output was cut" }, fmtInt(m.truncations)),
        el("td", { class: "num", "data-field": "cold_starts", "data-value": m.cold_starts,
          title: `${fmtInt(m.cold_starts)} of ${fmtInt(m.requests)} requests waited for the model to load` },
        fmtPercent(m.cold_start_share)),
        el("td", { class: "num", "data-field": "queue_wait_p95_s",
          "data-value": m.queue_wait_p95_s === null ? "null" : m.queue_wait_p95_s,
          title: "95th percentile of the wait for a free slot in Ollama" }, fmtSeconds(m.queue_wait_p95_s)),
        onCpu(m),
      );
      row.title = "show this model's requests";
      return row;
    }));
  }

  /* The share of a model's requests with a known placement that ran partly or all on the CPU. */
  function onCpu(m) {
    const known = m.placed && m.spilled_share !== null && m.spilled_share !== undefined;
    const spilled = known ? Math.round(m.spilled_share * m.placed) : 0;
    return el("td", {
      class: `num${spilled ? " bad-text" : ""}`, "data-field": "spilled_share",
      "data-value": known ? m.spilled_share : "null",
      title: known
        ? `${fmtInt(spilled)} of the ${fmtInt(m.placed)} requests whose placement was known ran partly or all on the CPU`
        : "placement not known for any request",
    }, known ? fmtPercent(m.spilled_share) : "—");
  }

  /* ---------- one record ---------- */

  async function loadRecord() {
    const panel = $("record");
    panel.dataset.id = state.id;
    document.body.classList.toggle("with-record", Boolean(state.id));
    for (const row of $("results").querySelectorAll("tr.selected")) row.classList.remove("selected");
    if (!state.id) {
      panel.hidden = true;
      panel.replaceChildren();
      return;
    }
    const selected = $("results").querySelector(`tr[data-id="${CSS.escape(state.id)}"]`);
    if (selected) selected.classList.add("selected");
    panel.hidden = false;
    panel.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    let record;
    try {
      record = await api(`records/${encodeURIComponent(state.id)}`);
    } catch (error) {
      if (error instanceof AuthNeeded) {
        panel.dataset.id = ""; /* loaded again once the token is in */
        throw error;
      }
      panel.replaceChildren(recordHead(state.id), el("p", { class: "bad-text" }, String(error.message)));
      return;
    }
    if (record.id === state.id) renderRecord(record);
  }

  function recordHead(id) {
    const close = el("button", { type: "button", id: "record-close", class: "quiet" }, "Close ✕");
    close.addEventListener("click", () => { state.id = ""; writeHash(); run(loadRecord); });
    return el("div", { class: "panel-head" }, el("h2", null, "Request ", el("code", null, id)), close);
  }

  function text(field, value, cls) {
    return el("pre", { "data-field": field, class: cls || null }, value);
  }

  function block(title, field, value, cls) {
    return el("div", { class: "block" }, el("h3", null, title), text(field, value, cls));
  }

  function pretty(json) {
    try {
      return JSON.stringify(JSON.parse(json), null, 2);
    } catch {
      return json;
    }
  }

  function facts(pairs) {
    return el("dl", { class: "facts" }, pairs.flatMap(([label, field, value, raw]) => [
      el("dt", null, label),
      el("dd", { "data-field": field, "data-value": raw === undefined ? null : raw === null ? "null" : raw }, value),
    ]));
  }

  /* The percent of the model on the CPU, rounded as the diagnosis rounds it. */
  function cpuPercent(r) {
    if (r.placement === "cpu") return 100;
    if (r.placement === "gpu") return 0;
    if (r.placement === "mixed" && r.gpu_share !== null && r.gpu_share !== undefined) {
      return Math.min(Math.max(Math.round((1 - r.gpu_share) * 100), 1), 99);
    }
    return null;
  }

  function coldText(r) {
    if (!r.cold_cause) return "no (warm, or not judged)";
    const parts = [`yes: ${COLD_CAUSES[r.cold_cause] || r.cold_cause}`];
    if (r.cold_detail) parts.push(r.cold_detail);
    if (r.ollama_load_s !== null && r.ollama_load_s !== undefined) parts.push(`${fmtSeconds(r.ollama_load_s)} loading`);
    return parts.join(" · ");
  }

  function placementText(r) {
    const percent = cpuPercent(r);
    const where = { gpu: "all on the GPU", mixed: "split between GPU and CPU", cpu: "all on the CPU" }[r.placement];
    if (!where) return "unknown";
    return percent === null ? where : `${where} (${percent} % on CPU)`;
  }

  function why(r) {
    if (!r.diagnosis) return null;
    return el("div", { class: "why-block", role: "note" },
      el("h3", null, "Why"),
      el("p", { "data-field": "diagnosis" }, r.diagnosis));
  }

  function renderRecord(r) {
    const outside = r.ollama_total_s === null ? null : Math.max(r.duration_s - r.ollama_total_s, 0);
    const parts = [
      recordHead(r.id),
      why(r),
      facts([
        ["time", "timestamp", `${fmtTime(r.unix_time)} (${r.timestamp})`],
        ["node", "node", r.node || "—"],
        ["model", "model", r.model || "—"],
        ["request", "path", `${r.method} ${r.path}`],
        ["endpoint", "endpoint", r.endpoint],
        ["category", "category", r.category],
        ["status", "status", String(r.status), r.status],
        ["streamed", "streamed", r.streamed ? "yes" : "no"],
        ["done reason", "done_reason", r.done_reason || "—"],
        ["cancelled / truncated", "flags", `${r.cancelled ? "cancelled" : "not cancelled"} / ${r.truncated ? "truncated" : "complete"}`],
        ["client", "client", r.client],
        ["user agent", "user_agent", r.user_agent || "—"],
        ["client app", "client_app", r.client_app || "—"],
        ["API key", "api_key", r.api_key || "—"],
        ["bytes in / out", "bytes", `${fmtInt(r.request_bytes)} / ${fmtInt(r.response_bytes)}`],
      ]),
      el("h3", null, "Timings"),
      waterfall(r),
      facts([
        ["proxy total", "duration_s", fmtSeconds(r.duration_s), r.duration_s],
        ["time to first token", "ttft_s", fmtSeconds(r.ttft_s), r.ttft_s],
        ["Ollama total", "ollama_total_s", fmtSeconds(r.ollama_total_s), r.ollama_total_s],
        ["load", "ollama_load_s", fmtSeconds(r.ollama_load_s), r.ollama_load_s],
        ["prompt eval", "ollama_prompt_eval_s", fmtSeconds(r.ollama_prompt_eval_s), r.ollama_prompt_eval_s],
        ["generation", "ollama_eval_s", fmtSeconds(r.ollama_eval_s), r.ollama_eval_s],
        ["queue wait (for a slot)", "queue_wait_s", fmtSeconds(r.queue_wait_s), r.queue_wait_s],
        ["longest stream pause", "max_gap_s", fmtSeconds(r.max_gap_s), r.max_gap_s],
        ["outside Ollama", "outside_s", fmtSeconds(outside), outside],
      ]),
      el("h3", null, "Load and placement"),
      facts([
        ["cold start", "cold_start", coldText(r), r.cold_cause],
        ["placement", "placement", placementText(r), r.placement],
        ["requests ahead", "requests_ahead",
          r.requests_ahead === null ? "unknown" : `${fmtInt(r.requests_ahead)} already in flight for this model`,
          r.requests_ahead],
      ]),
      el("h3", null, "Tokens"),
      facts([
        ["prompt tokens", "prompt_tokens", fmtInt(r.prompt_tokens), r.prompt_tokens],
        ["completion tokens", "completion_tokens", fmtInt(r.completion_tokens), r.completion_tokens],
        ["tokens/s", "tokens_per_second", fmtRate(r.tokens_per_second), r.tokens_per_second],
        ["context", "context_tokens", r.context_tokens === null ? "unknown" : fmtInt(r.context_tokens), r.context_tokens],
        ["cut", "truncation", { prompt: "the prompt filled the context: its start was cut",
          output: "the output stopped at its token limit" }[r.truncation] || "nothing", r.truncation],
      ]),
    ];
    if (r.error || r.upstream_error) {
      const kind = r.upstream_error ? `upstream: ${r.upstream_error}` : "";
      parts.push(block("Error", "error", [r.error, kind].filter(Boolean).join("\n"), "bad-text"));
    }
    parts.push(block("Prompt", "prompt", r.prompt));
    parts.push(block("Response", "response", r.response));
    if (r.thinking) parts.push(block("Thinking", "thinking", r.thinking));
    if (r.tool_calls) parts.push(block("Tool calls", "tool_calls", pretty(r.tool_calls)));
    parts.push(el("details", { class: "block" }, el("summary", null, "Request body"),
      text("request_body", pretty(r.request_body))));
    $("record").replaceChildren(...parts.filter(Boolean));
  }

  /* Where the time went: Ollama's phases laid out one after the other, the proxy's own
     total and time to first token against the same scale. */
  function waterfall(r) {
    const load = r.ollama_load_s || 0;
    const promptEval = r.ollama_prompt_eval_s || 0;
    const rows = [
      ["proxy total", "duration_s", 0, r.duration_s, "s-total"],
      ["Ollama total", "ollama_total_s", 0, r.ollama_total_s, "s-ollama"],
      ["load", "ollama_load_s", 0, r.ollama_load_s, "s-load"],
      ["prompt eval", "ollama_prompt_eval_s", load, r.ollama_prompt_eval_s, "s-prompt"],
      ["generation", "ollama_eval_s", load + promptEval, r.ollama_eval_s, "s-completion"],
    ].filter((row) => row[3] !== null && row[3] !== undefined);
    const end = Math.max(...rows.map(([, , start, length]) => start + length), r.ttft_s || 0, 1e-9);
    const W = 600, rowH = 24, left = 110, right = 80;
    const H = rows.length * rowH + 26;
    const x = (seconds) => left + (seconds / end) * (W - left - right);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "waterfall", role: "img" });
    rows.forEach(([label, field, start, length, cls], i) => {
      const y = 4 + i * rowH;
      chart.append(
        svg("text", { x: left - 8, y: y + 14, class: "tick end" }, label),
        svg("rect", {
          x: x(start).toFixed(2), y, width: Math.max(x(start + length) - x(start), 1).toFixed(2),
          height: rowH - 8, class: cls, "data-field": field, "data-value": length,
        }, svg("title", null, `${label}: ${fmtSeconds(length)}`)),
        svg("text", { x: (x(start + length) + 6).toFixed(2), y: y + 14, class: "tick" }, fmtSeconds(length)),
      );
    });
    if (r.ttft_s !== null) {
      const at = x(r.ttft_s).toFixed(2);
      chart.append(
        svg("line", { x1: at, x2: at, y1: 0, y2: H - 18, class: "marker", "data-field": "ttft_s", "data-value": r.ttft_s }),
        svg("text", { x: at, y: H - 6, class: "tick middle" }, `first token ${fmtSeconds(r.ttft_s)}`),
      );
    }
    return chart;
  }

  /* ---------- token prompt ---------- */

  function askToken(reason) {
    authPending = true;
    $("auth-message").textContent = reason === "rejected"
      ? "The token was not accepted. Enter the proxy's ANALYTICS_TOKEN."
      : "This proxy guards its analytics with ANALYTICS_TOKEN. Enter it once; it is kept for this browser session only.";
    $("auth").hidden = false;
    $("token-input").focus();
  }

  function saveToken(event) {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    $("auth").hidden = true;
    authPending = false;
    $("forget-token").hidden = false;
    state.shown = "";
    refreshAll();
  }

  /* ---------- running things ---------- */

  function showError(message) {
    const banner = $("banner");
    banner.textContent = message;
    banner.hidden = !message;
  }

  async function run(task) {
    try {
      await task();
      return true;
    } catch (error) {
      if (error instanceof AuthNeeded) {
        askToken(error.message);
      } else {
        showError(String(error && error.message ? error.message : error));
      }
      return false;
    }
  }

  /* One refresh at a time; a request for another while one runs (a search typed during a
     live refresh) runs right after it, so none is lost. */
  async function refreshAll() {
    if (authPending) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        const ok = await run(async () => {
          await Promise.all([loadResults(), loadStats()]);
        });
        if (ok) showError("");
        if (ok && state.id !== ($("record").dataset.id || "")) await run(loadRecord);
      } while (again && !authPending);
    } finally {
      busy = false;
    }
  }

  function search(event) {
    if (event) event.preventDefault();
    controlsToState();
    $("custom-range").hidden = state.filters.range !== "custom";
    state.cursor = null;
    state.previous = [];
    state.shown = "";
    writeHash();
    refreshAll();
  }

  function openRow(row) {
    if (!row || !row.dataset.id) return;
    state.id = row.dataset.id;
    writeHash();
    run(loadRecord);
  }

  function init() {
    for (const status of COMMON_STATUSES) state.seen.status.add(String(status));
    readHash();
    stateToControls();
    $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
    $("filters").addEventListener("submit", search);
    for (const id of ["f-model", "f-endpoint", "f-category", "f-status", "f-app", "f-node", "f-cold", "f-placement",
      "f-range", "f-from", "f-to"]) {
      $(id).addEventListener("change", () => search());
    }
    $("clear-button").addEventListener("click", () => {
      $("q").value = "";
      for (const id of ["f-model", "f-endpoint", "f-category", "f-status", "f-app", "f-node", "f-cold", "f-placement"]) {
        $(id).value = "";
      }
      $("f-range").value = "24h";
      search();
    });
    $("results").addEventListener("click", (event) => openRow(event.target.closest("tr[data-id]")));
    $("results").addEventListener("keydown", (event) => {
      if (event.key === "Enter") openRow(event.target.closest("tr[data-id]"));
    });
    $("models").addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-model]");
      if (!row) return;
      state.seen.model.add(row.dataset.model);
      refreshOptions();
      $("f-model").value = row.dataset.model;
      search();
    });
    $("next").addEventListener("click", () => {
      if (!state.next) return;
      state.previous.push(state.cursor);
      state.cursor = state.next;
      refreshAll();
    });
    $("prev").addEventListener("click", () => {
      if (!state.previous.length) return;
      state.cursor = state.previous.pop();
      refreshAll();
    });
    $("auth-form").addEventListener("submit", saveToken);
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("forget-token").hidden = true;
      state.shown = "";
      refreshAll();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.id) {
        state.id = "";
        writeHash();
        run(loadRecord);
      }
    });
    window.addEventListener("hashchange", () => {
      if (location.hash.replace(/^#/, "") === writtenHash) return;
      readHash();
      stateToControls();
      state.cursor = null;
      state.previous = [];
      state.shown = "";
      refreshAll();
    });
    setInterval(() => {
      if ($("live").checked && state.cursor === null && !document.hidden) refreshAll();
    }, LIVE_MS);
    refreshAll();
  }

  init();
})();
