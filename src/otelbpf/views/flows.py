"""`otelbpf flows`: the network sensor's live view, top talkers first. The talkers are the
service map's edges, derived by pipeline.service_map from the sensor's metrics as the store
derives them: the view and the UI name clients and servers alike."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from otelbpf.enrich.host import host_resource
from otelbpf.pipeline.service_map import ServiceMap
from otelbpf.sensors.base import running
from otelbpf.sensors.network import NetworkSensor
from otelbpf.signals.model import Resource
from otelbpf.signals.registry import Registry
from otelbpf.store.model_rows import RowBuilder


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass(slots=True)
class Talker:
    client: str
    server: str
    peer: str
    transport: str
    connections: int = 0
    failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class Talkers:
    """Edges of the service map since the view started, summed per client, server and peer."""

    def __init__(self, registry: Registry, resource: Resource) -> None:
        self._registry, self._resource = registry, resource
        self._map, self._rows = ServiceMap(), RowBuilder()
        self.edges: dict[tuple[str, str, str, str], Talker] = {}

    def update(self) -> None:
        points, attributes = self._rows.metrics(self._registry.snapshot(self._resource, "otelbpf.flows"))
        _, edges = self._map.derive(points, attributes)
        for client, server, transport, requests, errors, attrs, sent, received in zip(
                edges["client"], edges["server"], edges["protocol"], edges["requests"], edges["errors"],
                edges["attributes"], edges["bytes_sent"], edges["bytes_received"]):
            extra = json.loads(attrs)
            peer = f"{extra.get('network.peer.address', '')}:{extra.get('server.port', '')}"
            talker = self.edges.setdefault((client, server, peer, transport), Talker(client, server, peer, transport))
            talker.connections += requests
            talker.failed += errors
            talker.bytes_sent += sent
            talker.bytes_received += received


def render(sensor: NetworkSensor, talkers: Talkers, top: int) -> Group:
    table = Table(title="Top talkers (process -> server)", expand=True)
    for col in ("process", "server", "peer", "transport", "connections", "failed", "sent", "received"):
        table.add_column(col, justify="right" if col in ("connections", "failed", "sent", "received") else "left")
    for e in sorted(talkers.edges.values(), key=lambda e: e.bytes_sent + e.bytes_received, reverse=True)[:top]:
        table.add_row(e.client, e.server, e.peer, e.transport, str(e.connections), str(e.failed),
                      human_bytes(e.bytes_sent), human_bytes(e.bytes_received))
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
    return Group(table, failures, lookups)


def run(duration: float | None, interval: float, top: int, once: bool) -> None:
    registry, resource = Registry(), host_resource()
    sensor = NetworkSensor(lambda batch: None, registry, resource, sample_interval=interval)
    talkers = Talkers(registry, resource)
    deadline = time.monotonic() + duration if duration else None
    console = Console()
    with running(sensor):
        if once:
            # On stderr, so that a script (or a test) knows when connections start being seen.
            print(f"otelbpf flows: watching for {duration or interval:g} s", file=sys.stderr, flush=True)
            time.sleep(duration or interval)
            sensor.sample()
            talkers.update()
            console.print(render(sensor, talkers, top))
            return
        with Live(render(sensor, talkers, top), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(interval)
                sensor.sample()
                talkers.update()
                live.update(render(sensor, talkers, top))
