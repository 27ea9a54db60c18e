"""The service map, derived once, from the network sensor's metrics: the store's
`service_edges` and `flows` and the `otelbpf flows` view both come from here, so they agree.

The network sensor counts cumulative sums (otelbpf.network.tcp.connections,
otelbpf.network.tcp.failed_connections, otelbpf.network.io), like any other metric; they
reach the store from this agent in process and from other agents through OTLP. Here each
series' growth since its previous point becomes rows: flows (bytes per process and peer per
interval) and edges (client process -> server per interval: connections as `requests`,
failed connections as `errors`, bytes). Input and output are columns by name: the input has
the store's metric_points columns, the output the columns of FLOW_COLUMNS and EDGE_COLUMNS
(the store's flows and service_edges tables have the same).

The server of an edge is named, in this order: the process listening on that port on the same
host, when the peer is this host (a loopback address, or an address that the listener saw as
its own client's address: traffic between two processes of the host); else the peer's DNS
name; else the peer address; with ":port" for the last two. Listeners are learned from the
server-side series (otelbpf.network.role = server) of the same resource.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

Columns = dict[str, list]
Points = Mapping[str, Any]  # metric points by column (lists or arrays): name, kind, resource, service, attributes (JSON),
#                                  start_unix_nano, time_unix_nano, value

FLOW_COLUMNS = ("time_unix_nano", "duration_ns", "service", "pid", "process_name", "container_id", "transport",
                "network_type", "local_address", "local_port", "peer_address", "peer_port", "bytes_sent",
                "bytes_received", "retransmits", "attributes")
EDGE_COLUMNS = ("time_unix_nano", "client", "server", "protocol", "requests", "errors", "duration_sum_ns",
                "attributes", "bytes_sent", "bytes_received")


def _empty(columns: tuple[str, ...]) -> Columns:
    return {name: [] for name in columns}

CONNECTIONS = "otelbpf.network.tcp.connections"
FAILED = "otelbpf.network.tcp.failed_connections"
IO = "otelbpf.network.io"
NETWORK_METRICS = (CONNECTIONS, FAILED, IO)
MAX_SERIES = 200_000  # state kept per series; beyond this the oldest is forgotten
MAX_LISTENERS = 10_000


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _json(attrs: dict) -> str:
    return json.dumps(attrs, separators=(",", ":"), sort_keys=True)


class ServiceMap:
    """Turns metric points (columns, as the store's rows of metric_points are) into flows and
    edges. Thread-safe: the store's writer takes points from sensors and the receiver's threads."""

    def __init__(self) -> None:
        self._last: dict[tuple, tuple[int, float, int]] = {}  # series -> (start, value, time)
        self._listeners: dict[tuple[str, int], tuple[str, set[str]]] = {}  # (resource, port) -> (process, clients)
        self._lock = threading.Lock()

    def derive(self, points: Points, attributes: Sequence[Mapping] | None = None) -> tuple[Columns, Columns]:
        """(flows, service_edges) columns for the network points among `points`; attributes:
        each point's attributes where the caller has them, else they are parsed from the JSON."""
        wanted = [i for i, name in enumerate(points["name"]) if name in NETWORK_METRICS and points["kind"][i] == "sum"]
        flows, edges = _empty(FLOW_COLUMNS), _empty(EDGE_COLUMNS)
        if not wanted:
            return flows, edges
        if attributes is None:
            parsed = [(i, json.loads(points["attributes"][i] or "{}")) for i in wanted]
        else:
            parsed = [(i, attributes[i]) for i in wanted]
        flow_rows: dict[tuple, list] = {}
        edge_rows: dict[tuple, list] = {}
        with self._lock:
            for i, attrs in parsed:  # listeners first: their client's points may be in this batch
                if attrs.get("otelbpf.network.role") == "server" and attrs.get("server.port") is not None:
                    self._learn_listener(points["resource"][i], attrs)
            for i, attrs in parsed:
                delta, interval = self._delta(points, i)
                if delta <= 0:
                    continue
                self._add(points, i, attrs, delta, interval, flow_rows, edge_rows)
        for row in flow_rows.values():
            for column, value in zip(flows.values(), row):
                column.append(value)
        for row in edge_rows.values():
            for column, value in zip(edges.values(), row):
                column.append(value)
        return flows, edges

    # -- state ----------------------------------------------------------------------------
    def _learn_listener(self, resource: str, attrs: Mapping) -> None:
        key = (resource, int(attrs["server.port"]))
        process = str(attrs.get("process.executable.name") or "unknown")
        known = self._listeners.get(key)
        if known is None or known[0] != process:
            if len(self._listeners) >= MAX_LISTENERS:
                self._listeners.pop(next(iter(self._listeners)))
            known = self._listeners[key] = (process, set())
        client = attrs.get("client.address")
        if client and len(known[1]) < 1024:
            known[1].add(str(client))

    def _delta(self, points: Points, i: int) -> tuple[float, int]:
        """Growth of the series since its previous point (all of it for a new or restarted
        series) and the nanoseconds it covers."""
        key = (points["resource"][i], points["name"][i], points["attributes"][i])
        start, value, now = points["start_unix_nano"][i], points["value"][i] or 0.0, points["time_unix_nano"][i]
        previous = self._last.get(key)
        if len(self._last) >= MAX_SERIES and previous is None:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (start, value, now)
        if previous is None or previous[0] != start or value < previous[1]:
            return value, max(now - start, 0)
        return value - previous[1], max(now - previous[2], 0)

    def _server(self, resource: str, peer: str, port: int | None, transport: str, dns_name) -> tuple[str, bool]:
        listener = self._listeners.get((resource, port)) if transport == "tcp" and port is not None else None
        local = is_loopback(peer) or bool(listener and peer in listener[1])
        if local and listener:
            return listener[0], True
        name = dns_name or peer or "unknown"
        return (f"{name}:{port}" if port is not None else name), local

    # -- rows -----------------------------------------------------------------------------
    def _add(self, points: Points, i: int, attrs: Mapping, delta: float, interval: int,
             flow_rows: dict, edge_rows: dict) -> None:
        name, resource, now = points["name"][i], points["resource"][i], points["time_unix_nano"][i]
        service = points["service"][i]
        process = str(attrs.get("process.executable.name") or "unknown")
        transport = str(attrs.get("network.transport") or "tcp")
        role = attrs.get("otelbpf.network.role")  # None for UDP flows
        port = attrs.get("server.port", attrs.get("network.peer.port"))
        port = int(port) if port is not None else None
        peer = str(attrs.get("network.peer.address") or attrs.get("client.address") or "")
        n = int(delta)
        sent = n if name == IO and attrs.get("network.io.direction") == "transmit" else 0
        received = n if name == IO and attrs.get("network.io.direction") == "receive" else 0

        if name == IO:
            extra = {k: attrs[k] for k in ("otelbpf.network.role", "server.address", "server.port") if k in attrs}
            key: tuple = (now, service, process, transport, peer, port, role, _json(extra))
            row = flow_rows.get(key)
            if row is None:
                peer_port = port if role != "server" else None  # a server's peer port is the client's
                row = flow_rows[key] = [now, interval, service, None, process, None, transport,
                                        attrs.get("network.type"), None, None, peer, peer_port, 0, 0, 0, _json(extra)]
            row[12] += sent
            row[13] += received

        if role == "server":
            return  # the client side reports the edge (a remote client: no process to name)
        server, local = self._server(resource, peer, port, transport, attrs.get("server.address"))
        extra = {"server.port": port, "network.peer.address": peer, "otelbpf.network.local": local}
        if attrs.get("server.address"):
            extra["server.address"] = attrs["server.address"]
        key = (now, service, process, server, transport, _json(extra))
        row = edge_rows.get(key)
        if row is None:
            row = edge_rows[key] = [now, process, server, transport, 0, 0, 0, _json(extra), 0, 0]
        if name == CONNECTIONS:
            row[4] += n
        elif name == FAILED:
            row[5] += n
        row[8] += sent
        row[9] += received
