"""Writing a profile in the format its file name asks for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from otelbpf.profiling import flamegraph, folded, pprof
from otelbpf.profiling.model import Profile

FORMATS = {".html": "interactive flame graph", ".svg": "flame graph", ".pb.gz": "pprof (gzip protobuf)",
           ".folded": "folded stacks"}


def format_of(path: str | Path) -> str:
    """The suffix naming the format, or ValueError telling which ones exist."""
    name = str(path)
    for suffix in FORMATS:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{name}: unknown output format; name the file *"
                     + ", *".join(f"{s} ({d})" for s, d in FORMATS.items()))


def write(profile: Profile, path: str | Path, title: str = "CPU flame graph",
          baseline: Counter[str] | None = None) -> None:
    """Write `profile` to `path`; with a baseline (folded stacks), flame graphs show the diff."""
    kind = format_of(path)
    if kind == ".pb.gz":
        Path(path).write_bytes(pprof.to_gzip(profile))
        return
    stacks = folded.fold(profile)
    if kind == ".folded":
        text = folded.to_text(stacks)
    elif kind == ".html":
        text = flamegraph.render_html(stacks, title, baseline)
    else:
        text = flamegraph.render_svg(stacks, title, baseline)
    Path(path).write_text(text, encoding="utf-8")


def write_diff(baseline: Counter[str], newer: Counter[str], path: str | Path, title: str) -> None:
    """A diff flame graph of two folded-stack profiles (HTML or SVG by the file name)."""
    kind = format_of(path)
    if kind == ".html":
        Path(path).write_text(flamegraph.render_html(newer, title, baseline), encoding="utf-8")
    elif kind == ".svg":
        Path(path).write_text(flamegraph.render_svg(newer, title, baseline), encoding="utf-8")
    else:
        raise ValueError(f"{path}: a diff is drawn as a flame graph: name the file *.html or *.svg")
