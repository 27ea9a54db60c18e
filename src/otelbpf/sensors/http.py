"""HTTP sensor: SERVER and CLIENT spans and RED metrics for every process's HTTP/1.x traffic,
from syscall tracepoints, and for TLS through uprobes on libssl. No change to any application.

bpf/http.bpf.c copies the first bytes of socket messages that start like HTTP/1.x (and marks
the close of sockets that carried HTTP) into one ring buffer; here the ring is drained in
bulk, the events are paired into spans (sensors.http_tracker) and leave as column batches keyed
by pid: the enrichment stage names their processes, the span-metrics processor makes the
http.{server,client}.request.duration histograms of them.
"""

from __future__ import annotations

import collections
import fnmatch
import itertools
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otelbpf.enrich import procfs
from otelbpf.kernel import BpfObject, Link, Program, loading
from otelbpf.kernel.errors import BpfError
from otelbpf.kernel.ringbuf import DRAIN_GAP, RingBufferReader
from otelbpf.sensors import http_events as he
from otelbpf.sensors.clock import monotonic_to_unix_offset
from otelbpf.sensors.http_tracker import CompletedSpan, Endpoints, HttpTracker, Message, PairedExchanges
from otelbpf.sensors.self_traffic import Listener, own_listeners
from otelbpf.sensors.socket_adoption import socket_owners
from otelbpf.signals.counters import CounterDeltas
from otelbpf.signals.model import SpanColumns
from otelbpf.signals.registry import Registry

log = logging.getLogger("otelbpf")

