"""The network sensor's state, from decoded kernel records: open connections, listeners,
recently closed connections, and the metrics and log records they make (the service map is
derived from those metrics, once, by pipeline.service_map).

No kernel access: the sensor (sensors.network) hands it numpy records of the layouts in
sensors.network_events, and unit tests hand it records they build. Counters of a connection
become metric increments as they grow (a socket walk, its close); connections opened and
closed between two walks are counted in bulk, per (process, role, peer, port).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from otelbpf.sensors import network_events as ne
from otelbpf.signals.model import Attributes, LogRecord, Severity
from otelbpf.signals.registry import Registry

SENSOR = "network"
DURATION_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
RTT_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
KEEP_RECENT = 4096  # closed connections kept for views and tests


@dataclass(slots=True)
class Connection:
    sock: int
    pid: int
    process: str
    role: str                 # "client" or "server"
    network_type: str         # "ipv4" or "ipv6"
    local_address: str
    local_port: int
    peer_address: str
    peer_port: int
    start_ns: int
    end_ns: int = 0
    bytes_sent: int = 0       # acknowledged by the peer
    bytes_received: int = 0
    segments_out: int = 0
    segments_in: int = 0
    retransmits: int = 0
    srtt_us: int = 0
    failure: str | None = None
    adopted: bool = False     # open before the agent started: counts start from adoption
    reported: tuple[int, ...] = (0, 0, 0, 0)  # counters already turned into metrics (as in _report_io)

    @property
    def server_port(self) -> int:
        return self.peer_port if self.role == "client" else self.local_port


class ConnectionTracker:
    def __init__(self, registry: Registry, process_name: Callable[[int, object], str],
                 peer_names: Mapping[str, str], clock_offset: int, connection_logs: bool = False) -> None:
        """process_name(pid, kernel comm): the executable's name; peer_names: address -> the
        DNS name it was resolved from; clock_offset: monotonic to Unix nanoseconds."""
        self._process_name = process_name
        self._peer_names = peer_names
        self._clock_offset = clock_offset
        self._connection_logs = connection_logs
        self._open: dict[int, Connection] = {}
        self._missing_once: set[int] = set()  # open connections the last socket walk did not see
        self.closed: collections.deque[Connection] = collections.deque(maxlen=KEEP_RECENT)
        self.listeners: dict[tuple[int, int], tuple[int, str]] = {}  # (family, port) -> (pid, process)
        r = registry
        self._drops = r.counter("otelbpf.sensor.dropped", "Events the kernel could not queue or store", "{event}")
        self._connections = r.counter("otelbpf.network.tcp.connections", "TCP connections established", "{connection}")
        self._failed = r.counter("otelbpf.network.tcp.failed_connections", "TCP connection attempts that failed",
                                 "{connection}")
        self._io = r.counter("otelbpf.network.io", "Bytes sent and received", "By")
        self._packets = r.counter("otelbpf.network.packets", "Packets (UDP) and segments (TCP)", "{packet}")
        self._retransmits = r.counter("otelbpf.network.tcp.retransmits", "TCP segments retransmitted", "{segment}")
        self._duration = r.histogram("otelbpf.network.tcp.connection.duration", "How long TCP connections lasted",
                                     "s", DURATION_BOUNDS)
        self._rtt = r.histogram("otelbpf.network.tcp.rtt", "Smoothed RTT of TCP connections at close", "s",
                                RTT_BOUNDS)

    # -- what the sensor reads ------------------------------------------------------------
    def is_open(self, sock: int) -> Connection | None:
        return self._open.get(sock)

    def open_connections(self) -> list[Connection]:
        return list(self._open.values())

    def walked(self, sample: np.void, discover: Callable[[np.void], np.void | None]) -> None:
        """An established connection of a socket walk (ne.CONN_SAMPLE): its counters so far.
        discover(sample): the kernel's owner record (ne.CONN_OWNER) of a socket met for the
        first time, None when it closed meanwhile (its close event brings it)."""
        sock = int(sample["sock"])
        flow = sample["flow"]
        conn = self._open.get(sock)
        if conn is not None and (conn.local_port, conn.peer_port) != (int(flow["local_port"]), int(flow["peer_port"])):
            return  # its address now belongs to a newer connection; its close is coming
        if conn is None:
            owner = discover(sample)
            if owner is None or int(owner["local_port"]) != int(flow["local_port"]):
                return  # closed after the walk, and its address may have gone to another socket
            family = int(flow["family"])
            pid = int(owner["pid"]) or self.listeners.get((family, int(flow["local_port"])), (0, ""))[0]
            conn = Connection(
                sock=sock, pid=pid, process=self._process_name(pid, owner["comm"]),
                role="server" if int(owner["role"]) == ne.ROLE_SERVER else "client",
                network_type=ne.network_type(family), local_address=ne.address(family, bytes(flow["local_addr"])),
                local_port=int(flow["local_port"]), peer_address=ne.address(family, bytes(flow["peer_addr"])),
                peer_port=int(flow["peer_port"]), start_ns=int(owner["start_ns"]))
            self._open[sock] = conn
            self._count_new(conn)
        self._update_counters(conn, sample["counters"])
        self._report_io(conn)

    def adopted(self, conn: Connection, counters: np.void) -> None:
        """A connection open before the agent started: its counts so far are not new."""
        self._update_counters(conn, counters)
        conn.reported = (conn.bytes_sent, conn.bytes_received, conn.segments_out, conn.segments_in)
        self._open[conn.sock] = conn

    def flows(self, keys: np.ndarray, values: np.ndarray) -> None:
        """The kernel's per-flow aggregates (ne.FLOW_KEY, ne.FLOW_VALUE), drained since the last
        time: retransmits of TCP flows, bytes and packets of UDP flows."""
        for key, value in zip(keys, values):
            flow = key["flow"]
            pid = int(key["pid"])
            transport = "udp" if int(flow["proto"]) == ne.IPPROTO_UDP else "tcp"
            family = int(flow["family"])
            peer = ne.address(family, bytes(flow["peer_addr"]))
            process = self._process_name(pid, b"")
            attrs: Attributes = {"process.executable.name": process,
                                 "network.transport": transport, "network.type": ne.network_type(family),
                                 "network.peer.address": peer, "network.peer.port": int(flow["peer_port"])}
            if value["retransmits"]:
                self._retransmits.add(int(value["retransmits"]), attrs)
            if transport == "udp":
                for direction, nbytes, npackets in (("transmit", value["tx_bytes"], value["tx_packets"]),
                                                    ("receive", value["rx_bytes"], value["rx_packets"])):
                    if npackets:
                        self._io.add(int(nbytes), {**attrs, "network.io.direction": direction})
                        self._packets.add(int(npackets), {**attrs, "network.io.direction": direction})

    # -- connections ----------------------------------------------------------------------
    def conn_events(self, events: np.ndarray, records: list[LogRecord]) -> None:
        """Listen, close and failure events (ne.CONN_EVENT records); log records go to records."""
        kinds = events["type"]
        for e in events[(kinds == ne.CONN_LISTEN) | (kinds == ne.CONN_UNLISTEN)]:
            key = (int(e["flow"]["family"]), int(e["flow"]["local_port"]))
            if int(e["type"]) == ne.CONN_LISTEN:
                self.listeners[key] = (int(e["pid"]), self._process_name(int(e["pid"]), e["comm"]))
            else:
                self.listeners.pop(key, None)
        closes = events[kinds == ne.CONN_CLOSE]
        if len(closes):
            # Connections we know (seen by a socket walk), resets and, when asked for, every
            # connection's log record need one object each; the short-lived rest go in bulk.
            # A socket address is reused once freed: the start time tells two connections apart.
            started = {sock: conn.start_ns for sock, conn in self._open.items()}
            known = np.fromiter((started.get(int(sock)) == int(start)
                                 for sock, start in zip(closes["sock"], closes["start_ns"])), bool, len(closes))
            one_by_one = known | np.isin(closes["sk_err"], ne.RESET_ERRNOS) | self._connection_logs
            for e in closes[one_by_one]:
                self._close_one(e, records)
            self._close_many(closes[~one_by_one])
        for e in events[kinds == ne.CONN_FAILED]:
            conn = self._new_connection(e)
            conn.end_ns = int(e["ktime_ns"])
            conn.failure = ne.failure_reason(int(e["sk_err"]))
            self._failed.add(1, {**self._conn_attrs(conn), "error.type": conn.failure})
            self.closed.append(conn)
            records.append(self._conn_record(conn, "network.connection.failed", Severity.WARN))

    def forget_vanished(self, alive: set[int]) -> None:
        """Connections whose close never reached us (a full ring): missing from two walks in a
        row. One is not enough: a close just before a walk may still be in the ring."""
        missing = {sock for sock in self._open if sock not in alive}
        for sock in missing & self._missing_once:
            del self._open[sock]
            self._drops.add(1, {"sensor": SENSOR, "reason": "close_event_lost"})
        self._missing_once = missing - self._missing_once

    def _count_new(self, conn: Connection) -> None:
        """A connection counted once: when a socket walk first sees it, or at its close."""
        self._connections.add(1, self._conn_attrs(conn))

    def _close_one(self, e: np.void, records: list[LogRecord]) -> None:
        conn = self._open.get(int(e["sock"]))
        if conn is not None and conn.start_ns == int(e["start_ns"]):
            del self._open[conn.sock]
        else:  # never seen open (or another connection now has its address)
            conn = self._new_connection(e)
            self._count_new(conn)
        conn.end_ns = int(e["ktime_ns"])
        self._update_counters(conn, e["counters"])
        if ne.failure_reason(int(e["sk_err"])) == "connection_reset":
            conn.failure = "connection_reset"  # established, then reset: bytes and all
            self._failed.add(1, {**self._conn_attrs(conn), "error.type": conn.failure})
            records.append(self._conn_record(conn, "network.connection.failed", Severity.WARN))
        self._report_io(conn)
        attrs = {"process.executable.name": conn.process, "otelbpf.network.role": conn.role}
        if not conn.adopted:  # an adopted connection's start is unknown
            self._duration.record((conn.end_ns - conn.start_ns) / 1e9, attrs)
        if conn.srtt_us:
            self._rtt.record(conn.srtt_us / 1e6, attrs)
        self.closed.append(conn)
        if self._connection_logs:
            records.append(self._conn_record(conn, "network.connection.closed", Severity.INFO))

    def _close_many(self, closes: np.ndarray) -> None:
        """Connections opened and closed between two walks, in bulk: numpy per batch, Python per
        group of (process, role, peer, port), never per connection."""
        n = len(closes)
        if n == 0:
            return
        flow, counters = closes["flow"], closes["counters"]
        client = closes["role"] == ne.ROLE_CLIENT
        flags = counters["flags"]
        sent = np.maximum(counters["bytes_acked"].astype(np.int64) - client
                          - ((flags & ne.TCP_FIN_ACKED) != 0), 0)
        received = np.maximum(counters["bytes_received"].astype(np.int64) - ((flags & ne.TCP_FIN_RECEIVED) != 0), 0)
        pids = closes["pid"].copy()
        for j in np.flatnonzero(pids == 0):  # accepted by a listener older than us
            pids[j] = self.listeners.get((int(flow["family"][j]), int(flow["local_port"][j])), (0, ""))[0]
        keys = np.zeros(n, dtype=[("pid", "<u4"), ("role", "u1"), ("family", "<u2"), ("peer", "V16"), ("port", "<u2")])
        keys["pid"], keys["role"], keys["family"] = pids, closes["role"], flow["family"]
        keys["peer"] = flow["peer_addr"]
        keys["port"] = np.where(client, flow["peer_port"], flow["local_port"])
        groups, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        per_group = {name: np.bincount(inverse, weights=values, minlength=len(groups))
                     for name, values in (("sent", sent), ("received", received),
                                          ("segs_out", counters["segs_out"]), ("segs_in", counters["segs_in"]))}
        count = np.bincount(inverse, minlength=len(groups))
        duration = (closes["ktime_ns"] - closes["start_ns"]) / 1e9
        srtt = counters["srtt_us"] / 1e6
        for g, key in enumerate(groups):
            pid, family = int(key["pid"]), int(key["family"])
            # The kernel's name of the process, should it be gone before we ask /proc.
            conn = Connection(sock=0, pid=pid, process=self._process_name(pid, closes["comm"][first[g]]),
                              role="client" if int(key["role"]) == ne.ROLE_CLIENT else "server",
                              network_type=ne.network_type(family), local_address="", local_port=0,
                              peer_address=ne.address(family, bytes(key["peer"])), peer_port=int(key["port"]),
                              start_ns=0)
            if conn.role == "server":
                conn.local_port = int(key["port"])
            attrs = self._conn_attrs(conn)
            self._connections.add(int(count[g]), attrs)
            for direction, nbytes, segs in (("transmit", "sent", "segs_out"), ("receive", "received", "segs_in")):
                if per_group[nbytes][g]:
                    self._io.add(int(per_group[nbytes][g]), {**attrs, "network.io.direction": direction})
                if per_group[segs][g]:
                    self._packets.add(int(per_group[segs][g]), {**attrs, "network.io.direction": direction})
            members = inverse == g
            short = {"process.executable.name": conn.process, "otelbpf.network.role": conn.role}
            self._duration.record_many(duration[members], short)
            self._rtt.record_many(srtt[members & (srtt > 0)], short)
        # The most recent ones, one by one, for views and the closed-connection log.
        for i in range(max(0, n - KEEP_RECENT // 4), n):
            conn = self._new_connection(closes[i])
            conn.pid = int(pids[i])
            conn.process = self._process_name(conn.pid, closes["comm"][i])
            conn.end_ns = int(closes["ktime_ns"][i])
            self._update_counters(conn, counters[i])
            self.closed.append(conn)

    def _new_connection(self, e: np.void) -> Connection:
        flow = e["flow"]
        family = int(flow["family"])
        pid = int(e["pid"])
        if not pid and int(e["role"]) == ne.ROLE_SERVER:  # accepted by a listener older than us
            pid = self.listeners.get((family, int(flow["local_port"])), (0, ""))[0]
        return Connection(
            sock=int(e["sock"]), pid=pid, process=self._process_name(pid, e["comm"]),
            role="server" if int(e["role"]) == ne.ROLE_SERVER else "client", network_type=ne.network_type(family),
            local_address=ne.address(family, bytes(flow["local_addr"])), local_port=int(flow["local_port"]),
            peer_address=ne.address(family, bytes(flow["peer_addr"])), peer_port=int(flow["peer_port"]),
            start_ns=int(e["start_ns"]) or int(e["ktime_ns"]))

    @staticmethod
    def _update_counters(conn: Connection, c: np.void) -> None:
        # The kernel counts sequence space: take out our SYN (connections we opened) and the
        # FINs it says it counted, to leave the application's bytes.
        flags = int(c["flags"])
        syn = 1 if conn.role == "client" else 0
        conn.bytes_sent = max(int(c["bytes_acked"]) - syn - bool(flags & ne.TCP_FIN_ACKED), 0)
        conn.bytes_received = max(int(c["bytes_received"]) - bool(flags & ne.TCP_FIN_RECEIVED), 0)
        conn.segments_out = int(c["segs_out"])
        conn.segments_in = int(c["segs_in"])
        conn.retransmits = int(c["total_retrans"])
        conn.srtt_us = int(c["srtt_us"])

    def _report_io(self, conn: Connection) -> None:
        """Turn counter growth since the last report into metric increments."""
        now = (conn.bytes_sent, conn.bytes_received, conn.segments_out, conn.segments_in)
        # A walk can read a FIN's sequence number a moment before the flag that says it is one:
        # a count may then step back by one, which a counter must never do.
        sent, received, segs_out, segs_in = (max(a - b, 0) for a, b in zip(now, conn.reported))
        conn.reported = tuple(max(a, b) for a, b in zip(now, conn.reported))
        attrs = self._conn_attrs(conn)
        if sent:
            self._io.add(sent, {**attrs, "network.io.direction": "transmit"})
        if received:
            self._io.add(received, {**attrs, "network.io.direction": "receive"})
        if segs_out:
            self._packets.add(segs_out, {**attrs, "network.io.direction": "transmit"})
        if segs_in:
            self._packets.add(segs_in, {**attrs, "network.io.direction": "receive"})

    def _conn_attrs(self, conn: Connection) -> dict:
        attrs = {"process.executable.name": conn.process, "network.transport": "tcp",
                 "network.type": conn.network_type, "otelbpf.network.role": conn.role,
                 "server.port": conn.server_port}
        if conn.role == "client":
            attrs["network.peer.address"] = conn.peer_address
            name = self._peer_names.get(conn.peer_address)
            if name:
                attrs["server.address"] = name
        else:
            attrs["client.address"] = conn.peer_address
        return attrs

    def _conn_record(self, conn: Connection, event: str, severity: Severity) -> LogRecord:
        attrs: Attributes = {
            "process.pid": conn.pid, "process.executable.name": conn.process, "network.transport": "tcp",
            "network.type": conn.network_type, "network.local.address": conn.local_address,
            "network.local.port": conn.local_port, "network.peer.address": conn.peer_address,
            "network.peer.port": conn.peer_port, "otelbpf.network.role": conn.role,
            "otelbpf.network.duration": (conn.end_ns - conn.start_ns) / 1e9,
        }
        if conn.failure:
            attrs["error.type"] = conn.failure
        if conn.bytes_sent or conn.bytes_received or not conn.failure:
            attrs.update({"otelbpf.network.bytes_sent": conn.bytes_sent,
                          "otelbpf.network.bytes_received": conn.bytes_received,
                          "otelbpf.network.tcp.retransmits": conn.retransmits,
                          "otelbpf.network.tcp.srtt": conn.srtt_us / 1e6})
        name = self._peer_names.get(conn.peer_address)
        if name:
            attrs["server.address"] = name
        return LogRecord(self._unix(conn.end_ns), event, severity, None, attrs)

    def _unix(self, ktime_ns: int) -> int:
        return ktime_ns + self._clock_offset

