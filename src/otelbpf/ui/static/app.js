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
function processTree(list, security = new Map()) {
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
    exitBadge(p), " ", securityBadge(security.get(p.exec_id)),
    el("span", { class: "proc-time" }, `${shortTime(p.started)}${p.lifetime_s !== null ? `, ${p.lifetime_s.toFixed(3)} s` : ""}`),
    " ", el("span", { class: "proc-args" }, p.args || ""),
    depth < 32 && children.has(p.exec_id) ? draw(children.get(p.exec_id), depth + 1) : null)));
  return list.length ? draw(roots, 0) : el("p", { class: "empty" }, "no process events in this window");
}

// Security policy matches of one exec: a badge naming the policies, hung on its tree node.
function securityBadge(events) {
  if (!events || !events.length) return null;
  const policies = [...new Set(events.map((e) => e.policy))].join(", ");
  return el("span", { class: "badge bad security", "data-security": events.length,
    title: events.map((e) => `${e.policy}: ${e.syscall} ${e.argument ?? ""} (${e.action})`).join("\n") },
  `⚠ ${policies} ×${events.length}`, " ");
}

function bySecurityExec(result) {
  const map = new Map();
  for (const e of rows(result)) {
    if (!map.has(e.exec_id)) map.set(e.exec_id, []);
    map.get(e.exec_id).push(e);
  }
  return map;
}

// A RED row's route links to the slowest traces of that service and route.
function redLink(column, value, row) {
  if (column !== "route") return null;
  const q = new URLSearchParams({ service: row[0], route: value });
  return el("td", {}, el("a", { class: "route", href: `/traces?${q}` }, value));
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


// -- SVG helpers, service map, flame graph ----------------------------------------------
const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  return node;
}

function fmtBytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

function clip(text, chars) { return text.length > chars ? `${text.slice(0, Math.max(1, chars - 1))}…` : text; }

// Layered layout: a node sits one column right of the furthest client that calls it.
function serviceMap(result) {
  const edges = rows(result);
  if (!edges.length) return el("p", { class: "empty" }, "no connections in this window (the network sensor reports them)");
  const names = [...new Set(edges.flatMap((e) => [e.client, e.server]))].sort();
  const rank = new Map(names.map((n) => [n, 0]));
  for (let pass = 0; pass < names.length; pass++) {
    let changed = false;
    for (const e of edges) {
      const want = rank.get(e.client) + 1;
      if (e.client !== e.server && rank.get(e.server) < want && want < names.length) { rank.set(e.server, want); changed = true; }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of names) (columns[rank.get(n)] ||= []).push(n);
  const W = 210, H = 34, GAP_X = 170, GAP_Y = 30, PAD = 24;
  const pos = new Map();
  columns.forEach((col, c) => (col || []).forEach((n, r) => pos.set(n, { x: PAD + c * (W + GAP_X), y: PAD + r * (H + GAP_Y) })));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GAP_X + 160;
  const height = PAD * 2 + Math.max(...columns.map((c) => (c || []).length)) * (H + GAP_Y) - GAP_Y;
  const root = svg("svg", { id: "service-map", viewBox: `0 0 ${width} ${height + 40}`, width, height: height + 40 },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7180" }))));
  for (const e of edges) {
    const a = pos.get(e.client), b = pos.get(e.server);
    let d, lx, ly;
    if (e.client === e.server) {
      d = `M ${a.x + W - 30} ${a.y} C ${a.x + W - 30} ${a.y - 28}, ${a.x + W + 20} ${a.y - 28}, ${a.x + W} ${a.y + 8}`;
      lx = a.x + W + 14; ly = a.y - 8;
    } else if (b.x > a.x) {
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      d = `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`;
      lx = mx; ly = (y1 + y2) / 2 - 6;
    } else {  // back edge (a cycle): arc below the boxes
      const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y + H, low = Math.max(y1, y2) + 40;
      d = `M ${x1} ${y1} C ${x1} ${low}, ${x2} ${low}, ${x2} ${y2}`;
      lx = (x1 + x2) / 2; ly = low - 8;
    }
    const label = `${e.connections} conn · ${fmtBytes((e.bytes_sent || 0) + (e.bytes_received || 0))}${e.failed ? ` · ${e.failed} failed` : ""}`;
    root.append(svg("g", { class: e.failed ? "edge failed" : "edge", "data-client": e.client, "data-server": e.server,
      "data-connections": e.connections, "data-protocol": e.protocol },
      svg("title", {}, `${e.client} → ${e.server} (${e.protocol}, port ${e.ports ?? "?"}): ${e.connections} connections, ` +
        `${e.failed} failed, sent ${fmtBytes(e.bytes_sent)}, received ${fmtBytes(e.bytes_received)}`),
      svg("path", { d, "marker-end": "url(#arrow)" }),
      svg("text", { x: lx, y: ly, "text-anchor": e.client === e.server ? "start" : "middle" }, label)));
  }
  for (const n of names) {
    const p = pos.get(n);
    const external = n.includes(":") && !edges.some((e) => e.client === n);
    root.append(svg("g", { class: external ? "node external" : "node", "data-name": n },
      svg("title", {}, n), svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6 }),
      svg("text", { x: p.x + W / 2, y: p.y + H / 2 + 5, "text-anchor": "middle" }, clip(n, 28))));
  }
  return el("div", { class: "map-wrap" }, root);
}

