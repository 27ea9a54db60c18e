"""Network sensor: TCP connections with their bytes, RTT and retransmits, failed connections,
UDP flows and DNS lookups, for every process, aggregated in the kernel.

The BPF side (bpf/network.bpf.c) reports connection lifecycle events and DNS messages on two
ring buffers, keeps per-flow aggregates in a hash map, and offers an iterator over open TCP
sockets. Here: events give connections and failures; every sample interval the iterator
gives the counters of open connections and the flow map is drained in one batch operation;
counter deltas become OTLP metrics, failures and DNS errors become log records, and a
service map (process -> peer, named by DNS where it was resolved) is kept for the store and
`otelbpf flows`.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otelbpf.enrich.containers import find_cgroup2_root
from otelbpf.kernel import BpfObject, Link, Program
from otelbpf.kernel.errors import BpfError
from otelbpf.kernel.objects import BPF_NOEXIST
from otelbpf.kernel.ringbuf import RecordBatch, RingBufferReader
from otelbpf.protocols import dns
from otelbpf.sensors import network_events as ne
from otelbpf.sensors.clock import monotonic_to_unix_offset
from otelbpf.signals.counters import CounterDeltas
from otelbpf.signals.model import Attributes, LogBatch, LogRecord, Resource, Severity
from otelbpf.signals.registry import Registry

BPF_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "network.bpf.o"
SCOPE = "otelbpf.sensors.network"
DURATION_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
DNS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RTT_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
DNS_TIMEOUT_NS = 10 * 10**9
KEEP_RECENT = 4096  # closed connections and DNS lookups kept for views and tests
MAX_EDGES = 10_000  # service-map edges; the least recently seen go first
DROP_KINDS = ("ring_buffer_full", "connection_table_full", "flow_table_full")


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


@dataclass(slots=True)
class DnsLookup:
    pid: int
    process: str
    name: str
    qtype: str
    server: str
    rcode: str              # "NOERROR", "NXDOMAIN", ..., or "TIMEOUT"
    answers: tuple[str, ...]
    duration_s: float
    time_unix_nano: int


@dataclass(slots=True)
class Edge:
    """One arrow of the service map: a process talking to a peer service."""

    process: str
    peer_address: str
    peer_port: int
    transport: str
    peer_name: str | None = None
    connections: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_seen_unix_nano: int = 0


@dataclass
class _PendingQuery:
    ktime_ns: int
    pid: int
    name: str
    qtype: str


class NetworkSensor:
    name = "network"

    def __init__(self, emit: Callable[[LogBatch], None], registry: Registry, resource: Resource, *,
                 sample_interval: float = 10.0, ringbuf_bytes: int = 4 << 20, capture_dns: bool = True,
                 connection_logs: bool = False, bpf_object: Path = BPF_OBJECT):
        self._emit = emit
        self._resource = resource
        self._sample_interval = sample_interval
        self._ringbuf_bytes = ringbuf_bytes
        self._capture_dns = capture_dns
        self._connection_logs = connection_logs
        self._bpf_object = bpf_object
        self._clock_offset = monotonic_to_unix_offset()
        self._obj: BpfObject | None = None
        self._conn_reader: RingBufferReader | None = None
        self._dns_reader: RingBufferReader | None = None
        self._iter_link: Link | None = None
        self._next_sample = 0.0
        self._lock = threading.Lock()  # views read what the drain thread writes
        self._open: dict[int, Connection] = {}
        self._missing_once: set[int] = set()  # open connections the last socket walk did not see
        self._started = False  # the first socket walk adopts what predates us; later ones do not
        self._pending_dns: collections.OrderedDict[tuple, _PendingQuery] = collections.OrderedDict()
        self._names_by_address: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._process_names: dict[int, str] = {}
        self.closed: collections.deque[Connection] = collections.deque(maxlen=KEEP_RECENT)
        self.lookups: collections.deque[DnsLookup] = collections.deque(maxlen=KEEP_RECENT)
        self.listeners: dict[tuple[int, int], tuple[int, str]] = {}  # (family, port) -> (pid, process)
        self.edges: dict[tuple[str, str, int, str], Edge] = {}
        self._deltas = CounterDeltas()

        r = registry
        self._events = r.counter("otelbpf.sensor.events", "Events read from the kernel", "{event}")
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
        self._dns_duration = r.histogram("dns.lookup.duration", "DNS lookups, query to answer", "s", DNS_BOUNDS)
        self._dns_unparsed = r.counter("otelbpf.network.dns.unparsed", "Port 53 payloads that were not DNS", "{message}")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        cgroup_root = find_cgroup2_root()
        if cgroup_root is None:
            raise RuntimeError("no cgroup v2 hierarchy is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) "
                               "or run without the network sensor")
        obj = BpfObject(self._bpf_object)
        try:
            for struct, dtype in (("conn_event", ne.CONN_EVENT), ("conn_sample", ne.CONN_SAMPLE),
                                  ("conn_owner", ne.CONN_OWNER), ("listener_key", ne.LISTENER_KEY),
                                  ("flow_key", ne.FLOW_KEY), ("flow_value", ne.FLOW_VALUE),
                                  ("dns_event", ne.DNS_EVENT)):
                obj.check_layout(struct, dtype)
            obj.set_rodata(capture_dns=int(self._capture_dns))
            obj.maps["conn_events"].set_max_entries(self._ringbuf_bytes)
            obj.load()
            self._conn_reader = RingBufferReader(obj.maps["conn_events"], record_size=ne.CONN_EVENT.itemsize)
            self._dns_reader = RingBufferReader(obj.maps["dns_events"])
            obj.programs["on_tcp_state"].attach()
            obj.programs["on_tcp_retransmit"].attach()
            self._iter_link = obj.programs["sample_tcp"].attach_iter()
            obj.programs["on_sock_create"].attach_cgroup(cgroup_root)
            obj.programs["on_egress"].attach_cgroup(cgroup_root)
            obj.programs["on_ingress"].attach_cgroup(cgroup_root)
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        self._started = False
        self.sample()  # adopt the listeners and connections that predate us
        self._started = True
        self._next_sample = time.monotonic() + self._sample_interval

    def programs(self) -> list[Program]:
        return list(self._obj.programs.values()) if self._obj else []

    def poll(self, timeout: float) -> int:
        if self._obj is None:
            return 0
        # Woken by connection events; DNS has its own ring, taken on every turn either way.
        assert self._conn_reader is not None  # start() sets it before _obj
        self._conn_reader.wait(min(timeout, max(self._next_sample - time.monotonic(), 0.0)))
        n = self._drain_rings()
        if time.monotonic() >= self._next_sample:
            self.sample()
            self._next_sample = time.monotonic() + self._sample_interval
        return n

    def stop(self) -> None:
        if self._obj is None:
            return
        self.sample()  # counters of connections still open, before detaching
        self._obj.detach_all()
        self._drain_rings()
        self._drain_flows()
        self._account_kernel_drops()
        assert self._conn_reader is not None and self._dns_reader is not None  # set before _obj
        self._conn_reader.close()
        self._dns_reader.close()
        self._obj.close()
        self._obj = None

    # -- draining -------------------------------------------------------------------------
    def _drain_rings(self) -> int:
        records: list[LogRecord] = []
        assert self._conn_reader is not None and self._dns_reader is not None  # called while started
        conns = self._conn_reader.read()
        dns_batch = self._dns_reader.read()
        with self._lock:
            if len(conns):
                self._handle_conn_events(conns.fixed(ne.CONN_EVENT), records)
            if len(dns_batch):
                self._handle_dns(dns_batch, records)
        n = len(conns) + len(dns_batch)
        if n:
            self._events.add(n, {"sensor": self.name})
        if records:
            self._emit(LogBatch(self._resource, SCOPE, records))
        return n

    def sample(self) -> None:
        """Counters of open connections (iterator) and the kernel's flow aggregates (batch drain)."""
        if self._obj is None:
            return
        assert self._iter_link is not None  # start() sets it before _obj
        raw = self._iter_link.read_iter()
        samples = np.frombuffer(raw, dtype=ne.CONN_SAMPLE) if raw else np.zeros(0, ne.CONN_SAMPLE)
        with self._lock:
            untracked = samples[samples["tracked"] == 0]
            if len(untracked) and not self._started:
                # Only the first walk adopts: after it every new socket is tracked from its first
                # state change, and an untracked one seen later is one closing during the walk.
                self._adopt(untracked)
            tracked = samples[samples["tracked"] == 1]
            for s in tracked[tracked["state"] == ne.TCP_ESTABLISHED]:
                conn = self._open.get(int(s["sock"]))
                if conn is not None and (conn.local_port, conn.peer_port) != (
                        int(s["flow"]["local_port"]), int(s["flow"]["peer_port"])):
                    continue  # its address now belongs to a newer connection; its close is coming
                conn = conn or self._discover(s)
                if conn is not None:
                    self._update_counters(conn, s["counters"])
                    self._report_io(conn)
            self._forget_vanished({int(sock) for sock in tracked["sock"]} | {int(x) for x in untracked["sock"]})
        self._drain_flows()
        self._account_kernel_drops()
        self._expire_dns(time.monotonic_ns())

    def _drain_flows(self) -> None:
        assert self._obj is not None  # called while started
        keys, values = self._obj.maps["flows"].lookup_and_delete_batch(ne.FLOW_KEY, ne.FLOW_VALUE)
        with self._lock:
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
                    edge = self._edge(process, peer, int(flow["peer_port"]), "udp")
                    edge.bytes_sent += int(value["tx_bytes"])
                    edge.bytes_received += int(value["rx_bytes"])
                    edge.last_seen_unix_nano = time.time_ns()

    def _account_kernel_drops(self) -> None:
        assert self._obj is not None  # called while started
        raw = self._obj.maps["network_drops"]
        for index, kind in enumerate(DROP_KINDS):
            total = int(raw.percpu_u64(index.to_bytes(4, "little")).sum())
            self._deltas.report(self._drops, total, {"sensor": self.name, "reason": kind})

    def _discover(self, sample: np.void) -> Connection | None:
        """A connection the kernel tracks that we meet for the first time: its owner is in the
        kernel's connection table."""
        assert self._obj is not None  # called while started
        raw = self._obj.maps["conns"].lookup(int(sample["sock"]).to_bytes(8, "little"))
        if raw is None:
            return None  # closed meanwhile: its close event brings it
        owner = np.frombuffer(raw, dtype=ne.CONN_OWNER)[0]
        flow = sample["flow"]
        if int(owner["local_port"]) != int(flow["local_port"]):
            return None  # the socket closed after the walk and its address went to another one
        family = int(flow["family"])
        pid = int(owner["pid"]) or self.listeners.get((family, int(flow["local_port"])), (0, ""))[0]
        conn = Connection(
            sock=int(sample["sock"]), pid=pid, process=self._process_name(pid, owner["comm"]),
            role="server" if int(owner["role"]) == ne.ROLE_SERVER else "client", network_type=ne.network_type(family),
            local_address=ne.address(family, bytes(flow["local_addr"])), local_port=int(flow["local_port"]),
            peer_address=ne.address(family, bytes(flow["peer_addr"])), peer_port=int(flow["peer_port"]),
            start_ns=int(owner["start_ns"]))
        self._open[conn.sock] = conn
        self._count_new(conn, time.monotonic_ns())
        return conn

    def _forget_vanished(self, alive: set[int]) -> None:
        """Connections whose close never reached us (a full ring): missing from two walks in a
        row. One is not enough: a close just before a walk may still be in the ring."""
        missing = {sock for sock in self._open if sock not in alive}
        for sock in missing & self._missing_once:
            del self._open[sock]
            self._drops.add(1, {"sensor": self.name, "reason": "close_event_lost"})
        self._missing_once = missing - self._missing_once

    # -- sockets that predate the agent --------------------------------------------------
    def _adopt(self, samples: np.ndarray) -> None:
        """Listening sockets and connections we did not see open: find their process through
        the socket inode, and enter them in the kernel's tables so their close is reported."""
        owners = socket_owners({int(i) for i in samples["inode"] if i})
        assert self._obj is not None  # called while started
        conns_map, listeners_map = self._obj.maps["conns"], self._obj.maps["listeners"]
        now = time.monotonic_ns()
        for s in samples[samples["state"] == ne.TCP_LISTEN]:  # listeners first: they give roles
            flow = s["flow"]
            pid = owners.get(int(s["inode"]), 0)
            key = (int(flow["family"]), int(flow["local_port"]))
            if key in self.listeners or not pid:
                continue
            self.listeners[key] = (pid, self._process_name(pid, b""))
            listeners_map.update(np.array([key], dtype=ne.LISTENER_KEY).tobytes(),
                                 self._owner(pid, ne.ROLE_SERVER, now))
            self._obj.maps["listener_socks"].update(int(s["sock"]).to_bytes(8, "little"),
                                                    np.array([key], dtype=ne.LISTENER_KEY).tobytes())
        for s in samples[samples["state"] == ne.TCP_ESTABLISHED]:
            flow = s["flow"]
            family, local_port = int(flow["family"]), int(flow["local_port"])
            listener = self.listeners.get((family, local_port))
            pid = owners.get(int(s["inode"])) or (listener[0] if listener else 0)
            role = ne.ROLE_SERVER if listener else ne.ROLE_CLIENT
            sock = int(s["sock"])
            try:
                conns_map.update(sock.to_bytes(8, "little"), self._owner(pid, role, now), flags=BPF_NOEXIST)
            except BpfError:
                continue  # it just became tracked, or the table is full (counted by the kernel)
            conn = Connection(
                sock=sock, pid=pid, process=self._process_name(pid, b""),
                role="server" if role == ne.ROLE_SERVER else "client", network_type=ne.network_type(family),
                local_address=ne.address(family, bytes(flow["local_addr"])), local_port=local_port,
                peer_address=ne.address(family, bytes(flow["peer_addr"])), peer_port=int(flow["peer_port"]),
                start_ns=now, adopted=True)
            self._update_counters(conn, s["counters"])
            conn.reported = (conn.bytes_sent, conn.bytes_received, conn.segments_out, conn.segments_in)
            self._open[sock] = conn

    def _owner(self, pid: int, role: int, start_ns: int) -> bytes:
        owner = np.zeros(1, dtype=ne.CONN_OWNER)
        owner["start_ns"], owner["pid"], owner["role"] = start_ns, pid, role
        owner["comm"] = self._process_name(pid, b"").encode()[:15]
        return owner.tobytes()

    # -- connections ----------------------------------------------------------------------
    def _handle_conn_events(self, events: np.ndarray, records: list[LogRecord]) -> None:
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

    def _count_new(self, conn: Connection, ktime_ns: int) -> None:
        """A connection counted once: when a socket walk first sees it, or at its close."""
        self._connections.add(1, self._conn_attrs(conn))
        if conn.role == "client":
            edge = self._edge(conn.process, conn.peer_address, conn.server_port, "tcp")
            edge.connections += 1
            edge.last_seen_unix_nano = self._unix(ktime_ns)

    def _close_one(self, e: np.void, records: list[LogRecord]) -> None:
        conn = self._open.get(int(e["sock"]))
        if conn is not None and conn.start_ns == int(e["start_ns"]):
            del self._open[conn.sock]
        else:  # never seen open (or another connection now has its address)
            conn = self._new_connection(e)
            self._count_new(conn, int(e["ktime_ns"]))
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
        last_seen = self._unix(int(closes["ktime_ns"].max()))
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
            if conn.role == "client":
                edge = self._edge(conn.process, conn.peer_address, conn.server_port, "tcp")
                edge.connections += int(count[g])
                edge.bytes_sent += int(per_group["sent"][g])
                edge.bytes_received += int(per_group["received"][g])
                edge.last_seen_unix_nano = last_seen
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
        if conn.role == "client" and (sent or received):
            edge = self._edge(conn.process, conn.peer_address, conn.server_port, "tcp")
            edge.bytes_sent += sent
            edge.bytes_received += received

    def _conn_attrs(self, conn: Connection) -> dict:
        attrs = {"process.executable.name": conn.process, "network.transport": "tcp",
                 "network.type": conn.network_type, "otelbpf.network.role": conn.role,
                 "server.port": conn.server_port}
        if conn.role == "client":
            attrs["network.peer.address"] = conn.peer_address
            name = self._names_by_address.get(conn.peer_address)
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
        name = self._names_by_address.get(conn.peer_address)
        if name:
            attrs["server.address"] = name
        return LogRecord(self._unix(conn.end_ns), event, severity, None, attrs)

    def _edge(self, process: str, peer: str, port: int, transport: str) -> Edge:
        key = (process, peer, port, transport)
        edge = self.edges.get(key)
        if edge is None:
            if len(self.edges) >= MAX_EDGES:  # drop the stalest tenth at once, not one per insert
                stale = sorted(self.edges, key=lambda k: self.edges[k].last_seen_unix_nano)[: MAX_EDGES // 10]
                for k in stale:
                    del self.edges[k]
            edge = self.edges[key] = Edge(process, peer, port, transport)
        if edge.peer_name is None:
            edge.peer_name = self._names_by_address.get(peer)
        return edge

    # -- DNS ------------------------------------------------------------------------------
    def _handle_dns(self, batch: RecordBatch, records: list[LogRecord]) -> None:
        heads = batch.fixed(ne.DNS_EVENT)
        for i in range(len(heads)):
            head = heads[i]
            flow = head["flow"]
            if int(flow["peer_port"]) != 53:
                continue  # the server side of a resolver on this host: its clients report the lookups
            payload = bytes(batch.payload(i))[ne.DNS_EVENT.itemsize:]
            msg = dns.parse(payload)
            if msg is None:
                self._dns_unparsed.add(1)
                continue
            server = ne.address(int(flow["family"]), bytes(flow["peer_addr"]))
            key = (int(flow["local_port"]), server, msg.id, msg.name.lower())
            if head["egress"] and not msg.is_response:
                self._pending_dns[key] = _PendingQuery(int(head["ktime_ns"]), int(head["pid"]), msg.name, msg.qtype)
                while len(self._pending_dns) > KEEP_RECENT:
                    self._pending_dns.popitem(last=False)
            elif not head["egress"] and msg.is_response:
                query = self._pending_dns.pop(key, None)
                if query is not None:
                    self._finish_lookup(query, server, msg.rcode, msg.answers, int(head["ktime_ns"]), records)

    def _finish_lookup(self, query: _PendingQuery, server: str, rcode: str, answers: tuple[str, ...],
                       end_ns: int, records: list[LogRecord]) -> None:
        lookup = DnsLookup(query.pid, self._process_name(query.pid, b""), query.name, query.qtype, server, rcode,
                           answers, (end_ns - query.ktime_ns) / 1e9, self._unix(end_ns))
        self.lookups.append(lookup)
        for answer in answers:
            self._names_by_address[answer] = query.name
            while len(self._names_by_address) > 4 * KEEP_RECENT:
                self._names_by_address.popitem(last=False)
        attrs = {"dns.question.name": query.name}
        if rcode != "NOERROR":
            attrs["error.type"] = rcode
            records.append(LogRecord(lookup.time_unix_nano, "dns.lookup.failed", Severity.WARN, None, {
                "process.pid": query.pid, "process.executable.name": lookup.process,
                "dns.question.name": query.name, "otelbpf.dns.question.type": query.qtype,
                "otelbpf.dns.response_code": rcode, "network.peer.address": server,
                "otelbpf.dns.duration": lookup.duration_s}))
        self._dns_duration.record(lookup.duration_s, attrs)

    def _expire_dns(self, now_ns: int) -> None:
        records: list[LogRecord] = []
        with self._lock:
            while self._pending_dns:
                key, query = next(iter(self._pending_dns.items()))
                if now_ns - query.ktime_ns < DNS_TIMEOUT_NS:
                    break
                self._pending_dns.popitem(last=False)
                self._finish_lookup(query, key[1], "TIMEOUT", (), query.ktime_ns + DNS_TIMEOUT_NS, records)
        if records:
            self._emit(LogBatch(self._resource, SCOPE, records))

    # -- helpers --------------------------------------------------------------------------
    def _unix(self, ktime_ns: int) -> int:
        return ktime_ns + self._clock_offset

    def _process_name(self, pid: int, comm) -> str:
        """Executable name of a pid (cached), else the kernel's comm, else "unknown"."""
        name = self._process_names.get(pid)
        if name is None:
            try:
                name = os.path.basename(os.readlink(f"/proc/{pid}/exe")) if pid else None
            except OSError:
                name = None
            name = name or (bytes(comm).rstrip(b"\0").decode("utf-8", "replace") if comm else "") or "unknown"
            if len(self._process_names) > 4 * KEEP_RECENT:
                self._process_names.clear()
            self._process_names[pid] = name
        return name

    # -- views ----------------------------------------------------------------------------
    def snapshot(self) -> tuple[list[Connection], list[Edge]]:
        """Open connections and service-map edges, for live views."""
        with self._lock:
            return list(self._open.values()), list(self.edges.values())


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, int]:
    """socket inode -> pid of a process holding it, from /proc/PID/fd (the first one found)."""
    owners: dict[int, int] = {}
    if not inodes:
        return owners
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"{proc}/{entry.name}/fd")
        except OSError:
            continue  # gone, or not ours to read
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in inodes and inode not in owners:
                        owners[inode] = int(entry.name)
        if len(owners) == len(inodes):
            break
    return owners
