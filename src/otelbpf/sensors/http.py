"""HTTP sensor: SERVER and CLIENT spans and RED metrics for every process's HTTP/1.x traffic,
from syscall tracepoints, and for TLS through uprobes on libssl. No change to any application.

bpf/http.bpf.c copies the first bytes of socket messages that start like HTTP/1.x (and marks
the close of sockets that carried HTTP) into one ring buffer; here the ring is drained in
bulk, the events are paired into spans (sensors.http_tracker), the spans go to the sink with
a resource per process, and their durations to the http.{server,client}.request.duration
histograms.
"""

from __future__ import annotations

import collections
import fnmatch
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otelbpf.enrich import procfs
from otelbpf.enrich.identity import IdentityTable
from otelbpf.kernel import BpfObject, Link, Program, loading
from otelbpf.kernel.errors import BpfError
from otelbpf.kernel.ringbuf import DRAIN_GAP, RingBufferReader
from otelbpf.sensors import http_events as he
from otelbpf.sensors.clock import monotonic_to_unix_offset
from otelbpf.sensors.http_tracker import CompletedSpan, HttpTracker, Message
from otelbpf.sensors.self_traffic import Listener, own_listeners
from otelbpf.sensors.socket_adoption import socket_owners
from otelbpf.signals.counters import CounterDeltas
from otelbpf.signals.model import Resource, SpanBatch, SpanKind
from otelbpf.signals.registry import Registry

log = logging.getLogger("otelbpf")

BPF_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "http.bpf.o"
SCOPE = "otelbpf.sensors.http"
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
# Semantic-convention buckets of http.{server,client}.request.duration.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
DRAIN_SLICE = 1 << 20     # ring bytes decoded at once (about 2,900 records of 256 captured bytes)
MAX_ENDPOINTS = 49152  # connections whose endpoints are remembered (kernel's http_socks: 32768)
MAX_KEPT_REQUESTS = 16384  # connections whose request the kernel keeps for its response at once
KEPT_REQUESTS_MEMORY = 32 << 20  # bytes for them: 4,080 connections at the largest capture size
SELECTION_INTERVAL = 5.0  # seconds between re-reads of which processes match the selection
LISTENERS_INTERVAL = 5.0  # seconds between re-reads of the agent's own listening sockets
KEEP_RECENT = 4096        # finished spans kept for live views and tests
SSL_FUNCTIONS = (("SSL_read", "ssl_rw_enter", "ssl_read_exit"), ("SSL_write", "ssl_rw_enter", "ssl_write_exit"),
                 ("SSL_read_ex", "ssl_rw_ex_enter", "ssl_read_exit"),
                 ("SSL_write_ex", "ssl_rw_ex_enter", "ssl_write_exit"))
KERNEL_COUNTS = {he.COUNT_RING_FULL: "ring_buffer_full", he.COUNT_READS_FULL: "read_table_full"}
ZERO_COPY_COUNTS = {he.COUNT_SENDFILE: "sendfile", he.COUNT_SPLICE: "splice"}


def parse_ports(spec: str) -> frozenset[int]:
    """"80,443,8000-8999" -> the ports; raises ValueError naming the bad part."""
    ports: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"{part!r} is not a port or a range like 8000-8999")
        first, last = int(low), int(high or low)
        if not 0 < first <= last <= 65535:
            raise ValueError(f"{part!r} is outside 1-65535 or reversed")
        ports.update(range(first, last + 1))
    return frozenset(ports)