// Flame graph (root on top): click a frame to zoom, search highlights and sums the matches,
// diff colours each frame by how its share changed from the previous window.
const flameState = { search: new URLSearchParams(location.search).get("search") || "", focus: [], diff: false, data: null };

function flameTree(result) {
  const root = { name: "all", value: 0, base: 0, children: new Map() };
  for (const [stack, n] of result.rows) {
    let node = root;
    node.value += n;
    for (const name of stack.split(";")) {
      if (!node.children.has(name)) node.children.set(name, { name, value: 0, base: 0, children: new Map() });
      node = node.children.get(name);
      node.value += n;
    }
  }
  return root;
}

function addBaseline(root, result) {
  let total = 0;
  for (const [stack, n] of result.rows) {
    total += n;
    let node = root;
    for (const name of stack.split(";")) { node = node.children.get(name); if (!node) break; node.base += n; }
  }
  root.base = total;
}

function hue(name) { let h = 0; for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0; return h; }

function frameColor(node, root, diff) {
  if (diff) {
    if (!root.base) return "#c8c8c8";
    const change = node.value / root.value - node.base / root.base;  // share of all samples
    const strength = Math.min(1, Math.abs(change) * 4);
    const light = 92 - Math.round(strength * 42);
    return change >= 0 ? `hsl(0, 75%, ${light}%)` : `hsl(215, 75%, ${light}%)`;
  }
  const h = hue(node.name);
  if (node.name.endsWith("_[k]")) return `hsl(${190 + (h % 30)}, 55%, ${62 + (h % 12)}%)`;
  return `hsl(${h % 55}, ${70 + (h % 20)}%, ${55 + (h % 15)}%)`;
}

function drawFlame(box, info) {
  const { root, diff } = flameState.data;
  const term = flameState.search.trim().toLowerCase();
  const WIDTH = 1200, ROW = 18;
  const frames = [];  // [node, path, x, w, depth]
  // Ancestors of the focus span the whole width; the focus subtree is scaled to it.
  let node = root, path = [], depth = 0;
  for (const name of flameState.focus) {
    const next = node.children.get(name);
    if (!next) break;
    frames.push([node, [...path], 0, WIDTH, depth++]);
    path = [...path, name];
    node = next;
  }
  const scale = WIDTH / Math.max(1, node.value);
  const lay = (n, p, x, d) => {
    frames.push([n, p, x, n.value * scale, d]);
    let cx = x;
    for (const child of [...n.children.values()].sort((a, b) => a.name.localeCompare(b.name))) {
      if (child.value * scale >= 0.3) lay(child, [...p, child.name], cx, d + 1);
      cx += child.value * scale;
    }
  };
  lay(node, path, 0, depth);
  const maxDepth = Math.max(...frames.map((f) => f[4])) + 1;
  const chart = svg("svg", { id: "flamegraph", viewBox: `0 0 ${WIDTH} ${maxDepth * ROW}`, width: "100%" });
  let matched = 0;
  const countMatches = (n, inside) => {
    const hit = term && n !== root && n.name.toLowerCase().includes(term);
    if (hit && !inside) matched += n.value;
    for (const c of n.children.values()) countMatches(c, inside || hit);
  };
  countMatches(root, false);
  for (const [n, p, x, w, d] of frames) {
    const hit = term && n !== root && n.name.toLowerCase().includes(term);
    const share = (100 * n.value) / Math.max(1, root.value);
    let tip = `${n.name}: ${n.value} samples (${share.toFixed(2)}%)`;
    if (diff && root.base) tip += `, baseline ${(100 * n.base / root.base).toFixed(2)}%`;
    const g = svg("g", { class: hit ? "frame match" : "frame", "data-name": n.name, "data-samples": n.value },
      svg("title", {}, tip),
      svg("rect", { x: x.toFixed(2), y: d * ROW, width: Math.max(0.5, w - 0.5).toFixed(2), height: ROW - 1,
        fill: hit ? "#b05fd0" : frameColor(n, root, diff) }));
    if (w > 28) g.append(svg("text", { x: (x + 3).toFixed(2), y: d * ROW + 13 }, clip(n.name, Math.floor((w - 6) / 7))));
    g.addEventListener("click", () => { flameState.focus = p; drawFlame(box, info); });
    chart.append(g);
  }
  box.replaceChildren(chart);
  const parts = [`${root.value} samples`];
  if (flameState.focus.length) parts.push(`zoomed to ${flameState.focus.join(" › ")}`);
  if (term) parts.push(`matched “${flameState.search}”: ${matched} samples (${((100 * matched) / Math.max(1, root.value)).toFixed(2)}%)`);
  if (diff) parts.push(root.base ? `diff against the previous window (${root.base} samples): red grew, blue shrank` : "no samples in the previous window to compare with");
  info.textContent = parts.join(" · ");
}

