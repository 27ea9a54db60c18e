"""Small helpers shared by the benchmarks: tables, medians, machine description."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import time


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} CPUs ({cpu})"


def header(title: str) -> str:
    return f"## {title}\n\n{time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}\n"


def table(columns: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def median(values):
    return statistics.median(values)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def start_agent(endpoint: str, sensors: str, log_path: str, env: dict | None = None) -> subprocess.Popen:
    """`otelbpf run --sensors SENSORS` exporting OTLP/HTTP to endpoint, as a user runs it;
    returns once the agent says it is running (its stderr goes to log_path)."""
    import sys
    from pathlib import Path

    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
               **(env or {}))
    log = Path(log_path)
    agent = subprocess.Popen([sys.executable, "-m", "otelbpf", "run", "--sensors", sensors, "--no-console"],
                             env=env, stderr=log.open("w"))
    deadline = time.monotonic() + 60
    while "running" not in log.read_text() and time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited: {log.read_text()}")
        time.sleep(0.1)
    return agent
