"""`otelbpf flows`: the network sensor's live view, top talkers first."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from otelbpf.enrich.host import host_resource
from otelbpf.sensors.base import running
from otelbpf.sensors.network import NetworkSensor
from otelbpf.signals.registry import Registry


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def render(sensor: NetworkSensor, top: int) -> Group:
    _, edges = sensor.snapshot()
    talkers = Table(title="Top talkers (process -> peer)", expand=True)
    for col in ("process", "peer", "name", "transport", "connections", "sent", "received"):
        talkers.add_column(col, justify="right" if col in ("connections", "sent", "received") else "left")
    for e in sorted(edges, key=lambda e: e.bytes_sent + e.bytes_received, reverse=True)[:top]:
        talkers.add_row(e.process, f"{e.peer_address}:{e.peer_port}", e.peer_name or "", e.transport,
                        str(e.connections), human_bytes(e.bytes_sent), human_bytes(e.bytes_received))
    failures = Table(title="Recent failed connections", expand=True)
    for col in ("process", "pid", "target", "reason"):
        failures.add_column(col)
    for c in [c for c in list(sensor.closed) if c.failure][-5:]:
        failures.add_row(c.process, str(c.pid), f"{c.peer_address}:{c.peer_port}", c.failure)
    lookups = Table(title="Recent DNS lookups", expand=True)
    for col in ("process", "name", "type", "result", "ms"):
        lookups.add_column(col)
    for x in list(sensor.lookups)[-5:]:
        lookups.add_row(x.process, x.name, x.qtype, x.rcode if x.rcode != "NOERROR" else ", ".join(x.answers[:3]),
                        f"{x.duration_s * 1000:.1f}")
    return Group(talkers, failures, lookups)


def run(duration: float | None, interval: float, top: int, once: bool) -> None:
    sensor = NetworkSensor(lambda batch: None, Registry(), host_resource(), sample_interval=interval)
    deadline = time.monotonic() + duration if duration else None
    console = Console()
    with running(sensor):
        if once:
            time.sleep(duration or interval)
            sensor.sample()
            console.print(render(sensor, top))
            return
        with Live(render(sensor, top), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(interval)
                sensor.sample()
                live.update(render(sensor, top))
