"""`otelbpf http`: the HTTP sensor's live view, RED per service and route, slowest requests."""

from __future__ import annotations

import collections
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from otelbpf.agent import span_path
from otelbpf.enrich.host import host_resource
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.stage import Enrichment
from otelbpf.pipeline.span_metrics import SpanMetrics
from otelbpf.sensors.base import running
from otelbpf.sensors.http import HttpSensor
from otelbpf.signals.model import SpanColumns, SpanKind
from otelbpf.signals.registry import Registry

KEEP_RECENT = 4096  # spans the view keeps


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


@dataclass(frozen=True, slots=True)
class Request:
    """What the view shows of one span."""

    service: str
    server: bool
    method: str
    route: str
    target: str  # url.path of a server span, url.full of a client span
    outcome: str  # the status code, or the error
    error: bool
    duration_s: float


class RecentRequests:
    """The latest spans of the sensor, after the enrichment stage, as the view reads them."""

    def __init__(self, keep: int = KEEP_RECENT) -> None:
        self._keep = keep
        self.requests: collections.deque[Request] = collections.deque(maxlen=keep)

    def __call__(self, columns: SpanColumns) -> None:
        for batch in columns.take(slice(-self._keep, None)).to_batches():
            service = str(dict(batch.resource.attributes).get("service.name", ""))
            for span in batch.spans:
                a = span.attributes
                self.requests.append(Request(
                    service, span.kind is SpanKind.SERVER, str(a.get("http.request.method", "")),
                    str(a.get("http.route", "")), str(a.get("url.path") or a.get("url.full", "")),
                    str(a.get("http.response.status_code") or a.get("error.type") or ""), "error.type" in a,
                    max(span.end_time_unix_nano - span.start_time_unix_nano, 0) / 1e9))


def render(recent: RecentRequests, top: int, window_s: float) -> Group:
    done = list(recent.requests)
    red = Table(title=f"Server requests (last {len(done)} spans)", expand=True)
    for col in ("service", "route", "requests", "req/s", "errors", "p50 ms", "p99 ms"):
        red.add_column(col, justify="left" if col in ("service", "route") else "right")
    groups: dict[tuple[str, str], list[Request]] = defaultdict(list)
    for r in done:
        if r.server:
            groups[(r.service, f"{r.method} {r.route}")].append(r)
    for (service, route), spans in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]:
        durations = sorted(r.duration_s * 1000 for r in spans)
        errors = sum(1 for r in spans if r.error)
        red.add_row(service, route, str(len(spans)), f"{len(spans) / window_s:,.1f}", str(errors),
                    f"{_percentile(durations, 0.5):.2f}", f"{_percentile(durations, 0.99):.2f}")
    slow = Table(title="Slowest requests", expand=True)
    for col in ("service", "kind", "request", "status", "ms"):
        slow.add_column(col, justify="right" if col == "ms" else "left")
    for r in sorted(done, key=lambda r: -r.duration_s)[:top]:
        slow.add_row(r.service, "server" if r.server else "client", f"{r.method} {r.target}", r.outcome,
                     f"{r.duration_s * 1000:.2f}")
    return Group(red, slow)


def run(duration: float | None, interval: float, top: int, once: bool) -> None:
    recent = RecentRequests()
    registry = Registry()
    emit = span_path(Enrichment(IdentityTable(host_resource())), SpanMetrics(registry), recent)
    sensor = HttpSensor(emit, registry)
    started = time.monotonic()
    deadline = started + duration if duration else None
    console = Console()
    with running(sensor):
        if once:
            # On stderr, so that a script (or a test) knows when requests start being seen.
            print(f"otelbpf http: watching for {duration or interval:g} s", file=sys.stderr, flush=True)
            time.sleep(duration or interval)
            console.print(render(recent, top, time.monotonic() - started))
            return
        with Live(render(recent, top, interval), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(interval)
                live.update(render(recent, top, time.monotonic() - started))