const VIEWS = {
  async overview() {
    const [summary, top] = await Promise.all([api("/api/summary"), api(`/api/top?${windowParam()}`)]);
    return [section("Store", "summary", table(summary, { id: "summary-table" })),
      section("Top executables by execs", "top", table(top, { id: "top-table" }))];
  },
  async processes() {
    const [procs, events, security] = await Promise.all([api(`/api/processes?${windowParam()}`),
      api(`/api/events?limit=100&${windowParam()}`), api(`/api/security?${windowParam()}`)]);
    return [section("Process tree (exec → exit, security policy matches)", "process-tree", processTree(rows(procs), bySecurityExec(security))),
      section("Security events (policy matches)", "security", table(security, { id: "security-table", empty: "no security policy matches in this window" })),
      section("Recent process events", "events", table(events, { id: "events-table" }))];
  },
  async traces() {
    const wanted = new URLSearchParams(location.search);
    const filter = new URLSearchParams();
    for (const k of ["service", "route"]) if (wanted.get(k)) filter.set(k, wanted.get(k));
    const [red, slow] = await Promise.all([api(`/api/red?${windowParam()}`), api(`/api/traces?${windowParam()}&${filter}`)]);
    const title = filter.toString() ? el("span", {}, `Slowest traces of ${filter.get("service") ?? ""} ${filter.get("route") ?? ""} `,
      el("a", { href: "/traces", id: "traces-all" }, "(all)")) : "Slowest traces";
    return [section("Requests, errors, duration (server spans; a route lists its slowest traces)", "red", table(red, { id: "red-table", cell: redLink, empty: "no server spans yet" })),
      section(title, "traces", table(slow, { id: "traces-table", cell: traceLink, empty: "no traces yet: send OTLP traces to the agent's receiver" }))];
  },
  async trace(id) {
    return [section(`Trace ${id}`, "trace", waterfall(await api(`/api/trace?id=${encodeURIComponent(id)}`)))];
  },
  async map() {
    const [edges, talkers] = await Promise.all([api(`/api/service_map?${windowParam()}`), api(`/api/talkers?${windowParam()}`)]);
    return [section("Service map (client → server, TCP connections and bytes)", "map", serviceMap(edges)),
      section("Edges", "edges", table(edges, { id: "edges-table", empty: "no edges yet" })),
      section("Top talkers by bytes", "talkers", table(talkers, { id: "talkers-table", empty: "no flows yet" }))];
  },
  async flame() {
    const w = $("#window").value;
    const current = await api(`/api/flame?${windowParam()}`);
    const root = flameTree(current);
    const diff = flameState.diff && !!w;
    if (diff) addBaseline(root, await api(`/api/flame?${windowParam()}&end_ago=${w}`));
    flameState.data = { root, diff };
    const search = el("input", { id: "flame-search", type: "search", placeholder: "search frames (regex-free, case-insensitive)", value: flameState.search });
    const reset = el("button", { id: "flame-reset" }, "Reset zoom");
    const diffBox = el("input", { id: "flame-diff", type: "checkbox" });
    diffBox.checked = flameState.diff;
    const info = el("p", { id: "flame-info", class: "flame-info" });
    const box = el("div", { id: "flame-box" });
    search.addEventListener("input", () => { flameState.search = search.value; drawFlame(box, info); });
    reset.addEventListener("click", () => { flameState.focus = []; drawFlame(box, info); });
    diffBox.addEventListener("change", () => { flameState.diff = diffBox.checked; refresh(); });
    const controls = el("div", { class: "flame-controls" }, search, reset,
      el("label", {}, diffBox, " diff against the previous window", w ? "" : " (pick a window)"));
    if (!current.rows.length) return [section("CPU flame graph", "flame", el("div", {}, controls,
      el("p", { class: "empty" }, "no profile samples in this window (the profile sensor stores one profile per interval)")))];
    drawFlame(box, info);
    return [section("CPU flame graph (all processes; click a frame to zoom)", "flame", el("div", {}, controls, info, box))];
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
  return [{ "/": "overview", "/processes": "processes", "/traces": "traces", "/map": "map", "/flame": "flame", "/sql": "sql" }[path] || "overview", null];
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
  if (!["sql", "trace", "flame"].includes(name)) setInterval(refresh, REFRESH_MS);  // live views
});
