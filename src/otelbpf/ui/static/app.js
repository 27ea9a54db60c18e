// otelbpf local UI: one page per view, drawn from the JSON API; live views poll every 2 s.
"use strict";

const REFRESH_MS = 2000;
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function windowParam() { const w = $("#window").value; return w ? `window=${w}` : ""; }

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function rows(result) {  // [{column: value}]
  return result.rows.map((r) => Object.fromEntries(result.columns.map((c, i) => [c, r[i]])));
}

function shortTime(iso) { return iso ? String(iso).replace("T", " ").slice(0, 23) : ""; }

function table(result, options = {}) {
  if (!result.rows.length) return el("p", { class: "empty" }, options.empty || "no rows yet");
  const numeric = result.columns.map((_, i) => result.rows.every((r) => r[i] === null || typeof r[i] === "number"));
  const head = el("tr", {}, ...result.columns.map((c) => el("th", {}, c)));
  const body = result.rows.map((r) => el("tr", {}, ...r.map((v, i) => {
    const cell = options.cell && options.cell(result.columns[i], v, r);
    if (cell) return cell;
    const text = v === null ? "" : typeof v === "object" ? JSON.stringify(v) : v;
    return el("td", { class: numeric[i] ? "num" : result.columns[i] === "args" ? "args" : "" }, text);
  })));
  return el("table", { id: options.id || "" }, el("thead", {}, head), el("tbody", {}, ...body));
}

function section(title, id, content) {
  return el("section", { id }, el("h2", {}, title), content);
}

function exitBadge(p) {
  if (p.exited === null) return el("span", { class: "badge run" }, "running");
  const text = p.exit_signal ? `${p.exit_signal} (${p.exit_code})` : `exit ${p.exit_code}`;
  return el("span", { class: `badge ${p.exit_code === 0 ? "ok" : "bad"}` }, text);
}

// Processes whose parent is in the list hang under it; the others are roots.
function processTree(list) {
  const byPid = new Map(), children = new Map();
  for (const p of list) if (!byPid.has(p.pid) || p.started > byPid.get(p.pid).started) byPid.set(p.pid, p);
  const roots = [];
  for (const p of list) {
    const parent = byPid.get(p.parent_pid);
    if (parent && parent !== p) {
      if (!children.has(parent.exec_id)) children.set(parent.exec_id, []);
      children.get(parent.exec_id).push(p);
    } else roots.push(p);
  }
  const draw = (items, depth) => el("ul", { class: depth ? "tree" : "tree root" }, ...items.map((p) => el("li",
    { "data-pid": p.pid, "data-exit": p.exit_code === null ? "" : p.exit_code },
    el("span", { class: "proc-name" }, p.executable || "?"), " ",
    el("span", { class: "proc-pid" }, `pid ${p.pid} ← ${p.parent_pid ?? "?"}`), " ",
    exitBadge(p), " ",
    el("span", { class: "proc-time" }, `${shortTime(p.started)}${p.lifetime_s !== null ? `, ${p.lifetime_s.toFixed(3)} s` : ""}`),
    " ", el("span", { class: "proc-args" }, p.args || ""),
    depth < 32 && children.has(p.exec_id) ? draw(children.get(p.exec_id), depth + 1) : null)));
  return list.length ? draw(roots, 0) : el("p", { class: "empty" }, "no process events in this window");
}

function traceLink(column, value) {
  if (column !== "trace_id") return null;
  return el("td", {}, el("a", { class: "trace", href: `/trace/${value}` }, value.slice(0, 16)));
}