@dataclass(frozen=True)
class Selection:
    """Which processes to trace (OBI-like): any open port in `ports` or an executable path
    matching `executable` (a glob on the full path or the name). Empty: every process."""

    ports: frozenset[int] = frozenset()
    executable: str | None = None

    @property
    def everything(self) -> bool:
        return not self.ports and not self.executable

    def pids(self, proc: str = "/proc") -> set[int]:
        selected = set(self._pids_by_port(proc)) if self.ports else set()
        if self.executable:
            for entry in os.scandir(proc):
                if not entry.name.isdigit():
                    continue
                path = procfs.executable(int(entry.name), proc)
                if path is None:
                    continue
                if fnmatch.fnmatch(path, self.executable) or fnmatch.fnmatch(os.path.basename(path), self.executable):
                    selected.add(int(entry.name))
        return selected

    def _pids_by_port(self, proc: str) -> set[int]:
        """Processes with a TCP socket listening on, or connected to, one of the ports."""
        inodes: set[int] = set()
        for table in ("tcp", "tcp6"):
            try:
                lines = Path(f"{proc}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                peer_port = int(fields[2].rsplit(":", 1)[1], 16)
                listening = fields[3] == "0A"
                if (local_port in self.ports and listening) or (peer_port in self.ports and not listening):
                    inodes.add(int(fields[9]))
        return set(socket_owners(inodes, proc).values())


class HttpSensor:
    name = "http"

    def __init__(self, emit: Callable[[SpanBatch], None], registry: Registry, resource: Resource, *,
                 capture_bytes: int = 256, selection: Selection = Selection(), tls: bool = True,
                 ringbuf_bytes: int = 4 << 20, bpf_object: Path = BPF_OBJECT, libssl: str = LIBSSL,
                 agent_pid: int | None = None, identities: IdentityTable | None = None):
        """agent_pid: the process whose traffic, and that of its connections' far ends, is left
        out (default: this one, the agent; 0: none, for a program that embeds the sensor and is
        itself a client it wants traced). identities: the agent's table of process identities
        (shared with its other sensors); by default one of its own."""
        if not 16 <= capture_bytes <= he.MAX_CAPTURE:
            raise ValueError(f"capture_bytes must be within 16..{he.MAX_CAPTURE}, got {capture_bytes}")
        self._emit = emit
        self._resource = resource
        self._capture_bytes = capture_bytes
        self._selection = selection
        self._tls = tls
        self._ringbuf_bytes = ringbuf_bytes
        self._bpf_object = bpf_object
        self._libssl = libssl
        self._agent_pid = os.getpid() if agent_pid is None else agent_pid
        self._obj: BpfObject | None = None
        self._reader: RingBufferReader | None = None
        self._next_selection = 0.0
        self._next_listeners = 0.0
        self._listeners: set[Listener] = set()  # the agent's own, in the kernel's self_endpoints
        # (pid, sock) -> (family, local address, local port, peer address, peer port); larger
        # than the kernel's http_socks so that a connection the kernel knows is known here.
        self._endpoints: collections.OrderedDict[tuple[int, int], tuple] = collections.OrderedDict()
        self._no_endpoints = 0
        self._selected: set[int] = set()
        self._pending: list[CompletedSpan] = []
        self.identities = identities or IdentityTable(resource)
        self.tls_attached = False
        self.tls_error: str | None = None  # why the libssl uprobes are not attached
        self.recent: collections.deque[CompletedSpan] = collections.deque(maxlen=KEEP_RECENT)
        self._tracker = HttpTracker(self._pending.append, monotonic_to_unix_offset())

        r = registry
        self._events = r.counter("otelbpf.sensor.events", "Events read from the kernel", "{event}")
        self._drops = r.counter("otelbpf.sensor.dropped", "Events the kernel could not queue or store", "{event}")
        self._ignored = r.counter("otelbpf.http.ignored", "Socket messages not taken as HTTP, by reason", "{message}")
        self._spans = r.counter("otelbpf.http.spans", "HTTP spans produced", "{span}")
        self._kernel_exchanges = r.counter(
            "otelbpf.http.kernel_exchanges",
            "Requests the kernel paired with their responses (one record each; the other spans were paired "
            "by the agent from single messages)", "{exchange}")
        self._unknown_endpoints = r.counter(
            "otelbpf.http.unknown_endpoints",
            "Messages on connections whose first message (which carries the addresses) was not seen", "{message}")
        self._zero_copy = r.counter("otelbpf.http.zero_copy_sends",
                                    "sendfile/splice calls into sockets of traced processes (counted, not parsed)",
                                    "{call}")
        self._server = r.histogram("http.server.request.duration", "Duration of HTTP server requests", "s",
                                   DURATION_BOUNDS)
        self._client = r.histogram("http.client.request.duration", "Duration of HTTP client requests", "s",
                                   DURATION_BOUNDS)
        self._deltas = CounterDeltas()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        # A kept request: the kernel's struct pending, then capture_bytes of the request. The
        # map is preallocated: fewer connections can keep a request when captures are large.
        kept = he.PENDING_HEADER_SIZE + self._capture_bytes
        layouts = {"http_event": he.HTTP_EVENT, "pending": he.PENDING, "self_endpoint": he.SELF_ENDPOINT}
        rodata = {"capture_bytes": self._capture_bytes, "self_pid": self._agent_pid,
                  "filter_pids": int(not self._selection.everything)}
        sizes = {"http_events": self._ringbuf_bytes, "pending": min(MAX_KEPT_REQUESTS, KEPT_REQUESTS_MEMORY // kept)}
        try:
            with loading(self._bpf_object, layouts=layouts, rodata=rodata, max_entries=sizes) as obj:
                obj.maps["pending"].set_value_size(kept)
                obj.load()
                # Records all have one size (header + capture_bytes): the reader's strided fast path.
                self._reader = RingBufferReader(obj.maps["http_events"], he.HTTP_EVENT.itemsize + self._capture_bytes)
                for prog in obj.programs.values():
                    if prog.section.startswith("tp_btf/"):
                        prog.attach()
                self._obj = obj
                self._refresh_listeners()
                if not self._selection.everything:
                    self._refresh_selection()
                if self._tls:
                    self._attach_ssl(obj)
        except BaseException:
            self._obj = None
            raise

    def _attach_ssl(self, obj: BpfObject) -> None:
        """TLS is optional: without libssl plain HTTP is still traced. Its uprobes attach all or
        none: a partial set would see some SSL calls of a connection and miss the others."""
        if not os.path.exists(self._libssl):
            log.info("TLS is not traced: %s is not there", self._libssl)
            return
        links: list[Link] = []
        try:
            for function, enter, leave in SSL_FUNCTIONS:
                where = f"{self._libssl}:{function}"
                links.append(obj.programs[enter].attach_uprobe(self._libssl, function))
                links.append(obj.programs[leave].attach_uprobe(self._libssl, function, retprobe=True))
        except BpfError as exc:
            for link in links:
                link.destroy()
                obj.links.remove(link)
            self.tls_error = f"attaching a uprobe to {where} failed: {exc}"
            log.warning("TLS is not traced (plain HTTP still is): %s; none of the %d libssl uprobes stays "
                        "attached (set http.tls: false to skip them)", self.tls_error, 2 * len(SSL_FUNCTIONS))
            return
        self.tls_attached = True

    def programs(self) -> list[Program]:
        return list(self._obj.programs.values()) if self._obj else []

    def poll(self, timeout: float) -> int:
        if self._obj is None:
            return 0
        assert self._reader is not None  # start() sets it before _obj
        self._reader.wait(timeout, DRAIN_GAP)  # a 4 MiB ring holds about 0.1 s of nginx at 30,000 requests/s
        n = self._drain()
        if not self._selection.everything and time.monotonic() >= self._next_selection:
            self._refresh_selection()
        if time.monotonic() >= self._next_listeners:
            self._refresh_listeners()
        return n

    def stop(self) -> None:
        if self._obj is None:
            return
        self._obj.detach_all()
        self._drain()
        self._account()  # the last counts, whether or not a report was due
        assert self._reader is not None  # start() sets it before _obj
        self._reader.close()
        self._obj.close()
        self._obj = None

    # -- draining -------------------------------------------------------------------------
    def _drain(self) -> int:
        """Everything the ring holds, in slices of DRAIN_SLICE bytes: what is decoded at once
        (and the spans made of it) stays small however far behind the reader is."""
        assert self._reader is not None  # called while started
        total = 0
        for _ in range(self._reader.size // DRAIN_SLICE + 1):  # at most a ring's worth: poll() returns
            n = self._drain_slice()
            total += n
            if n == 0:
                break
        if self._deltas.due():
            self._account()
        return total

    def _drain_slice(self) -> int:
        assert self._reader is not None  # called while started
        batch = self._reader.read(DRAIN_SLICE)
        n = len(batch)
        if n:
            self._events.add(n, {"sensor": self.name})
            heads = batch.fixed(he.HTTP_EVENT)
            paired = int(np.count_nonzero(heads["direction"] >= he.HTTP_SERVER_EXCHANGE))
            if paired:
                self._kernel_exchanges.add(paired)
            columns = [heads[f].tolist() for f in ("ktime_ns", "sock", "pid", "tid", "direction", "source",
                                                   "family", "local_port", "peer_port", "captured",
                                                   "start_ns", "status")]
            local, peer = heads["local_addr"].tolist(), heads["peer_addr"].tolist()
            # Name processes now, while short-lived clients (curl) are still there to be read.
            # (The kernel sends the command name with a connection's first message only.)
            new = {pid for pid in set(columns[2]) if not self.identities.known(pid)}
            if new:
                comms = heads["comm"].tolist()
                names = {}
                for pid, comm in zip(columns[2], comms):
                    if pid in new and comm and pid not in names:
                        names[pid] = comm
                for pid in new:
                    self.identities.resource(pid, names.get(pid, b""))
            data, offsets = batch.data, batch.offsets.tolist()
            head_size = he.HTTP_EVENT.itemsize
            feed, exchange = self._tracker.feed, self._tracker.exchange
            ssl, close = he.HTTP_SOURCE_SSL, he.HTTP_CLOSE
            server_exchange, client_exchange = he.HTTP_SERVER_EXCHANGE, he.HTTP_CLIENT_EXCHANGE
            endpoints = self._endpoints
            for i, (ktime, sock, pid, tid, direction, source, family, lport, pport, captured, start, status) in \
                    enumerate(zip(*columns)):
                # The kernel sends a connection's endpoints with its first message only.
                if family:
                    lo, pe = local[i], peer[i]
                    endpoints[(pid, sock)] = (family, lo, lport, pe, pport)
                    if len(endpoints) > MAX_ENDPOINTS:
                        endpoints.popitem(last=False)
                elif direction == close:
                    endpoints.pop((pid, sock), None)
                    lo = pe = b""
                else:
                    known = endpoints.get((pid, sock))
                    if known is None:  # its first message was before a restart or forgotten: unknown
                        self._no_endpoints += 1
                        family, lo, lport, pe, pport = 2, bytes(16), 0, bytes(16), 0
                    else:
                        family, lo, lport, pe, pport = known
                        endpoints.move_to_end((pid, sock))
                at = offsets[i] + head_size
                payload = data[at:at + captured].tobytes()
                if direction in (server_exchange, client_exchange):
                    # paired in the kernel: the request (read by a server, written by a client)
                    exchange(Message(start, sock, pid, tid, int(direction == server_exchange), source == ssl,
                                     family, lo, lport, pe, pport, payload), ktime, status)
                else:
                    feed(Message(ktime, sock, pid, tid, direction, source == ssl, family,
                                 lo, lport, pe, pport, payload))
        if self._pending:
            self._export(self._pending)
            self._pending.clear()
        return n

    def _export(self, done: list[CompletedSpan]) -> None:
        by_pid: dict[int, list] = collections.defaultdict(list)
        # Durations grouped by their metric attributes, then recorded one numpy pass per group.
        groups: dict[tuple, list[float]] = collections.defaultdict(list)
        server_kind = SpanKind.SERVER
        for c in done:
            by_pid[c.pid].append(c.span)
            server = c.span.kind is server_kind
            groups[(server, c.pid, c.method, c.scheme, c.status, c.error_type,
                    c.route if server else c.span.attributes["server.address"])].append(c.duration_s)
        for (server, pid, method, scheme, status, error_type, where), durations in groups.items():
            attrs = {"http.request.method": method, "url.scheme": scheme,
                     "process.executable.name": self.service_name(pid)}
            if status is not None:
                attrs["http.response.status_code"] = status
            if error_type:
                attrs["error.type"] = error_type
            attrs["http.route" if server else "server.address"] = where
            (self._server if server else self._client).record_many(np.array(durations), attrs)
        self.recent.extend(done)
        self._spans.add(len(done), {"sensor": self.name})
        for pid, spans in by_pid.items():
            self._emit(SpanBatch(self.identities.resource(pid), SCOPE, spans))

    def _account(self) -> None:
        """Kernel drop counters and the tracker's skips into the registry, as deltas."""
        report = self._deltas.report
        ignored = {"parse_failed": self._tracker.unparsed, "no_request_seen": self._tracker.unmatched,
                   "evicted": self._tracker.evicted}
        counts = self._obj.maps["http_counts"] if self._obj else None
        if counts is not None:
            def kernel_count(index: int) -> int:
                return int(counts.percpu_u64(index.to_bytes(4, "little")).sum())
            ignored["not_http"] = kernel_count(he.COUNT_NOT_HTTP)
            ignored["self"] = kernel_count(he.COUNT_SELF)
            for index, reason in KERNEL_COUNTS.items():
                report(self._drops, kernel_count(index), {"sensor": self.name, "reason": reason})
            for index, syscall in ZERO_COPY_COUNTS.items():
                report(self._zero_copy, kernel_count(index), {"syscall": syscall})
        report(self._unknown_endpoints, self._no_endpoints)
        for reason, total in ignored.items():
            report(self._ignored, total, {"reason": reason})

    # -- selection and resources ----------------------------------------------------------
    def _refresh_selection(self) -> None:
        pids = self._selection.pids()
        assert self._obj is not None  # called while started
        selected_map = self._obj.maps["selected_pids"]
        for pid in self._selected - pids:
            selected_map.delete(pid.to_bytes(4, "little"))
        for pid in pids - self._selected:
            selected_map.update(pid.to_bytes(4, "little"), b"\x01")
        self._selected = pids
        self._next_selection = time.monotonic() + SELECTION_INTERVAL

    def _refresh_listeners(self) -> None:
        """The agent's listening sockets into the kernel's self_endpoints: their clients' traffic
        is the agent's own (the kernel notes the agent's connections itself)."""
        now = own_listeners(self._agent_pid) if self._agent_pid else set()
        assert self._obj is not None  # called while started
        endpoints, ports = self._obj.maps["self_endpoints"], self._obj.maps["self_ports"]
        for listener in self._listeners - now:
            if endpoints.delete(_listener_key(listener)):
                _add_port_ref(ports, listener.port, -1)
        for listener in now - self._listeners:
            endpoints.update(_listener_key(listener), b"\x01")
            _add_port_ref(ports, listener.port, 1)
        self._listeners = now
        self._next_listeners = time.monotonic() + LISTENERS_INTERVAL

    def service_name(self, pid: int) -> str:
        return self.identities.of(pid).executable_name  # what the identity's resource names it


def _listener_key(listener: Listener) -> bytes:
    """struct self_endpoint of a listener: the agent's address and port, no peer."""
    return struct.pack("<16s16sHHI", listener.addr, b"", listener.port, 0, 0)


def _add_port_ref(ports, port: int, delta: int) -> None:
    key = port.to_bytes(4, "little")
    refs = int.from_bytes(ports.lookup(key) or bytes(4), "little")
    ports.update(key, max(0, refs + delta).to_bytes(4, "little"))
