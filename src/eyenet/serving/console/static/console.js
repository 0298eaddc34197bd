/* EyeNet console: a single-page app over the EyeNet HTTP API, which serves it (same origin).
 *
 * Pages (hash routes): #/overview, #/series, #/series/<tenant>/<group>/<id>, #/models, #/jobs.
 * Plain ES2020, no framework and no build step; charts by uPlot (window.uPlot, vendored).
 * Every API call goes through api(), with the key from sessionStorage as a Bearer token.
 * While idle a view polls at most every 5 s (the open running job every 2 s), never while the
 * tab is hidden, and never more than one request per second.
 */
"use strict";

(() => {
  // ------------------------------------------------------------------------------------------
  // settings

  const KEY_STORAGE = "eyenet.console.key";
  const POLL_MS = 5000; // overview, series list, jobs list
  const JOB_POLL_MS = 2000; // the open job while it is pending or running
  const POINTS_LIMIT = 10000;
  const HISTORY_LIMIT = 50;
  const ACTIVE_JOB = new Set(["pending", "running"]);
  const RED = "#cf222e";
  const PALETTE = ["#8250df", "#1a7f37", "#bf8700", "#0550ae", "#953800", "#bc4c00", "#116329", "#6e7781"];
  // the directory of this page: the API answers under it (the page is served at "/")
  const ROOT = new URL("./", window.location.href);

  const state = { key: null, me: null, view: null, match: "" };

  // ------------------------------------------------------------------------------------------
  // small helpers

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  /** An element: h("a", {href: "#/x", class: "c", text: "t", onclick: fn}, ...children). */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = String(v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  /** Replaces the children of `el` (arrays flattened, null and false left out). */
  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  const finite = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  /** A number in `digits` significant digits, or a dash. */
  function num(v, digits = 4) {
    const x = finite(v);
    return x === null ? "—" : String(Number(x.toPrecision(digits)));
  }

  function toDate(t) {
    if (t === null || t === undefined || t === "") return null;
    let d;
    if (typeof t === "number") d = new Date(t * 1000);
    else if (/^\d+(\.\d+)?$/.test(String(t))) d = new Date(Number(t) * 1000);
    else d = new Date(t);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  /** A time (unix seconds or ISO 8601) as local "YYYY-MM-DD HH:MM:SS". */
  function when(t) {
    const d = toDate(t);
    if (!d) return t === null || t === undefined || t === "" ? "—" : String(t);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  /** Any JSON value, compact: scalars as text, structures folded into a <details>. */
  function value(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return num(v, 6);
    if (typeof v !== "object") return String(v);
    if (Array.isArray(v) && v.every((x) => x === null || typeof x !== "object")) {
      return v.length ? v.join(", ") : "none";
    }
    const size = Array.isArray(v) ? `${v.length} items` : `${Object.keys(v).length} keys`;
    return h("details", { class: "json" }, h("summary", { text: size }),
      h("pre", { text: JSON.stringify(v, null, 2) }));
  }

  function thead(...labels) {
    return h("thead", {}, h("tr", {}, labels.map((l) => h("th", { scope: "col", text: l }))));
  }

  function emptyRow(columns, text) {
    return h("tr", { class: "empty" }, h("td", { colspan: columns, text }));
  }

  function badge(text, kind) {
    return h("span", { class: `badge ${kind || ""}`.trim(), text: text === null || text === undefined ? "—" : text });
  }

  /** CSS class of a status or severity word (ok, degraded, critical, warning, firing, ...). */
  function tone(word) {
    const w = String(word || "").toLowerCase();
    if (["ok", "succeeded", "resolved", "healthy"].includes(w)) return "tone-ok";
    if (["degraded", "pending"].includes(w)) return "tone-degraded";
    if (["critical", "firing", "failed", "error", "down"].includes(w)) return "tone-critical";
    if (["warning", "warn", "cancelled"].includes(w)) return "tone-warning";
    if (w === "running") return "tone-running";
    return "tone-neutral";
  }

  // ------------------------------------------------------------------------------------------
  // errors

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.body = body;
    }
  }

  /** The message of an error answer: {"error": {"message"}} or FastAPI's {"detail": ...}. */
  function messageOf(res, body, text) {
    const err = body && body.error;
    if (err && typeof err === "object" && err.message) return String(err.message);
    if (typeof err === "string" && err) return err;
    const detail = body && body.detail;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => (d && d.msg ? `${(d.loc || []).join(".")}: ${d.msg}` : JSON.stringify(d))).join("; ");
    }
    if (detail) return JSON.stringify(detail);
    const snippet = (text || "").replace(/\s+/g, " ").trim().slice(0, 200);
    return `${res.statusText || "error"}${snippet ? `: ${snippet}` : ""}`;
  }

  let errorSource = null;

  /** Shows `message` in the error bar; `source` says what may clear it (a later good poll: "poll"). */
  function showError(message, source = "action") {
    $("error-text").textContent = message;
    $("error").hidden = false;
    errorSource = source;
  }

  /** Hides the error bar; with a `source`, only when the shown error came from it. */
  function clearError(source) {
    if (source && source !== errorSource) return;
    $("error").hidden = true;
    $("error-text").textContent = "";
    errorSource = null;
  }

  function report(err, source = "action") {
    if (!err || err.name === "AbortError" || err.handled) return;
    showError(err.message || String(err), source);
  }

  // ------------------------------------------------------------------------------------------
  // the API

  /** One API call: JSON in and out, the key as a Bearer token; an error answer throws ApiError
   *  with its message, and a 401 also signs out (the login shows again with the message). */
  async function api(path, { method = "GET", body, signal } = {}) {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    const init = { method, headers, signal, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(new URL(path.replace(/^\/+/, ""), ROOT), init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `${method} ${path}: the server did not answer (${err.message})`);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (res.ok) {
      if (data === null && text) throw new ApiError(res.status, `${method} ${path}: the answer is not JSON`);
      return data;
    }
    let message = `${messageOf(res, data, text)} (HTTP ${res.status})`;
    const retry = res.headers.get("Retry-After");
    if (retry) message += ` — retry in ${retry} s`;
    const error = new ApiError(res.status, message, data);
    if (res.status === 401) {
      error.handled = true;
      signOut(message);
    }
    throw error;
  }

  // ------------------------------------------------------------------------------------------
  // sign-in and roles

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE);
    } catch (_) {
      return null;
    }
  }

  function writeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // storage disabled: the key lives as long as the page
    }
  }

  function showLogin() {
    closeView();
    $("main").hidden = true;
    $("nav").hidden = true;
    $("account").hidden = true;
    $("login").hidden = false;
    $("login-key").value = "";
    $("login-key").focus();
  }

  function showApp() {
    $("login").hidden = true;
    $("main").hidden = false;
    $("nav").hidden = false;
    $("account").hidden = false;
  }

  /** Forgets the key and shows the login (with `message` in the error bar, if any). */
  function signOut(message) {
    state.key = null;
    state.me = null;
    writeKey(null);
    $("identity").textContent = "";
    showLogin();
    if (message) showError(message, "auth");
    else clearError();
  }

  /** Keeps the key and opens the page of the address (the overview by default); route() asks
   *  GET /v1/me first, and a refused key (401) brings the login back. */
  async function signIn(key) {
    state.key = key;
    state.me = null;
    writeKey(key);
    clearError();
    if (!location.hash || location.hash === "#" || location.hash === "#/") {
      history.replaceState(null, "", "#/overview");
    }
    await route();
  }

  /** Who the key is (GET /v1/me); without it, every role-bound control stays hidden. */
  async function loadMe() {
    try {
      state.me = await api("/v1/me");
    } catch (err) {
      state.me = null;
      report(err, "me");
    }
    renderIdentity();
  }

  function renderIdentity() {
    const me = state.me;
    $("identity").textContent = me
      ? `${me.name} · ${me.tenant} · ${(me.roles || []).join(", ") || "no roles"}`
      : "unknown key";
  }

  function hasRole(...roles) {
    const mine = state.me && Array.isArray(state.me.roles) ? state.me.roles : [];
    return roles.some((r) => mine.includes(r));
  }

  const mayOperate = () => hasRole("operator", "admin"); // promote, rollback, review; jobs
  const mayLabel = () => hasRole("writer", "operator", "admin"); // feedback

  // ------------------------------------------------------------------------------------------
  // views and polling

  /** A fresh view: its own root element, an AbortSignal for its requests, its pollers. */
  function openView(page) {
    closeView();
    if (errorSource !== "me") clearError();
    delete document.body.dataset.drawMs;
    $("draw-time").textContent = "";
    const controller = new AbortController();
    const root = h("div", { class: `page page-${page}` });
    $("main").replaceChildren(root);
    const view = {
      root,
      signal: controller.signal,
      pollers: [],
      cleanups: [],
      close() {
        controller.abort();
        for (const p of view.pollers) p.stop();
        for (const fn of view.cleanups) fn();
      },
    };
    state.view = view;
    return view;
  }

  function closeView() {
    if (state.view) state.view.close();
    state.view = null;
  }

  /** Calls `load` now (run) and every `ms` after it finished, not while the tab is hidden, until
   *  the view closes or `load` returns false. A late error shows in the error bar; the next good
   *  answer clears it. */
  function poll(view, load, ms) {
    let timer = null;
    let busy = false;
    let again = false;
    let done = false;
    let last = -Infinity;
    const stop = () => {
      clearTimeout(timer);
      timer = null;
    };
    const arm = (delay) => {
      stop();
      if (!view.signal.aborted && !done) timer = setTimeout(() => run(true), delay);
    };
    async function run(fromTimer = false) {
      stop();
      if (view.signal.aborted) return;
      if (fromTimer && document.hidden) return; // resumed by wake()
      if (!fromTimer) done = false;
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      last = performance.now();
      try {
        done = (await load()) === false;
        clearError("poll");
      } catch (err) {
        report(err, "poll");
      } finally {
        busy = false;
      }
      if (again) {
        again = false;
        run();
        return;
      }
      arm(ms);
    }
    const wake = () => {
      if (!busy && !done && timer === null) arm(Math.max(0, ms - (performance.now() - last)));
    };
    const poller = { run, stop, wake };
    view.pollers.push(poller);
    return poller;
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.view) for (const p of state.view.pollers) p.wake();
  });

  // ------------------------------------------------------------------------------------------
  // routes

  const ROUTES = [
    { re: /^#\/overview\/?$/, page: "overview", render: renderOverview },
    { re: /^#\/series\/?$/, page: "series", render: renderSeriesList },
    { re: /^#\/series\/([^/]+)\/([^/]+)\/([^/]+)\/?$/, page: "series", render: renderSeries },
    { re: /^#\/models\/?$/, page: "models", render: renderModels },
    { re: /^#\/jobs\/?$/, page: "jobs", render: renderJobs },
  ];

  async function route() {
    if (!state.key) {
      showLogin();
      return;
    }
    const hash = location.hash;
    let hit = null;
    for (const r of ROUTES) {
      const m = hash.match(r.re);
      if (m) {
        hit = { r, args: m.slice(1) };
        break;
      }
    }
    if (!hit) {
      location.replace("#/overview");
      return;
    }
    let args;
    try {
      args = hit.args.map(decodeURIComponent);
    } catch (_) {
      showError(`not a valid link: ${hash}`);
      return;
    }
    if (!state.me) await loadMe();
    if (!state.key || location.hash !== hash) return; // refused, or another page was asked for meanwhile
    showApp();
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.page === hit.r.page) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const view = openView(hit.r.page);
    try {
      await hit.r.render(view, ...args);
    } catch (err) {
      report(err, "view");
    }
  }

  const seriesHref = (tenant, group, id) => `#/series/${enc(tenant)}/${enc(group)}/${enc(id)}`;

  // ------------------------------------------------------------------------------------------
  // overview: health, models (served version, alarm rate, drift), recent alerts

  function renderOverview(view) {
    const health = h("section", { class: "panel", id: "health" }, h("h2", { text: "Health" }));
    const models = h("section", { class: "panel", id: "overview-models" }, h("h2", { text: "Models" }));
    const alerts = h("section", { class: "panel", id: "recent-alerts" }, h("h2", { text: "Recent alerts" }));
    view.root.append(h("h1", { text: "Overview" }), health, h("div", { class: "columns" }, models, alerts));
    const opened = new Set(); // health details the reader unfolded stay unfolded across polls

    poll(view, async () => {
      const results = await Promise.allSettled([
        api("/healthz", { signal: view.signal }),
        api("/v1/models", { signal: view.signal }),
        api("/v1/alerts?limit=20", { signal: view.signal }),
      ]);
      const [hz, md, al] = results;
      const hzBody = hz.status === "fulfilled" ? hz.value : hz.reason && hz.reason.body;
      if (hzBody && hzBody.status) fill(health, healthPanel(hzBody, opened));
      if (md.status === "fulfilled") fill(models, overviewModels(md.value || {}));
      if (al.status === "fulfilled") fill(alerts, alertsPanel((al.value || {}).alerts || []));
      const failed = results.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
    }, POLL_MS).run();
  }

  function healthPanel(hz, opened) {
    const status = String(hz.status);
    const problems = Array.isArray(hz.problems) ? hz.problems : [];
    const rest = Object.entries(hz).filter(([k]) => k !== "status" && k !== "problems");
    const details = rest.map(([k, v]) => {
      const shown = value(v);
      if (shown instanceof HTMLDetailsElement) {
        shown.open = opened.has(k);
        shown.addEventListener("toggle", () => (shown.open ? opened.add(k) : opened.delete(k)));
      }
      return [h("dt", { text: k }), h("dd", {}, shown)];
    });
    return [
      h("h2", {}, "Health ", badge(status, tone(status))),
      problems.length ? h("ul", { class: "problems" }, problems.map((p) => h("li", { text: p }))) : null,
      h("dl", { class: "kv", id: "health-details" }, details),
    ];
  }

  /** The largest PSI of a model's drift report: {feature: psi} or {feature: {psi, ...}}. */
  function maxPsi(drift) {
    let best = null;
    for (const [feature, v] of Object.entries(drift || {})) {
      const psi = finite(typeof v === "number" ? v : v && v.psi);
      if (psi !== null && (best === null || psi > best.psi)) best = { feature, psi };
    }
    return best;
  }

  function alarmRate(mon) {
    if (!mon) return null;
    const fb = mon.feedback || {};
    return finite(mon.alarm_rate) ?? finite((fb.window || {}).alarm_rate) ?? finite((fb.total || {}).alarm_rate);
  }

  const psiTone = (psi) => (psi >= 0.25 ? "tone-critical" : psi >= 0.1 ? "tone-warning" : "tone-ok");

  function modelNames(md) {
    const monitoring = md.monitoring || {};
    const names = new Set([
      ...(md.models || []).map((m) => m.name),
      ...Object.keys(md.serving || {}),
      ...Object.keys(monitoring).filter((n) => n !== "error" && monitoring[n] && typeof monitoring[n] === "object"),
    ]);
    return [...names].filter(Boolean).sort();
  }

  function overviewModels(md) {
    const serving = md.serving || {};
    const monitoring = md.monitoring || {};
    const rows = modelNames(md).map((name) => {
      const mon = monitoring[name];
      const drift = maxPsi(mon && mon.drift);
      return h("tr", { dataset: { model: name } },
        h("td", {}, h("a", { href: "#/models", text: name })),
        h("td", { class: "num", text: serving[name] ?? "—" }),
        h("td", { class: "num", text: num(alarmRate(mon)) }),
        h("td", { class: "num" }, drift
          ? h("span", { class: psiTone(drift.psi), title: `largest PSI: feature ${drift.feature}` },
            `${num(drift.psi, 3)} (${drift.feature})`)
          : "—"));
    });
    return [
      h("h2", { text: "Models" }),
      typeof monitoring.error === "string" ? h("p", { class: "muted", text: monitoring.error }) : null,
      h("table", { class: "data" }, thead("model", "served version", "alarm rate", "drift (max PSI)"),
        h("tbody", {}, rows.length ? rows : emptyRow(4, "no models registered"))),
    ];
  }

  function alertsPanel(alerts) {
    const rows = alerts.map((a) => {
      const group = String(a.model || "").split(".")[1];
      const series = a.tenant && group && a.series
        ? h("a", { href: seriesHref(a.tenant, group, a.series), text: a.series })
        : String(a.series ?? "—");
      return h("tr", {},
        h("td", { text: when(a.starts_at) }),
        h("td", {}, badge(a.state, tone(a.state))),
        h("td", {}, badge(a.severity, tone(a.severity))),
        h("td", { text: a.tenant ?? "—" }),
        h("td", {}, series),
        h("td", { text: a.model ?? "—" }),
        h("td", { text: a.summary ?? "" }),
        h("td", { text: when(a.ends_at) }));
    });
    return [
      h("h2", { text: "Recent alerts" }),
      h("table", { class: "data", id: "alerts-table" },
        thead("started", "state", "severity", "tenant", "series", "model", "summary", "ended"),
        h("tbody", {}, rows.length ? rows : emptyRow(8, "no alerts"))),
    ];
  }

  // ------------------------------------------------------------------------------------------
  // series list

  function renderSeriesList(view) {
    const input = h("input", {
      id: "series-match", type: "search", value: state.match, autocomplete: "off", spellcheck: "false",
      placeholder: "part of an id, group or tenant",
    });
    const form = h("form", { role: "search", class: "toolbar" },
      h("label", { for: "series-match", text: "Search series" }), input);
    const count = h("p", { class: "muted", id: "series-count" });
    const tbody = h("tbody");
    view.root.append(h("h1", { text: "Series" }), form, count,
      h("table", { class: "data", id: "series-table" },
        thead("id", "tenant", "group", "model", "version", "points", "last score", "alarms", "last point"), tbody));

    const poller = poll(view, async () => {
      const q = new URLSearchParams({ match: state.match, limit: "100" });
      const data = await api(`/v1/series?${q}`, { signal: view.signal });
      const series = (data && data.series) || [];
      count.textContent = `${series.length} series${series.length >= 100 ? " (the first 100)" : ""}`;
      fill(tbody, series.length ? series.map(seriesRow) : emptyRow(9, "no series match"));
    }, POLL_MS);

    let debounce = null;
    input.addEventListener("input", () => {
      state.match = input.value.trim();
      clearTimeout(debounce);
      debounce = setTimeout(() => poller.run(), 300);
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      clearTimeout(debounce);
      poller.run();
    });
    view.cleanups.push(() => clearTimeout(debounce));
    poller.run();
  }

  function seriesRow(s) {
    return h("tr", { dataset: { id: s.id } },
      h("td", {}, h("a", { href: seriesHref(s.tenant, s.group, s.id), text: s.id })),
      h("td", { text: s.tenant }),
      h("td", { text: s.group }),
      h("td", { text: s.model ?? "—" }),
      h("td", { class: "num", text: s.version ?? "—" }),
      h("td", { class: "num", text: s.points ?? "—" }),
      h("td", { class: "num", text: num(s.last_score) }),
      h("td", { class: `num ${s.alarms ? "tone-critical" : ""}`, text: s.alarms ?? 0 }),
      h("td", { text: when(s.last_ts) }));
  }

  // ------------------------------------------------------------------------------------------
  // one series: value and score charts (synced), alarms with feedback

  async function renderSeries(view, tenant, group, id) {
    const meta = h("p", { class: "muted", id: "series-meta", text: `${tenant} / ${group}` });
    const reload = h("button", { type: "button", id: "series-reload", text: "reload" });
    const box = h("div", { id: "series-chart", class: "charts" });
    const counts = h("p", { id: "feedback-counts", class: "muted", "aria-live": "polite" });
    const tbody = h("tbody");
    const columns = ["time", "value", "expected", "score", "severity"];
    if (mayLabel()) columns.push("feedback");
    view.root.append(
      h("p", {}, h("a", { href: "#/series", text: "← all series" })),
      h("div", { class: "page-head" }, h("h1", {}, "Series ", h("code", { text: id })), reload),
      meta, box,
      h("h2", { text: "Alarms" }), counts,
      h("table", { class: "data", id: "alarms" }, thead(...columns), tbody));

    let charts = [];
    const destroy = () => {
      for (const c of charts) c.destroy();
      charts = [];
    };
    let resizeTimer = null;
    const onResize = () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        const width = chartWidth(box);
        for (const c of charts) c.setSize({ width, height: c.height });
      }, 150);
    };
    window.addEventListener("resize", onResize);
    view.cleanups.push(() => {
      window.removeEventListener("resize", onResize);
      clearTimeout(resizeTimer);
      destroy();
    });

    const where = { id, tenant, group };
    async function load() {
      const q = new URLSearchParams({ tenant, group, limit: String(POINTS_LIMIT) });
      const data = await api(`/v1/series/${enc(id)}/points?${q}`, { signal: view.signal });
      const arrived = performance.now();
      const d = seriesData((data && data.points) || []);
      meta.textContent = `${data.tenant ?? tenant} / ${data.group ?? group} · model ${data.model ?? "—"} ` +
        `v${data.version ?? "—"} · ${d.n} points · ${d.alarms.length} alarms`;
      destroy();
      if (typeof window.uPlot !== "function") throw new Error("the chart library (vendor/uPlot.iife.min.js) did not load");
      let drawn = Promise.resolve();
      if (d.n) ({ charts, drawn } = drawCharts(box, d, finite(data.threshold), `series:${tenant}/${group}/${id}`));
      else fill(box, h("p", { class: "muted", text: "no points kept for this series" }));
      await drawn;
      if (view.signal.aborted) return;
      const ms = performance.now() - arrived;
      document.body.dataset.drawMs = ms.toFixed(1);
      $("draw-time").textContent = `charts drawn in ${Math.round(ms)} ms (${d.n.toLocaleString()} points)`;
      fill(tbody, d.alarms.length
        ? d.alarms.map((pos) => alarmRow(view, d, pos, where, counts, () => zoomTo(charts, d, pos)))
        : emptyRow(columns.length, "no alarms"));
    }
    reload.addEventListener("click", () => load().catch((err) => report(err, "view")));
    await load();
  }

  /** The width inside the chart container's padding. */
  function chartWidth(box) {
    const style = getComputedStyle(box);
    const padding = (parseFloat(style.paddingLeft) || 0) + (parseFloat(style.paddingRight) || 0);
    return Math.max(320, Math.floor((box.clientWidth || 800) - padding));
  }

  /** Columns for uPlot from the answer's points, sorted by time. */
  function seriesData(points) {
    let pts = points;
    for (let i = 1; i < pts.length; i++) {
      if (pts[i].t < pts[i - 1].t) {
        pts = [...points].sort((a, b) => a.t - b.t);
        break;
      }
    }
    const n = pts.length;
    // points sent without timestamps have t null: the x axis is then the stream position
    const timeAxis = pts.every((p) => typeof p.t === "number");
    const cols = {};
    for (const k of ["t", "value", "expected", "lo", "hi", "alarm", "score"]) cols[k] = new Array(n);
    const families = new Set();
    for (const p of pts) if (p.detectors) for (const f of Object.keys(p.detectors)) families.add(f);
    const members = new Map([...families].sort().map((f) => [f, new Array(n)]));
    const alarms = [];
    let hasExpected = false;
    let hasBand = false;
    for (let i = 0; i < n; i++) {
      const p = pts[i];
      const band = Array.isArray(p.band) ? p.band : null;
      cols.t[i] = timeAxis ? p.t : (p.index ?? i);
      cols.value[i] = finite(p.value);
      cols.expected[i] = finite(p.expected);
      cols.lo[i] = band ? finite(band[0]) : null;
      cols.hi[i] = band ? finite(band[1]) : null;
      cols.score[i] = finite(p.score);
      cols.alarm[i] = p.alarm ? cols.value[i] ?? cols.expected[i] : null;
      if (p.alarm) alarms.push(i);
      hasExpected = hasExpected || cols.expected[i] !== null;
      hasBand = hasBand || cols.lo[i] !== null;
      for (const [f, arr] of members) arr[i] = p.detectors ? finite(p.detectors[f]) : null;
    }
    return { pts, n, cols, members, alarms, hasExpected, hasBand, timeAxis };
  }

  /** Two uPlot charts sharing the x cursor and zoom (drag on x; double-click resets): value with
   *  the expected line, band and alarm markers; the ensemble score, its members and the threshold.
   *  `drawn` resolves once both have drawn. */
  function drawCharts(box, d, threshold, key) {
    const valueBox = h("div", { class: "chart", id: "chart-value", role: "img", "aria-label": "values, expected band and alarms" });
    const scoreBox = h("div", { class: "chart", id: "chart-score", role: "img", "aria-label": "anomaly scores" });
    fill(box, valueBox, scoreBox);
    const width = chartWidth(box);
    const charts = [];
    let left = 2;
    let resolve;
    const drawn = new Promise((r) => (resolve = r));
    const firstDraw = () => {
      let seen = false;
      return () => {
        if (!seen) {
          seen = true;
          if (--left === 0) resolve();
        }
      };
    };
    let syncing = false;
    const syncX = (u, scale) => {
      if (scale !== "x" || syncing) return;
      syncing = true;
      try {
        for (const other of charts) if (other !== u) other.setScale("x", { min: u.scales.x.min, max: u.scales.x.max });
      } finally {
        syncing = false;
      }
    };
    const options = (title, height, series, extra) => ({
      title, width, height, series, ...extra,
      cursor: { sync: { key, setSeries: false }, drag: { x: true, y: false } },
      scales: { x: { time: d.timeAxis } },
      hooks: { draw: [firstDraw()], setScale: [syncX] },
    });

    const vSeries = [{}, { label: "value", stroke: "#0969da", width: 1 }];
    const vData = [d.cols.t, d.cols.value];
    const bands = [];
    if (d.hasExpected) {
      vSeries.push({ label: "expected", stroke: "#57606a", width: 1, dash: [5, 4] });
      vData.push(d.cols.expected);
    }
    if (d.hasBand) {
      const hi = vSeries.length;
      vSeries.push({ label: "band high", stroke: "rgba(87,96,106,0.35)", width: 1 },
        { label: "band low", stroke: "rgba(87,96,106,0.35)", width: 1 });
      vData.push(d.cols.hi, d.cols.lo);
      bands.push({ series: [hi, hi + 1], fill: "rgba(87,96,106,0.14)" });
    }
    vSeries.push({
      label: "alarm", stroke: RED, fill: RED, paths: () => null,
      points: { show: true, size: 8, width: 1, stroke: RED, fill: RED, space: 0 },
    });
    vData.push(d.cols.alarm);
    charts.push(new window.uPlot(options("value", 260, vSeries, { bands }), vData, valueBox));

    const sSeries = [{}, { label: "score", stroke: "#24292f", width: 1.5 }];
    const sData = [d.cols.t, d.cols.score];
    let c = 0;
    for (const [family, arr] of d.members) {
      sSeries.push({ label: family, stroke: PALETTE[c++ % PALETTE.length], width: 1 });
      sData.push(arr);
    }
    if (threshold !== null) {
      sSeries.push({ label: "threshold", stroke: RED, width: 1, dash: [6, 4] });
      sData.push(new Array(d.n).fill(threshold));
    }
    charts.push(new window.uPlot(options("score", 200, sSeries, {}), sData, scoreBox));
    return { charts, drawn };
  }

  /** Zooms both charts (the x zoom is shared) around the point at position `pos`. */
  function zoomTo(charts, d, pos) {
    if (!charts.length) return;
    const t = d.cols.t;
    const span = 100;
    charts[0].setScale("x", { min: t[Math.max(0, pos - span)], max: t[Math.min(d.n - 1, pos + span)] });
  }

  function alarmRow(view, d, pos, where, counts, zoom) {
    const p = d.pts[pos];
    const index = Number.isInteger(p.index) ? p.index : pos;
    const row = h("tr", { dataset: { index: String(index) } },
      h("td", {}, h("button", { type: "button", class: "link", title: "zoom the charts here", onclick: zoom, text: when(p.t) })),
      h("td", { class: "num", text: num(p.value, 6) }),
      h("td", { class: "num", text: num(p.expected, 6) }),
      h("td", { class: "num", text: num(p.score) }),
      h("td", {}, badge(p.severity, tone(p.severity))));
    if (mayLabel()) {
      const done = h("span", { class: "muted label-done" });
      const buttons = [["false_alarm", "false alarm"], ["true_anomaly", "true anomaly"]].map(([label, text]) =>
        h("button", {
          type: "button", class: `feedback fb-${label}`, dataset: { label }, text,
          title: `record point ${index} as a ${text}`,
          onclick: () => sendFeedback(view, { ...where, label, indices: [index] }, row, buttons, done, counts),
        }));
      row.append(h("td", { class: "actions" }, buttons, done));
    }
    return row;
  }

  async function sendFeedback(view, body, row, buttons, done, counts) {
    for (const b of buttons) b.disabled = true;
    try {
      const answer = await api("/v1/feedback", { method: "POST", body, signal: view.signal });
      row.dataset.label = body.label;
      done.textContent = `recorded: ${body.label.replace("_", " ")}`;
      showCounts(counts, answer && answer.counts);
    } catch (err) {
      report(err, "action");
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }

  function showCounts(el, counts) {
    if (!counts || typeof counts !== "object") {
      el.textContent = "feedback recorded";
      return;
    }
    fill(el, "Feedback on this model: ", Object.entries(counts).map(([label, n], i) =>
      [i ? " · " : "", h("span", { dataset: { label } }, `${label}: `, h("strong", { text: n }))]));
  }

  // ------------------------------------------------------------------------------------------
  // models: versions, aliases, served version, history, controller; promote / rollback / review

  const ACTIONS = [
    { kind: "promote", text: "promote challenger", body: { reason: "from the console" } },
    { kind: "rollback", text: "rollback", body: { reason: "from the console" } },
    { kind: "review", text: "review challenger", body: undefined },
  ];

  function renderModels(view) {
    const list = h("div", { id: "models" }, h("p", { class: "muted", text: "loading…" }));
    const reload = h("button", { type: "button", id: "models-reload", text: "reload" });
    view.root.append(h("div", { class: "page-head" }, h("h1", { text: "Models" }), reload), list);
    const ctx = { view, opened: new Set(), messages: new Map(), controller: null, load: null };

    ctx.load = async () => {
      const [md, ctl] = await Promise.allSettled([
        api("/v1/models", { signal: view.signal }),
        api("/v1/controller", { signal: view.signal }),
      ]);
      if (ctl.status === "fulfilled") ctx.controller = ctl.value;
      if (md.status === "rejected") throw md.reason;
      const models = md.value || {};
      const versions = versionsByModel(models);
      fill(list, versions.size
        ? [...versions].map(([name, vs]) => modelSection(ctx, name, vs, (models.serving || {})[name]))
        : h("p", { class: "muted", text: "no models registered" }));
      if (ctl.status === "rejected") throw ctl.reason;
    };
    reload.addEventListener("click", () => ctx.load().catch((err) => report(err, "view")));
    return ctx.load();
  }

  function versionsByModel(md) {
    const out = new Map(modelNames({ models: md.models, serving: md.serving }).map((n) => [n, []]));
    for (const v of md.models || []) if (out.has(v.name)) out.get(v.name).push(v);
    for (const vs of out.values()) vs.sort((a, b) => (b.version ?? 0) - (a.version ?? 0));
    return out;
  }

  function modelSection(ctx, name, versions, served) {
    const actions = mayOperate()
      ? h("div", { class: "actions" }, ACTIONS.map((a) => h("button", {
        type: "button", id: `${a.kind}-${name}`, text: a.text, dataset: { action: a.kind },
        onclick: (e) => modelAction(ctx, name, a, e.currentTarget),
      })))
      : null;
    const body = h("div", { class: "details-body" });
    const details = h("details", { class: "model-details", id: `details-${name}` },
      h("summary", { text: "history and controller" }), body);
    details.addEventListener("toggle", () => {
      if (details.open) {
        ctx.opened.add(name);
        loadHistory(ctx, name, body).catch((err) => report(err, "view"));
      } else {
        ctx.opened.delete(name);
      }
    });
    if (ctx.opened.has(name)) details.open = true; // reopened: "toggle" loads it again
    return h("section", { class: "panel model", dataset: { model: name } },
      h("div", { class: "model-head" },
        h("h2", { text: name }),
        h("span", { class: "served" }, "served version ", h("strong", { id: `served-${name}`, text: served ?? "—" })),
        actions),
      h("p", { class: "result", id: `result-${name}`, role: "status", text: ctx.messages.get(name) || "" }),
      versionsTable(versions, served),
      details);
  }

  function versionsTable(versions, served) {
    const rows = versions.map((v) => h("tr", { class: v.version === served ? "serving" : null },
      h("td", { class: "num", text: v.version }),
      h("td", {}, (v.aliases || []).map((a) => badge(a, a === "champion" ? "tone-ok" : "tone-neutral"))),
      h("td", { text: v.status ?? (v.version === served ? "serving" : "—") }),
      h("td", { text: when(v.created) }),
      h("td", {}, v.metrics && Object.keys(v.metrics).length ? value(v.metrics) : "—")));
    return h("table", { class: "data versions" }, thead("version", "aliases", "status", "created", "metrics"),
      h("tbody", {}, rows.length ? rows : emptyRow(5, "no versions")));
  }

  async function modelAction(ctx, name, action, button) {
    const buttons = button.parentElement.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    const say = (text) => {
      ctx.messages.set(name, text);
      const el = document.getElementById(`result-${name}`);
      if (el) el.textContent = text;
    };
    say(`${action.text}…`);
    let answer;
    try {
      answer = await api(`/v1/models/${enc(name)}/${action.kind}`,
        { method: "POST", body: action.body, signal: ctx.view.signal });
    } catch (err) {
      say(`${action.text}: failed`);
      report(err, "action");
      for (const b of buttons) b.disabled = false;
      return;
    }
    clearError("action");
    say(`${action.text}: ${summary(answer)}`);
    try {
      await ctx.load(); // the sections are rebuilt: the served version is the new one
    } catch (err) {
      report(err, "view");
      for (const b of buttons) b.disabled = false;
    }
  }

  /** A line about an action's answer: its scalar keys that say what happened. */
  function summary(answer) {
    if (!answer || typeof answer !== "object") return "done";
    const keys = ["message", "status", "result", "decision", "action", "version", "from", "to", "serving", "reason"];
    const parts = keys.filter((k) => answer[k] !== null && answer[k] !== undefined && typeof answer[k] !== "object")
      .map((k) => `${k} ${answer[k]}`);
    return parts.length ? parts.join(", ") : "done";
  }

  async function loadHistory(ctx, name, body) {
    fill(body, h("p", { class: "muted", text: "loading…" }));
    const data = await api(`/v1/models/${enc(name)}/history?limit=${HISTORY_LIMIT}`, { signal: ctx.view.signal });
    fill(body, h("h3", { text: "History" }), historyTable((data && data.events) || []),
      controllerPart(name, ctx.controller));
  }

  const HISTORY_COLUMNS = ["time", "event", "version", "actor", "reason"];

  function historyTable(events) {
    const rows = events.map((e) => {
      const more = Object.fromEntries(Object.entries(e).filter(([k]) => !HISTORY_COLUMNS.includes(k)));
      return h("tr", { dataset: { event: e.event ?? "" } },
        h("td", { text: when(e.time) }),
        h("td", {}, badge(e.event, tone(/REJECT|FAIL/i.test(e.event || "") ? "warning" : ""))),
        h("td", { class: "num", text: e.version ?? "—" }),
        h("td", { text: e.actor ?? "—" }),
        h("td", { text: e.reason ?? "" }),
        h("td", {}, Object.keys(more).length ? value(more) : ""));
    });
    return h("table", { class: "data history" }, thead(...HISTORY_COLUMNS, "details"),
      h("tbody", {}, rows.length ? rows : emptyRow(6, "no events")));
  }

  /** The controller's view of one model: what it serves, its reviews and switches. */
  function controllerPart(name, ctl) {
    if (!ctl) return [h("p", { class: "muted", text: "the controller's status is not available" })];
    const mine = (list) => (Array.isArray(list) ? list : []).filter((r) => r && (r.name === name || r.model === name));
    const serving = ctl.serving && typeof ctl.serving === "object" ? ctl.serving[name] : undefined;
    return [
      h("h3", { text: "Controller" }),
      h("dl", { class: "kv" }, h("dt", { text: "serving" }), h("dd", {}, value(serving))),
      h("h4", { text: "Reviews" }), recordsTable(mine(ctl.reviews)),
      h("h4", { text: "Switches" }), recordsTable(mine(ctl.switches)),
    ];
  }

  function recordsTable(records) {
    if (!records.length) return h("p", { class: "muted", text: "none" });
    const keys = [...new Set(records.flatMap((r) => Object.keys(r)))].filter((k) => k !== "name" && k !== "model");
    const cell = (k, v) => (/^(time|at|started|ended|created|since)$|_at$/.test(k) && v !== null && typeof v !== "object"
      ? when(v) : value(v));
    return h("table", { class: "data" }, thead(...keys),
      h("tbody", {}, records.map((r) => h("tr", {}, keys.map((k) => h("td", {}, cell(k, r[k])))))));
  }

  // ------------------------------------------------------------------------------------------
  // jobs: start (train | tune), list, the open job's progress and log, cancel

  function renderJobs(view) {
    const ctx = { view, jobs: [], openId: null, shownState: null, list: null, watch: null };
    const tbody = h("tbody");
    const detail = jobDetailPanel();
    ctx.detail = detail;
    view.root.append(
      h("h1", { text: "Jobs" }),
      mayOperate() ? jobForm(ctx) : h("p", { class: "muted", text: "Starting and cancelling jobs needs the operator or admin role." }),
      h("h2", { text: "Recent jobs" }),
      h("table", { class: "data", id: "jobs-table" },
        thead("job", "kind", "family", "group", "state", "progress", "started", "ended", "result", ""), tbody),
      detail.root);

    ctx.renderRows = () => fill(tbody, ctx.jobs.length
      ? ctx.jobs.map((job) => jobRow(ctx, job))
      : emptyRow(10, "no jobs"));
    ctx.list = poll(view, async () => {
      const data = await api("/v1/jobs", { signal: view.signal });
      ctx.jobs = (data && data.jobs) || [];
      ctx.renderRows();
      // the open job changed state since its detail was drawn (e.g. it ended): its detail follows
      const open = ctx.openId && ctx.jobs.find((j) => j.id === ctx.openId);
      if (open && open.state !== ctx.shownState) ctx.watch.run();
    }, POLL_MS);
    ctx.watch = poll(view, async () => {
      if (!ctx.openId) return false;
      const job = await api(`/v1/jobs/${enc(ctx.openId)}`, { signal: view.signal });
      if (!job || job.id !== ctx.openId) return false; // another job was opened meanwhile
      ctx.shownState = job.state;
      showJob(ctx, job);
      const i = ctx.jobs.findIndex((j) => j.id === job.id);
      if (i >= 0) ctx.jobs[i] = { ...ctx.jobs[i], ...job };
      else ctx.jobs.unshift(job);
      ctx.renderRows();
      return ACTIVE_JOB.has(job.state); // poll again only while it runs
    }, JOB_POLL_MS);
    ctx.list.run();
  }

  function openJob(ctx, id) {
    ctx.openId = id;
    ctx.shownState = null;
    ctx.detail.root.hidden = false;
    ctx.detail.title.textContent = id;
    ctx.detail.logs.textContent = "loading…";
    ctx.renderRows();
    ctx.watch.run();
  }

  function progressOf(p) {
    if (!p || typeof p !== "object") return "—";
    const total = finite(p.total);
    const text = `${p.done ?? 0}${total !== null ? ` / ${total}` : ""} ${p.unit || ""}`.trim();
    if (total === null || total <= 0) return text;
    return h("span", { class: "progress" },
      h("progress", { value: Math.min(p.done ?? 0, total), max: total, "aria-label": text }), ` ${text}`);
  }

  function jobResult(job) {
    if (job.state === "succeeded" && job.version) {
      return h("a", { href: "#/models", class: "version-link", text: `${job.version.name} v${job.version.version}` });
    }
    if (job.error) return h("span", { class: "tone-critical job-error", title: job.error, text: job.error });
    return "—";
  }

  function jobRow(ctx, job) {
    const cancel = ACTIVE_JOB.has(job.state) && mayOperate()
      ? h("button", {
        type: "button", id: `cancel-${job.id}`, class: "danger", text: "cancel",
        onclick: (e) => cancelJob(ctx, job.id, e.currentTarget),
      })
      : null;
    return h("tr", { id: `job-${job.id}`, class: ctx.openId === job.id ? "selected" : null },
      h("td", {}, h("button", {
        type: "button", class: "link", text: job.id, title: "show the job's progress and log",
        onclick: () => openJob(ctx, job.id),
      })),
      h("td", { text: job.kind ?? "—" }),
      h("td", { text: job.family ?? "—" }),
      h("td", { text: job.group ?? "—" }),
      h("td", { class: `state ${tone(job.state)}`, text: job.state ?? "—" }),
      h("td", {}, progressOf(job.progress)),
      h("td", { text: when(job.started) }),
      h("td", { text: when(job.ended) }),
      h("td", {}, jobResult(job)),
      h("td", { class: "actions" }, cancel));
  }

  function jobDetailPanel() {
    const title = h("code");
    const facts = h("dl", { class: "kv" });
    const logs = h("pre", { id: "job-logs", class: "logs", tabindex: "0", "aria-label": "job log (tail)" });
    const root = h("section", { class: "panel", id: "job-detail", hidden: true },
      h("h2", {}, "Job ", title), facts, h("h3", { text: "Log (tail)" }), logs);
    return { root, title, facts, logs };
  }

  function showJob(ctx, job) {
    const { facts, logs } = ctx.detail;
    const rows = [
      ["state", h("span", { class: `state ${tone(job.state)}`, text: job.state })],
      ["kind", job.kind], ["family", job.family], ["group", job.group],
      ["progress", progressOf(job.progress)],
      ["started", when(job.started)], ["ended", when(job.ended)],
      ["result", jobResult(job)],
    ];
    fill(facts, rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v ?? "—")]));
    const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    const lines = Array.isArray(job.logs) ? job.logs : [];
    logs.textContent = lines.length ? lines.join("\n") : "no log lines yet";
    if (atEnd) logs.scrollTop = logs.scrollHeight;
  }

  async function cancelJob(ctx, id, button) {
    button.disabled = true;
    try {
      await api(`/v1/jobs/${enc(id)}/cancel`, { method: "POST", signal: ctx.view.signal });
    } catch (err) {
      report(err, "action");
      button.disabled = false;
      return;
    }
    ctx.list.run();
    if (ctx.openId === id) ctx.watch.run();
  }

  function field(id, label, control, hint) {
    return h("div", { class: "field" }, h("label", { for: id, text: label }), control,
      hint ? h("small", { class: "muted", id: `${id}-hint`, text: hint }) : null);
  }

  function jobForm(ctx) {
    const kind = h("select", { id: "job-kind", name: "kind" },
      h("option", { value: "train", text: "train" }), h("option", { value: "tune", text: "tune" }));
    const family = h("select", { id: "job-family", name: "family", required: true },
      h("option", { value: "", text: "loading…" }));
    const group = h("input", { id: "job-group", name: "group", value: "default", required: true, spellcheck: "false" });
    const source = h("select", { id: "job-source", name: "source" },
      h("option", { value: "synthetic", text: "synthetic metric" }),
      h("option", { value: "prometheus", text: "Prometheus selector" }));
    const data = h("input", { id: "job-data", name: "data", value: "cpu_pct", required: true, spellcheck: "false" });
    const range = h("input", { id: "job-range", name: "range", value: "7d", spellcheck: "false" });
    const rangeField = field("job-range", "range", range);
    rangeField.hidden = true;
    const params = h("textarea", { id: "job-params", name: "params", rows: "4", spellcheck: "false" });
    params.value = "{}";
    const defaults = h("pre", { class: "defaults", id: "job-defaults" });
    const startButton = h("button", { type: "submit", id: "job-start", class: "primary", text: "start job" });
    const form = h("form", { id: "job-form", class: "panel form-grid", "aria-label": "start a job" },
      field("job-kind", "kind", kind),
      field("job-family", "family", family),
      field("job-group", "group", group),
      field("job-source", "data source", source),
      field("job-data", "synthetic metric", data),
      rangeField,
      h("div", { class: "field wide" }, h("label", { for: "job-params", text: "params (JSON object)" }), params,
        h("details", {}, h("summary", { text: "the family's default parameters" }), defaults)),
      h("div", { class: "field wide" }, startButton));

    let families = {};
    const showDefaults = () => {
      defaults.textContent = JSON.stringify(families[family.value] ?? {}, null, 2);
    };
    family.addEventListener("change", showDefaults);
    source.addEventListener("change", () => {
      const prom = source.value === "prometheus";
      rangeField.hidden = !prom;
      form.querySelector('label[for="job-data"]').textContent = prom ? "Prometheus selector" : "synthetic metric";
      if (prom && data.value === "cpu_pct") data.value = "";
      if (!prom && !data.value.trim()) data.value = "cpu_pct";
      data.placeholder = prom ? 'node_load1{instance="db-1"}' : "cpu_pct";
    });
    api("/v1/detectors", { signal: ctx.view.signal }).then((answer) => {
      families = (answer && answer.families) || {};
      const deployed = new Set((answer && answer.deployed) || []);
      const names = Object.keys(families).sort();
      fill(family, names.map((n) =>
        h("option", { value: n, text: deployed.has(n) ? `${n} (deployed)` : n })));
      showDefaults();
    }).catch((err) => report(err, "action"));

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      let p;
      try {
        p = params.value.trim() ? JSON.parse(params.value) : {};
      } catch (err) {
        showError(`params: not valid JSON (${err.message})`);
        return;
      }
      if (!p || typeof p !== "object" || Array.isArray(p)) {
        showError("params: a JSON object is expected, e.g. {\"max_epochs\": 5}");
        return;
      }
      const body = {
        kind: kind.value,
        family: family.value,
        group: group.value.trim(),
        data: source.value === "prometheus"
          ? { prometheus: data.value.trim(), range: range.value.trim() || "7d" }
          : { synthetic: data.value.trim() || "cpu_pct" },
        params: p,
      };
      startButton.disabled = true;
      try {
        const answer = await api("/v1/jobs", { method: "POST", body, signal: ctx.view.signal });
        clearError("action");
        ctx.list.run();
        if (answer && answer.id) openJob(ctx, answer.id);
      } catch (err) {
        report(err, "action");
      } finally {
        startButton.disabled = false;
      }
    });
    return form;
  }

  // ------------------------------------------------------------------------------------------
  // start

  function start() {
    $("error-dismiss").addEventListener("click", () => clearError());
    $("logout").addEventListener("click", () => signOut());
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("login-key").value.trim();
      if (key) signIn(key);
    });
    window.addEventListener("hashchange", () => {
      if (state.key) route();
    });
    state.key = readKey();
    if (state.key) signIn(state.key);
    else showLogin();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