function waterfall(result) {
  const spans = rows(result);
  if (!spans.length) return el("p", { class: "empty" }, "no spans with this trace id");
  const total = Math.max(...spans.map((s) => s.offset_ms + s.duration_ms), 0.001);
  const depth = new Map();
  const ids = new Set(spans.map((s) => s.span_id));
  for (const s of spans) depth.set(s.span_id, ids.has(s.parent_span_id) ? (depth.get(s.parent_span_id) ?? 0) + 1 : 0);
  const body = spans.map((s) => {
    const bar = el("div", { class: s.status_code === "error" ? "bar error" : "bar" });
    bar.style.marginLeft = `${(100 * s.offset_ms) / total}%`;
    bar.style.width = `${(100 * s.duration_ms) / total}%`;
    const name = el("td", {}, `${"· ".repeat(depth.get(s.span_id))}${s.name}`);
    return el("tr", { "data-span": s.span_id }, name, el("td", {}, s.service), el("td", {}, s.kind),
      el("td", { class: "num" }, s.duration_ms), el("td", {}, s.status_code), el("td", { class: "bar-cell" }, bar));
  });
  const head = el("tr", {}, ...["span", "service", "kind", "ms", "status", "timeline"].map((c) => el("th", {}, c)));
  return el("table", { class: "waterfall", id: "trace-spans" }, el("thead", {}, head), el("tbody", {}, ...body));
}

const VIEWS = {
  async overview() {
    const [summary, top] = await Promise.all([api("/api/summary"), api(`/api/top?${windowParam()}`)]);
    return [section("Store", "summary", table(summary, { id: "summary-table" })),
      section("Top executables by execs", "top", table(top, { id: "top-table" }))];
  },
  async processes() {
    const [procs, events] = await Promise.all([api(`/api/processes?${windowParam()}`), api(`/api/events?limit=100&${windowParam()}`)]);
    return [section("Process tree (exec → exit)", "process-tree", processTree(rows(procs))),
      section("Recent process events", "events", table(events, { id: "events-table" }))];
  },
  async traces() {
    const [red, slow] = await Promise.all([api(`/api/red?${windowParam()}`), api(`/api/traces?${windowParam()}`)]);
    return [section("Requests, errors, duration (server spans)", "red", table(red, { id: "red-table", empty: "no server spans yet" })),
      section("Slowest traces", "traces", table(slow, { id: "traces-table", cell: traceLink, empty: "no traces yet: send OTLP traces to the agent's receiver" }))];
  },
  async trace(id) {
    return [section(`Trace ${id}`, "trace", waterfall(await api(`/api/trace?id=${encodeURIComponent(id)}`)))];
  },
  sql() {
    const input = el("textarea", { id: "sql-input", spellcheck: "false" }, "SELECT * FROM process_events ORDER BY time DESC LIMIT 20");
    const out = el("div", { id: "sql-result" });
    const run = async () => {
      out.replaceChildren(el("p", { class: "empty" }, "running…"));
      try {
        const result = await api("/api/query", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ sql: input.value }) });
        out.replaceChildren(table(result, { id: "sql-table" }));
      } catch (e) { out.replaceChildren(el("p", { class: "error-text" }, e.message)); }
    };
    const button = el("button", { id: "sql-run" }, "Run");
    button.addEventListener("click", run);
    return [section("SQL (read-only): tables spans, logs, metric_points, flows, service_edges, profile_samples; view process_events",
      "sql", el("div", {}, input, button, out))];
  },
};

function currentView() {
  const path = location.pathname;
  if (path.startsWith("/trace/")) return ["trace", decodeURIComponent(path.slice(7))];
  return [{ "/": "overview", "/processes": "processes", "/traces": "traces", "/sql": "sql" }[path] || "overview", null];
}

async function refresh() {
  const [name, arg] = currentView();
  try {
    const parts = await VIEWS[name](arg);
    $("#main").replaceChildren(...parts);
    $("#status").className = "status";
    $("#status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#status").className = "status error";
    $("#status").textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const [name] = currentView();
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.view === name || (name === "trace" && a.dataset.view === "traces")) a.classList.add("active");
  $("#window").addEventListener("change", refresh);
  refresh();
  if (name !== "sql" && name !== "trace") setInterval(refresh, REFRESH_MS);  // live views
});