BPF_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "http.bpf.o"
SCOPE = "otelbpf.sensors.http"
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
DRAIN_SLICE = 1 << 20     # ring bytes decoded at once (about 2,900 records of 256 captured bytes)
MAX_ENDPOINTS = 49152  # connections whose endpoints are remembered (kernel's http_socks: 32768)
MAX_KEPT_REQUESTS = 16384  # connections whose request the kernel keeps for its response at once
KEPT_REQUESTS_MEMORY = 32 << 20  # bytes for them: 4,080 connections at the largest capture size
SELECTION_INTERVAL = 5.0  # seconds between re-reads of which processes match the selection
LISTENERS_INTERVAL = 5.0  # seconds between re-reads of the agent's own listening sockets
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

    def __init__(self, emit: Callable[[SpanColumns], None], registry: Registry, *,
                 capture_bytes: int = 256, selection: Selection = Selection(), tls: bool = True,
                 ringbuf_bytes: int = 4 << 20, bpf_object: Path = BPF_OBJECT, libssl: str = LIBSSL,
                 agent_pid: int | None = None):
        """emit: takes each batch of spans, keyed by pid, for the enrichment stage (the spans
        say nothing of who their process is; its RED metrics come from the spans too).
        agent_pid: the process whose traffic, and that of its connections' far ends, is left
        out (default: this one, the agent; 0: none, for a program that embeds the sensor and is
        itself a client it wants traced)."""
        if not 16 <= capture_bytes <= he.MAX_CAPTURE:
            raise ValueError(f"capture_bytes must be within 16..{he.MAX_CAPTURE}, got {capture_bytes}")
        self._emit = emit
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
        self._endpoints: collections.OrderedDict[tuple[int, int], Endpoints] = collections.OrderedDict()
        self._no_endpoints = 0
        self._selected: set[int] = set()
        self._pending: list[CompletedSpan] = []
        self.tls_attached = False
        self.tls_error: str | None = None  # why the libssl uprobes are not attached
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
        """Decodes one slice of the ring. Requests the kernel paired (nearly all of them) go to
        the tracker as columns, in runs between the messages that need pairing here, which go
        one by one in kernel order."""
        assert self._reader is not None  # called while started
        batch = self._reader.read(DRAIN_SLICE)
        n = read = len(batch)
        if not n:
            return 0
        self._events.add(n, {"sensor": self.name})
        heads = batch.fixed(he.HTTP_EVENT)
        paired = heads["direction"] >= he.HTTP_SERVER_EXCHANGE
        n_paired = int(np.count_nonzero(paired))
        if n_paired:
            self._kernel_exchanges.add(n_paired)
        endpoint, endpoints = self._endpoints_of(heads)
        names = self._names(heads)
        payload = batch.matrix(he.HTTP_EVENT.itemsize, self._capture_bytes)
        # The close of a connection the tracker holds nothing of, and gets no single message of
        # in this batch, ends nothing there (its endpoints are forgotten above): it need not
        # split the paired rows around it.
        close = heads["direction"] == he.HTTP_CLOSE
        closes = np.flatnonzero(close)
        if len(closes):
            single = ~paired & ~close
            fed = set(zip(heads["pid"][single].tolist(), heads["sock"][single].tolist())) if single.any() else set()
            idle = [i for i, pid, sock in zip(closes.tolist(), heads["pid"][closes].tolist(),
                                              heads["sock"][closes].tolist())
                    if (pid, sock) not in fed and self._tracker.paired_only(pid, sock)]
            if idle:
                keep = np.ones(n, bool)
                keep[idle] = False
                heads, endpoint, payload, paired = heads[keep], endpoint[keep], payload[keep], paired[keep]
                n = len(heads)
        # Runs of paired rows between single messages: [start, stop) each, in kernel order.
        cuts = np.flatnonzero(np.diff(paired.view(np.int8))) + 1
        bounds = [0, *cuts.tolist(), n] if n else []
        for start, stop in itertools.pairwise(bounds):
            if paired[start]:
                self._paired(heads[start:stop], payload[start:stop], endpoint[start:stop], endpoints, names)
            else:
                self._messages(heads, payload, endpoint, endpoints, range(start, stop))
        if self._pending:
            done, self._pending[:] = list(self._pending), []
            pids = np.fromiter((c.pid for c in done), np.uint32, len(done))
            self._emit_spans(SpanColumns.of_spans(SCOPE, [c.span for c in done], pids, names))
        return read

    def _emit_spans(self, columns: SpanColumns) -> None:
        self._spans.add(len(columns), {"sensor": self.name})
        self._emit(columns)

    def _endpoints_of(self, heads: np.ndarray) -> tuple[np.ndarray, list[Endpoints]]:
        """Each record's connection endpoints, as an index into a list: the kernel sends them
        with a connection's first record only, so later records are matched by (pid, sock).
        Connections that start or end in this batch are walked in kernel order; the others
        (keep-alive connections known from earlier batches) cost one lookup each. (A socket
        not in this batch's walk is looked up before the walk: the walk only changes sockets
        it covers.)"""
        n = len(heads)
        endpoint = np.zeros(n, np.int32)
        endpoints: list[Endpoints] = [(2, bytes(16), 0, bytes(16), 0)]  # 0: unknown (first record not seen)
        known = self._endpoints
        sock, pid = heads["sock"], heads["pid"]
        first = heads["family"] != 0
        close = heads["direction"] == he.HTTP_CLOSE
        changing = first | close
        walked = np.isin(sock, sock[changing]) if changing.any() else np.zeros(n, bool)
        rest = np.flatnonzero(~walked)
        if len(rest):
            socks, one, inverse = np.unique(sock[rest], return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            owners = pid[rest][one]
            shared = pid[rest] != owners[inverse]  # a socket two processes use (after a fork): walked
            if shared.any():
                walked[rest[shared]] = True
                rest, inverse = rest[~shared], inverse[~shared]
            found = [self._endpoint_index((p, s), endpoints) for p, s in zip(owners.tolist(), socks.tolist())]
            endpoint[rest] = np.array(found, np.int32)[inverse]
        for i in np.flatnonzero(walked).tolist():
            h = heads[i]
            key = (int(h["pid"]), int(h["sock"]))
            if first[i]:
                value = (int(h["family"]), bytes(h["local_addr"]), int(h["local_port"]), bytes(h["peer_addr"]),
                         int(h["peer_port"]))
                known[key] = value
                known.move_to_end(key)
                if len(known) > MAX_ENDPOINTS:
                    known.popitem(last=False)
                endpoint[i] = len(endpoints)
                endpoints.append(value)
            elif close[i]:
                known.pop(key, None)
            else:
                endpoint[i] = self._endpoint_index(key, endpoints)
        return endpoint, endpoints

    def _endpoint_index(self, key: tuple[int, int], endpoints: list[Endpoints]) -> int:
        value = self._endpoints.get(key)
        if value is None:  # its first message was before a restart or forgotten: unknown
            self._no_endpoints += 1
            return 0
        self._endpoints.move_to_end(key)
        endpoints.append(value)
        return len(endpoints) - 1

    @staticmethod
    def _names(heads: np.ndarray) -> dict[int, bytes]:
        """The kernel's command name of each process of the batch that has one (it comes with a
        connection's first record): the enrichment stage's name for a process already gone."""
        named = np.flatnonzero(heads["comm"] != b"")
        if not len(named):
            return {}
        pids, first = np.unique(heads["pid"][named], return_index=True)
        return dict(zip(pids.tolist(), heads["comm"][named[first]].tolist()))

    def _paired(self, heads: np.ndarray, payload: np.ndarray, endpoint: np.ndarray, endpoints: list[Endpoints],
                names: dict[int, bytes]) -> None:
        run = PairedExchanges(
            heads["start_ns"], heads["ktime_ns"], heads["pid"], heads["tid"], heads["sock"],
            heads["direction"] == he.HTTP_SERVER_EXCHANGE, heads["source"] == he.HTTP_SOURCE_SSL, heads["status"],
            payload, heads["captured"], endpoint, endpoints)
        columns = self._tracker.paired(run, SCOPE)
        if columns is not None:
            columns.names = names
            self._emit_spans(columns)

    def _messages(self, heads: np.ndarray, payload: np.ndarray, endpoint: np.ndarray, endpoints: list[Endpoints],
                  rows: range) -> None:
        """Single messages (and closes), one by one in kernel order: the tracker pairs them."""
        feed, ssl = self._tracker.feed, he.HTTP_SOURCE_SSL
        for i in rows:
            h = heads[i]
            family, local, local_port, peer, peer_port = endpoints[int(endpoint[i])]
            feed(Message(int(h["ktime_ns"]), int(h["sock"]), int(h["pid"]), int(h["tid"]), int(h["direction"]),
                         int(h["source"]) == ssl, family, local, local_port, peer, peer_port,
                         payload[i, :int(h["captured"])].tobytes()))

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



def _listener_key(listener: Listener) -> bytes:
    """struct self_endpoint of a listener: the agent's address and port, no peer."""
    return struct.pack("<16s16sHHI", listener.addr, b"", listener.port, 0, 0)


def _add_port_ref(ports, port: int, delta: int) -> None:
    key = port.to_bytes(4, "little")
    refs = int.from_bytes(ports.lookup(key) or bytes(4), "little")
    ports.update(key, max(0, refs + delta).to_bytes(4, "little"))
