"""`otelbpf http`: the HTTP sensor's live view, RED per service and route, slowest requests."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import cast

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from otelbpf.enrich.host import host_resource
from otelbpf.sensors.base import running
from otelbpf.sensors.http import HttpSensor
from otelbpf.signals.model import SpanKind
from otelbpf.signals.registry import Registry


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


def render(sensor: HttpSensor, top: int, window_s: float) -> Group:
    done = list(sensor.recent)
    red = Table(title=f"Server requests (last {len(done)} spans)", expand=True)
    for col in ("service", "route", "requests", "req/s", "errors", "p50 ms", "p99 ms"):
        red.add_column(col, justify="left" if col in ("service", "route") else "right")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for c in done:
        if c.span.kind is SpanKind.SERVER:
            groups[(sensor.service_name(c.pid), f"{c.method} {c.route}")].append(c)
    for (service, route), spans in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]:
        durations = sorted(c.duration_s * 1000 for c in spans)
        errors = sum(1 for c in spans if c.error_type)
        red.add_row(service, route, str(len(spans)), f"{len(spans) / window_s:,.1f}", str(errors),
                    f"{_percentile(durations, 0.5):.2f}", f"{_percentile(durations, 0.99):.2f}")
    slow = Table(title="Slowest requests", expand=True)
    for col in ("service", "kind", "request", "status", "ms"):
        slow.add_column(col, justify="right" if col == "ms" else "left")
    for c in sorted(done, key=lambda c: -c.duration_s)[:top]:
        # str by construction: the HTTP tracker sets url.path (server spans) or url.full (client)
        request = cast(str, c.span.attributes.get("url.path") or c.span.attributes.get("url.full", ""))
        slow.add_row(sensor.service_name(c.pid), c.span.kind.name.lower(), f"{c.method} {request}",
                     str(c.status or c.error_type or ""), f"{c.duration_s * 1000:.2f}")
    return Group(red, slow)


def run(duration: float | None, interval: float, top: int, once: bool) -> None:
    sensor = HttpSensor(lambda batch: None, Registry(), host_resource())
    started = time.monotonic()
    deadline = started + duration if duration else None
    console = Console()
    with running(sensor):
        if once:
            # On stderr, so that a script (or a test) knows when requests start being seen.
            print(f"otelbpf http: watching for {duration or interval:g} s", file=sys.stderr, flush=True)
            time.sleep(duration or interval)
            console.print(render(sensor, top, time.monotonic() - started))
            return
        with Live(render(sensor, top, interval), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(interval)
                live.update(render(sensor, top, time.monotonic() - started))
