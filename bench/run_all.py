"""Run every benchmark and keep their output in bench/RESULTS.md.

Usage: .venv/bin/python bench/run_all.py [name ...]   (names: the keys of BENCHES)
With names, only those run and their sections replace the old ones in RESULTS.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BENCHES = {"ringbuf": "bench_ringbuf.py", "execstorm": "bench_execstorm.py", "pstorm": "bench_parallel_storm.py",
           "network": "bench_network.py",
           "export": "bench_export.py", "store": "bench_store.py",
           "profile": "bench_profile.py", "http": "bench_http.py", "security": "bench_security.py",
           "spans": "bench_span_encoding.py", "identity": "bench_identity_memory.py"}
MARK = "<!-- bench: {} -->"


def run(name: str) -> str:
    print(f"running {name} ...", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, str(HERE / BENCHES[name])], capture_output=True, text=True,
                         timeout=1200)
    if out.returncode != 0:
        return f"## {name}\n\nFAILED (exit {out.returncode}):\n\n```\n{out.stderr[-3000:]}\n```\n"
    return out.stdout.strip() + "\n"


def main(names: list[str]) -> None:
    names = names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    old = RESULTS.read_text() if RESULTS.exists() else ""
    # Sections from earlier runs stay, also those recorded by hand (e.g. a run on another machine).
    sections = {m.group(1): m.group(2).rstrip() + "\n"
                for m in re.finditer(r"<!-- bench: (\S+) -->\n(.*?)(?=<!-- bench: |\Z)", old, re.S)}
    for name in names:
        sections[name] = run(name)
        print(sections[name])
    text = (f"# Benchmark results\n\nLatest run: {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}.\n"
            "Produced by `make bench` (bench/run_all.py); each section says when it last ran.\n\n")
    for name in list(BENCHES) + sorted(set(sections) - set(BENCHES)):
        if name in sections:
            text += MARK.format(name) + "\n" + sections[name] + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
