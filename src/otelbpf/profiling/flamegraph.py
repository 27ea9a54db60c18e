"""Flame graphs from folded stacks: a self-contained interactive HTML page (click to zoom,
search with highlight and the matched share) and a static SVG (tooltips per frame).

A diff flame graph draws the newer profile and colours each frame by how its share of
samples changed from the baseline: red grew, blue shrank (as Brendan Gregg's difffolded).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass, field

from otelbpf.profiling.folded import KERNEL_SUFFIX

FRAME_HEIGHT = 18
SVG_WIDTH = 1200
MIN_SVG_WIDTH_PX = 0.5  # narrower frames are left out of the SVG (invisible anyway)


@dataclass(slots=True)
class Node:
    name: str
    value: int = 0  # samples in this frame and below
    baseline: float = 0.0  # diff only: the baseline's samples, scaled to this profile's total
    children: dict[str, Node] = field(default_factory=dict)

    def child(self, name: str) -> Node:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = Node(name)
        return node

    def depth(self) -> int:
        return 1 + max((c.depth() for c in self.children.values()), default=0)


def build_tree(folded: Counter[str], baseline: Counter[str] | None = None) -> Node:
    root = Node("all")
    for line, n in folded.items():
        node = root
        node.value += n
        for name in line.split(";"):
            node = node.child(name)
            node.value += n
    if baseline:
        scale = root.value / max(1, sum(baseline.values()))
        root.baseline = root.value
        for line, n in baseline.items():
            node = root
            for name in line.split(";"):
                child = node.children.get(name)
                if child is None:  # gone in the newer profile: nothing to draw it on
                    break
                node = child
                node.baseline += n * scale
    return root


def _to_json(node: Node, diff: bool) -> list:
    kids = [_to_json(c, diff) for c in sorted(node.children.values(), key=lambda c: c.name)]
    return [node.name, node.value, round(node.baseline, 2) if diff else None, kids]


def _colour(name: str, node: Node | None = None, total: int = 0, diff: bool = False) -> str:
    if diff and node is not None and total:
        change = (node.value - node.baseline) / total
        strength = min(1.0, abs(change) * 10)
        tone = int(255 - 160 * strength)
        return f"rgb(255,{tone},{tone})" if change > 0 else f"rgb({tone},{tone},255)"
    h = sum(map(ord, name)) % 40
    if name.endswith(KERNEL_SUFFIX):
        return f"rgb({200 + h // 2},{120 + h},60)"  # kernel: orange
    return f"rgb({205 + h // 2},{80 + h * 2},{50 + h})"


def render_html(folded: Counter[str], title: str = "CPU flame graph", baseline: Counter[str] | None = None) -> str:
    """One HTML file, no external resources: the data is inline JSON, drawn by inline JS."""
    root = build_tree(folded, baseline)
    data = json.dumps(_to_json(root, baseline is not None), separators=(",", ":"))
    data = data.replace("</", "<\\/")  # never end the script element early
    return (_HTML.replace("$TITLE", html.escape(title)).replace("$DIFF", "true" if baseline else "false")
            .replace("$DATA", data))


def render_svg(folded: Counter[str], title: str = "CPU flame graph", baseline: Counter[str] | None = None) -> str:
    root = build_tree(folded, baseline)
    depth = root.depth()
    height = (depth + 2) * FRAME_HEIGHT
    scale = SVG_WIDTH / max(1, root.value)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
           f'viewBox="0 0 {SVG_WIDTH} {height}" font-family="monospace" font-size="11">',
           f'<text x="{SVG_WIDTH / 2}" y="14" text-anchor="middle" font-size="14">{html.escape(title)}</text>']

    def draw(node: Node, x: float, level: int) -> None:
        width = node.value * scale
        if width < MIN_SVG_WIDTH_PX:
            return
        y = height - (level + 1) * FRAME_HEIGHT
        share = 100 * node.value / max(1, root.value)
        label = html.escape(node.name)
        fill = _colour(node.name, node, root.value, baseline is not None)
        out.append(f'<g><title>{label} ({node.value} samples, {share:.2f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{FRAME_HEIGHT - 1}" fill="{fill}"/>')
        chars = int(width / 7)
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[:chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + 12}">{html.escape(text)}</text>')
        out.append("</g>")
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, x, level + 1)
            x += child.value * scale

    draw(root, 0.0, 0)
    out.append("</svg>\n")
    return "\n".join(out)


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>$TITLE</title>
<style>
body{font:12px monospace;margin:8px}
#bar{margin-bottom:6px} #bar input{width:24em}
#graph{position:relative;width:100%}
.f{position:absolute;height:17px;line-height:17px;overflow:hidden;white-space:nowrap;
   box-sizing:border-box;border-right:1px solid #fff;padding-left:2px;cursor:pointer}
.f.match{background:#e040e0 !important}
#info{margin-top:6px;min-height:1.2em}
</style></head><body>
<div id="bar"><b>$TITLE</b> &nbsp; <input id="search" placeholder="search (regular expression)">
<button id="reset">reset zoom</button> <span id="matched"></span></div>
<div id="graph"></div><div id="info">click a frame to zoom</div>
<script>
const DIFF = $DIFF;
const ROOT = $DATA; // [name, samples, baseline samples (diff) or null, children]
const H = 18, MIN_PCT = 0.05;
const graph = document.getElementById("graph");
let zoomed = ROOT, query = null;
function depth(n) { let d = 0; for (const c of n[3]) d = Math.max(d, depth(c)); return d + 1; }
function colour(n) {
  if (DIFF && n[2] !== null) {
    const change = (n[1] - n[2]) / ROOT[1], s = Math.min(1, Math.abs(change) * 10), t = Math.round(255 - 160 * s);
    return change > 0 ? `rgb(255,${t},${t})` : `rgb(${t},${t},255)`;
  }
  let h = 0; for (const ch of n[0]) h += ch.charCodeAt(0); h %= 40;
  return n[0].endsWith("_[k]") ? `rgb(${200 + (h >> 1)},${120 + h},60)` : `rgb(${205 + (h >> 1)},${80 + 2 * h},${50 + h})`;
}
function path(target) {  // the chain from ROOT to target
  const walk = (n, acc) => { if (n === target) return acc.concat([n]);
    for (const c of n[3]) { const r = walk(c, acc.concat([n])); if (r) return r; } return null; };
  return walk(ROOT, []) || [ROOT];
}
function render() {
  graph.innerHTML = "";
  const chain = path(zoomed), levels = chain.length - 1 + depth(zoomed);
  graph.style.height = (levels * H) + "px";
  const total = zoomed[1];
  const add = (n, left, width, level) => {
    const d = document.createElement("div");
    d.className = "f"; d.textContent = n[0];
    d.style.left = left + "%"; d.style.width = width + "%";
    d.style.top = ((levels - level - 1) * H) + "px"; d.style.background = colour(n);
    const pct = (100 * n[1] / ROOT[1]).toFixed(2);
    let tip = `${n[0]}: ${n[1]} samples, ${pct}%`;
    if (DIFF && n[2] !== null) tip += `, baseline ${n[2].toFixed(1)} (${n[1] >= n[2] ? "+" : ""}${(n[1] - n[2]).toFixed(1)})`;
    d.title = tip;
    if (query && query.test(n[0])) d.classList.add("match");
    d.onclick = (e) => { e.stopPropagation(); zoomed = n; render(); };
    d.onmouseover = () => { document.getElementById("info").textContent = tip; };
    graph.appendChild(d);
  };
  chain.slice(0, -1).forEach((n, i) => add(n, 0, 100, i));  // ancestors span the width
  const draw = (n, left, level) => {
    const width = 100 * n[1] / total;
    if (width < MIN_PCT) return;
    add(n, left, width, level);
    let x = left;
    for (const c of n[3]) { draw(c, x, level + 1); x += 100 * c[1] / total; }
  };
  draw(zoomed, 0, chain.length - 1);
  showMatched();
}
function showMatched() {
  const out = document.getElementById("matched");
  if (!query) { out.textContent = ""; return; }
  const sum = (n) => query.test(n[0]) ? n[1] : n[3].reduce((a, c) => a + sum(c), 0);
  out.textContent = `matched ${(100 * sum(ROOT) / ROOT[1]).toFixed(2)}%`;
}
document.getElementById("search").oninput = (e) => {
  try { query = e.target.value ? new RegExp(e.target.value) : null; } catch (err) { return; }
  render();
};
document.getElementById("reset").onclick = () => { zoomed = ROOT; render(); };
render();
</script></body></html>
"""
