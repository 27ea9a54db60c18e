"""HTTP/1.x request/response pairing per connection, into SERVER and CLIENT spans.

Input: the decoded capture events of http.bpf.c, in kernel order. A request read by a process
opens a server exchange on that connection; a response it writes closes the oldest one
(HTTP/1.x answers in order, so keep-alive and pipelining pair by queue position). A request a
process writes opens a client exchange; the response it reads closes it. 1xx responses
(100 Continue) are skipped: the final one follows. A close with exchanges still open ends them
as errors ("connection_closed").

Trace context: a valid incoming traceparent makes the server span a child of that trace. A
request the process sends while one of its server spans is open on the same thread becomes
that span's child (a heuristic: right for thread-per-request servers, wrong for event loops
that interleave requests on one thread). An outgoing request that already carries a
traceparent (an instrumented client) keeps that trace and takes its parent id as the client
span's id, so the server span on the other side links to it.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from otelbpf.protocols import http1
from otelbpf.signals.model import SpanColumns, SpanKind, SpanRecord, SpanShape, StatusCode

MAX_CONNECTIONS = 32768  # connections with state; the least recently used go first
MAX_PENDING = 64         # open exchanges per connection and direction
MAX_OPEN = 32768         # open exchanges in all: past it the least recently used connections go
MAX_CACHED_PAYLOAD = 1024  # longer message heads are parsed every time, not remembered
MAX_ROUTES = 2000        # distinct routes per process before new ones become "_OTHER"
MAX_CACHED = 4096        # parsed heads, addresses and targets remembered (cleared when full)


@dataclass(slots=True)
class Message:
    """One capture event, decoded."""

    ktime_ns: int
    sock: int
    pid: int
    tid: int
    direction: int         # 0 written, 1 read, 2 close (http_events.HTTP_*)
    tls: bool
    family: int
    local_address: bytes
    local_port: int
    peer_address: bytes
    peer_port: int
    payload: bytes


@dataclass(slots=True)
class Exchange:
    """A request waiting for its response."""

    request: http1.Request
    start_ns: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    message: Message


@dataclass(slots=True)
class _Connection:
    # Lists, not deques: an empty deque is 600 bytes, a list 56, and at most MAX_PENDING wait.
    server: list[Exchange] = field(default_factory=list)  # requests this process read
    client: list[Exchange] = field(default_factory=list)  # requests this process wrote


@dataclass(slots=True)
class CompletedSpan:
    """A span paired here from single messages, and the process it is of."""

    pid: int
    span: SpanRecord

    @property
    def status(self) -> int | None:
        return self.span.attributes.get("http.response.status_code")  # type: ignore[return-value]

    @property
    def error_type(self) -> str | None:
        return self.span.attributes.get("error.type")  # type: ignore[return-value]

    @property
    def scheme(self) -> str:
        return str(self.span.attributes["url.scheme"])

    @property
    def duration_s(self) -> float:
        return max(self.span.end_time_unix_nano - self.span.start_time_unix_nano, 0) / 1e9


Endpoints = tuple[int, bytes, int, bytes, int]  # family, local address and port, peer address and port


@dataclass(slots=True)
class PairedExchanges:
    """Requests the kernel paired with their responses' status: one row each, in kernel order."""

    start_ns: np.ndarray   # uint64: kernel time the request was read (server) or written (client)
    end_ns: np.ndarray     # uint64: kernel time of the response
    pid: np.ndarray        # uint32
    tid: np.ndarray        # uint32
    sock: np.ndarray       # uint64
    server: np.ndarray     # bool: a request the process read (else one it sent)
    tls: np.ndarray        # bool
    status: np.ndarray     # uint16: the response's status code
    payload: np.ndarray    # uint8 (n, width): the request's first bytes; past `captured` undefined
    captured: np.ndarray   # uint16
    endpoint: np.ndarray   # int32: each row's index into endpoints
    endpoints: list[Endpoints]

    def __len__(self) -> int:
        return len(self.pid)

    def take(self, rows: np.ndarray) -> PairedExchanges:
        return PairedExchanges(self.start_ns[rows], self.end_ns[rows], self.pid[rows], self.tid[rows],
                               self.sock[rows], self.server[rows], self.tls[rows], self.status[rows],
                               self.payload[rows], self.captured[rows], self.endpoint[rows], self.endpoints)


# The fixed part of a paired exchange's identity, ahead of its request's bytes (see paired).
_EXCHANGE_KEY = np.dtype([("endpoint", "<i4"), ("pid", "<u4"), ("status", "<u2"), ("server", "u1"), ("tls", "u1"),
                          ("captured", "<u2"), ("_pad", "V2")])
_KEY_WEIGHTS = np.random.default_rng(0x07E1B9F).integers(1, 2**63, 1 + 8192 // 8 + 2, dtype=np.uint64) | np.uint64(1)


_ADDRESSES: dict[tuple[int, bytes], str] = {}


def address_text(family: int, raw: bytes) -> str:
    key = (family, raw)
    text = _ADDRESSES.get(key)
    if text is None:
        if family == 10:  # AF_INET6
            addr = ipaddress.IPv6Address(raw)
            text = str(addr.ipv4_mapped or addr)
        else:
            text = str(ipaddress.IPv4Address(raw[:4]))
        if len(_ADDRESSES) >= MAX_CACHED:
            _ADDRESSES.clear()
        _ADDRESSES[key] = text
    return text


@functools.lru_cache(maxsize=1024)
def _host_and_port(host: str | None) -> tuple[str | None, int | None]:
    if not host:
        return None, None
    if host.startswith("["):  # [::1]:8080
        name, _, rest = host[1:].partition("]")
        port = rest[1:]
    else:
        name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return name or None, int(port) if port.isdigit() and len(port) <= 5 else None


class HttpTracker:
    """Feeds on Messages, calls on_span for each finished exchange; counts what it skipped."""

    def __init__(self, on_span: Callable[[CompletedSpan], None], clock_offset_ns: int,
                 rng: random.Random | None = None) -> None:
        self._on_span = on_span
        self._offset = clock_offset_ns
        self._rng = rng or random.Random()
        self._connections: OrderedDict[tuple[int, int], _Connection] = OrderedDict()
        self._active_server: dict[tuple[int, int], Exchange] = {}  # (pid, tid) -> open server span
        self._routes: dict[int, set[str]] = {}
        # Message heads repeat (the same request line and headers from a client, the same
        # response head within a second): parse each distinct one once. Results are immutable.
        self._parsed: dict[bytes, list] = {}
        self._described: dict[tuple, tuple] = {}  # see _finish
        self._targets: dict[tuple[int, str], tuple[str, str, str]] = {}  # (pid, target) -> path, query, route
        self._exchanges: dict[tuple, tuple] = {}  # see exchange
        self.unparsed = 0      # messages that started like HTTP but did not parse
        self.unmatched = 0     # responses with no request seen (connection older than the agent)
        self.evicted = 0       # open exchanges lost to the bounds
        self.open = 0          # exchanges waiting for their response, all connections

    def paired_only(self, pid: int, sock: int) -> bool:
        """True when the tracker holds nothing of the connection (all its requests were paired
        in the kernel): its close changes nothing here."""
        return (pid, sock) not in self._connections

    def feed(self, m: Message) -> None:
        key = (m.pid, m.sock)
        if m.direction == 2:
            conn = self._connections.pop(key, None)
            if conn is not None:
                self.open -= len(conn.server) + len(conn.client)
                for exchange in (*conn.server, *conn.client):
                    self._finish(exchange, m.ktime_ns, None, "connection_closed")
            return
        conn = self._connection(key)
        if m.payload.startswith(b"HTTP/"):
            self._responses(conn, m)
        else:
            self._requests(conn, m)

    def _connection(self, key: tuple[int, int]) -> _Connection:
        """The state of a connection, made when new; the least recently used go past the bound."""
        conn = self._connections.get(key)
        if conn is None:
            conn = self._connections[key] = _Connection()
            if len(self._connections) > MAX_CONNECTIONS:
                self._evict_oldest()
        else:
            self._connections.move_to_end(key)
        return conn

    def exchange(self, m: Message, end_ns: int, status: int) -> None:
        """A request and its response's status, paired in the kernel (m is the request, as
        read by a server or written by a client). The common case (one request in the
        message) is described once per distinct request, connection and status, and its spans
        share one read-only attribute set, which the OTLP encoder then encodes once too.
        Requests pipelined behind the first in one message wait for their responses like any
        other."""
        key = (m.payload, m.pid, m.direction, m.tls, m.family, m.local_address, m.local_port, m.peer_address,
               m.peer_port, status)
        known = self._exchanges.get(key)
        if known is None:
            requests = self._parse(m.payload, http1.parse_requests)
            if len(requests) != 1:
                self._exchange_slowly(m, end_ns, status, requests)
                return
            known = self._describe_exchange(m, requests[0], status)
            if len(self._exchanges) >= MAX_CACHED:
                self._exchanges.clear()
            self._exchanges[key] = known
        attrs, name, status_code, context = known
        server = m.direction == 1
        trace_id, span_id, parent_id = self._span_ids(context, server, m)
        span = SpanRecord(
            trace_id=trace_id, span_id=span_id, parent_span_id=parent_id, name=name,
            kind=SpanKind.SERVER if server else SpanKind.CLIENT,
            start_time_unix_nano=m.ktime_ns + self._offset, end_time_unix_nano=end_ns + self._offset,
            attributes=attrs, status_code=status_code)
        self._on_span(CompletedSpan(m.pid, span))

    def paired(self, run: PairedExchanges, scope: str) -> SpanColumns | None:
        """Spans of the requests the kernel paired, as columns, without a Python step per
        request: requests are grouped by what describes them (the connection's endpoints,
        process, direction, status and request bytes) with a 64-bit hash of those bytes (each
        group checked byte for byte against its first row), each distinct one is described
        once (as exchange() does), and ids and times are filled per column. Requests with
        others pipelined behind them in one message go the way of exchange(). The spans'
        pids are left for the enrichment stage."""
        n = len(run)
        if not n:
            return None
        # What of a connection's endpoints its spans' shape depends on: a server's peer port
        # (the client's ephemeral port) goes per span, so the connections of one client to one
        # server share their shapes.
        server_form: dict[tuple, int] = {}
        client_form: dict[tuple, int] = {}
        described_as = np.empty((2, len(run.endpoints)), np.int32)
        for j, (family, local, local_port, peer, peer_port) in enumerate(run.endpoints):
            described_as[0, j] = client_form.setdefault((family, peer, peer_port), len(client_form))
            described_as[1, j] = server_form.setdefault((family, local, local_port, peer), len(server_form))
        peer_ports = np.array([e[4] for e in run.endpoints], np.int64)
        width = (int(run.captured.max()) + 7) & ~7
        key = np.zeros((n, _EXCHANGE_KEY.itemsize + width), np.uint8)
        head = key[:, :_EXCHANGE_KEY.itemsize].view(_EXCHANGE_KEY).reshape(n)
        head["endpoint"] = described_as[run.server.astype(np.intp), run.endpoint]
        head["pid"], head["status"] = run.pid, run.status
        head["server"], head["tls"], head["captured"] = run.server, run.tls, run.captured
        used = min(width, run.payload.shape[1])
        key[:, _EXCHANGE_KEY.itemsize:_EXCHANGE_KEY.itemsize + used] = np.where(
            np.arange(used) < run.captured[:, None], run.payload[:, :used], 0)
        words = key.view(np.uint64)
        hashes = (words * _KEY_WEIGHTS[:words.shape[1]]).sum(axis=1)  # wraps: a hash, not a sum
        _, first, rows = np.unique(hashes, return_index=True, return_inverse=True)
        rows = rows.reshape(n)
        clash = np.flatnonzero((words != words[first][rows]).any(axis=1))
        described = [self._paired_shape(run, int(i)) for i in first.tolist()]
        for i in clash.tolist():  # another request with the same hash: described on its own
            rows[i] = len(described)
            described.append(self._paired_shape(run, i))
        slow = [g for g, d in enumerate(described) if d is None]
        if slow:  # pipelined requests: pair them from their messages, in order
            mask = np.isin(rows, slow)
            for i in np.flatnonzero(mask).tolist():
                self._exchange_slowly(self._message(run, i), int(run.end_ns[i]), int(run.status[i]),
                                      self._parse(self._request_bytes(run, i), http1.parse_requests))
            keep = ~mask
            if not keep.any():
                return None
            run = run.take(keep)
            rows = rows[keep]
            n = len(run)
        # Each distinct shape once in the batch's list of shapes.
        shapes: list[SpanShape] = []
        index: dict[int, int] = {}
        shape_of = np.zeros(len(described), np.int32)
        contexts = []
        for g, d in enumerate(described):
            if d is None:
                continue
            shape, context = d
            at = index.get(id(shape))
            if at is None:
                at = index[id(shape)] = len(shapes)
                shapes.append(shape)
            shape_of[g] = at
            if context is not None:
                contexts.append((g, context))
        ids = np.frombuffer(self._rng.randbytes(n * 32), np.uint8).reshape(n, 32)
        trace_id, span_id = ids[:, :16].copy(), ids[:, 16:24].copy()
        parent_id = np.zeros((n, 8), np.uint8)
        if contexts:  # a traceparent in the request: its trace (and for a client, its span id)
            context_trace = np.zeros((len(described), 16), np.uint8)
            context_parent = np.zeros((len(described), 8), np.uint8)
            has = np.zeros(len(described), bool)
            for g, context in contexts:
                context_trace[g] = np.frombuffer(context.trace_id, np.uint8)
                context_parent[g] = np.frombuffer(context.parent_id, np.uint8)
                has[g] = True
            on = has[rows]
            trace_id[on] = context_trace[rows[on]]
            server_on, client_on = on & run.server, on & ~run.server
            parent_id[server_on] = context_parent[rows[server_on]]
            span_id[client_on] = context_parent[rows[client_on]]
        if self._active_server:  # a server span opened from messages is open on the sending thread
            without = np.flatnonzero(~run.server & ~np.isin(rows, [g for g, _ in contexts]))
            for i, pid, tid in zip(without.tolist(), run.pid[without].tolist(), run.tid[without].tolist()):
                parent = self._active_server.get((pid, tid))
                if parent is not None:
                    trace_id[i] = np.frombuffer(parent.trace_id, np.uint8)
                    parent_id[i] = np.frombuffer(parent.span_id, np.uint8)
        offset = np.uint64(self._offset)
        return SpanColumns(scope, shapes, shape_of[rows], trace_id, span_id, parent_id,
                           run.start_ns + offset, run.end_ns + offset, run.pid.astype(np.uint32),
                           ints={"network.peer.port": peer_ports[run.endpoint]})

    def _paired_shape(self, run: PairedExchanges, i: int) -> tuple[SpanShape, http1.TraceContext | None] | None:
        """What the spans of paired row i's kind share, once per distinct request: None when
        the message holds more than one request."""
        m = self._message(run, i)
        status = int(run.status[i])
        key = (m.payload, m.pid, m.direction, m.tls, m.family, m.local_address, m.local_port, m.peer_address,
               None if m.direction == 1 else m.peer_port, status, "shape")
        known = self._exchanges.get(key)
        if known is None:
            requests = self._parse(m.payload, http1.parse_requests)
            if len(requests) != 1:
                return None
            attrs, name, status_code, context = self._describe_exchange(m, requests[0], status)
            shared = MappingProxyType({k: v for k, v in attrs.items() if k != "network.peer.port"})  # per span
            known = (SpanShape(name, SpanKind.SERVER if m.direction == 1 else SpanKind.CLIENT, shared, status_code),
                     context)
            if len(self._exchanges) >= MAX_CACHED:
                self._exchanges.clear()
            self._exchanges[key] = known
        return known

    @staticmethod
    def _request_bytes(run: PairedExchanges, i: int) -> bytes:
        return run.payload[i, :int(run.captured[i])].tobytes()

    def _message(self, run: PairedExchanges, i: int) -> Message:
        family, local, local_port, peer, peer_port = run.endpoints[int(run.endpoint[i])]
        return Message(int(run.start_ns[i]), int(run.sock[i]), int(run.pid[i]), int(run.tid[i]),
                       int(bool(run.server[i])), bool(run.tls[i]), family, local, local_port, peer, peer_port,
                       self._request_bytes(run, i))

    def _describe_exchange(self, m: Message, request: http1.Request, status: int) -> tuple:
        attrs, name, status_code = self._describe(m, request, m.direction == 1, status, None)
        return MappingProxyType(attrs), name, status_code, http1.parse_traceparent(request.traceparent)

    def _exchange_slowly(self, m: Message, end_ns: int, status: int, requests: list) -> None:
        if not requests:
            self.unparsed += 1
            return
        m.payload = b""
        self._finish(self._open(requests[0], m, m.direction == 1), end_ns, status, None)
        if len(requests) > 1:
            self._queue(self._connection((m.pid, m.sock)), m, requests[1:])

    def _requests(self, conn: _Connection, m: Message) -> None:
        requests = self._parse(m.payload, http1.parse_requests)
        if not requests:
            self.unparsed += 1
            return
        m.payload = b""  # parsed: the open exchanges below need the rest of the message, not its bytes
        self._queue(conn, m, requests)

    def _queue(self, conn: _Connection, m: Message, requests: list[http1.Request]) -> None:
        """An open exchange per request, waiting for its response (within the bounds)."""
        server = m.direction == 1
        queue = conn.server if server else conn.client
        for request in requests:
            exchange = self._open(request, m, server)
            if len(queue) >= MAX_PENDING:
                del queue[0]
                self.evicted += 1
                self.open -= 1
            while self.open >= MAX_OPEN and len(self._connections) > 1:
                self._evict_oldest()
            queue.append(exchange)
            self.open += 1
            if server:
                if len(self._active_server) >= MAX_OPEN:  # entries of evicted exchanges linger: bounded
                    self._active_server.clear()
                self._active_server[(m.pid, m.tid)] = exchange

    def _evict_oldest(self) -> None:
        _, old = self._connections.popitem(last=False)
        lost = len(old.server) + len(old.client)
        self.evicted += lost
        self.open -= lost

    def _parse(self, payload: bytes, parse: Callable[[bytes], list]) -> list:
        if len(payload) > MAX_CACHED_PAYLOAD:
            return parse(payload)
        parsed = self._parsed.get(payload)
        if parsed is None:
            parsed = parse(payload)
            if len(self._parsed) >= MAX_CACHED:
                self._parsed.clear()
            self._parsed[payload] = parsed
        return parsed

    def _target(self, pid: int, target: str) -> tuple[str, str, str]:
        key = (pid, target)
        found = self._targets.get(key)
        if found is None:
            path, query = http1.split_target(target)
            found = (path, query, self._route(pid, http1.route_of(path)))
            if len(self._targets) >= MAX_CACHED:
                self._targets.clear()
            self._targets[key] = found
        return found

    def _open(self, request: http1.Request, m: Message, server: bool) -> Exchange:
        trace_id, span_id, parent_id = self._span_ids(http1.parse_traceparent(request.traceparent), server, m)
        return Exchange(request, m.ktime_ns, trace_id, span_id, parent_id, m)

    def _span_ids(self, context: http1.TraceContext | None, server: bool, m: Message) -> tuple[bytes, bytes, bytes]:
        """(trace id, span id, parent span id) of the span of the request in m."""
        span_id = self._rng.getrandbits(64).to_bytes(8, "big")
        if context is not None:
            if server:
                return context.trace_id, span_id, context.parent_id
            # an instrumented client: its header names the span it sends from
            return context.trace_id, context.parent_id, b""
        parent = None if server else self._active_server.get((m.pid, m.tid))
        if parent is not None:
            return parent.trace_id, span_id, parent.span_id
        return self._trace_id(), span_id, b""

    def _trace_id(self) -> bytes:
        return self._rng.getrandbits(128).to_bytes(16, "big")

    def _responses(self, conn: _Connection, m: Message) -> None:
        responses = self._parse(m.payload, http1.parse_responses)
        if not responses:
            self.unparsed += 1
            return
        queue = conn.server if m.direction == 0 else conn.client
        for response in responses:
            if response.informational:
                continue
            if not queue:
                self.unmatched += 1
                continue
            self.open -= 1
            self._finish(queue.pop(0), m.ktime_ns, response.status, None)

    def _finish(self, exchange: Exchange, end_ns: int, status: int | None, failure: str | None) -> None:
        m, request = exchange.message, exchange.request
        server = m.direction == 1
        if server and self._active_server.get((m.pid, m.tid)) is exchange:
            del self._active_server[(m.pid, m.tid)]
        # What a span's attributes depend on, less what changes per connection: a server span's
        # peer port (set below) and a client span's local endpoint (not used).
        key: tuple  # a server's and a client's differ in shape
        if server:
            key = (True, m.pid, m.tls, m.family, m.local_address, m.local_port, m.peer_address, request, status,
                   failure)
        else:
            key = (False, m.pid, m.tls, m.family, m.peer_address, m.peer_port, request, status, failure)
        described = self._described.get(key)
        if described is None:
            described = self._describe(m, request, server, status, failure)
            if len(self._described) >= MAX_CACHED:
                self._described.clear()
            self._described[key] = described
        attrs, name, status_code = described
        attrs = dict(attrs)
        attrs["network.peer.port"] = m.peer_port
        span = SpanRecord(
            trace_id=exchange.trace_id, span_id=exchange.span_id, parent_span_id=exchange.parent_span_id,
            name=name, kind=SpanKind.SERVER if server else SpanKind.CLIENT,
            start_time_unix_nano=exchange.start_ns + self._offset, end_time_unix_nano=end_ns + self._offset,
            attributes=attrs, status_code=status_code,
            status_message=failure.replace("_", " ") if failure else "")
        self._on_span(CompletedSpan(m.pid, span))

    def _describe(self, m: Message, request: http1.Request, server: bool, status: int | None,
                  failure: str | None) -> tuple:
        """What a span's attributes and name are, from what identifies them (cached by _finish:
        the same request on the same connection with the same outcome describes alike)."""
        scheme = "https" if m.tls else "http"
        method = http1.method_attribute(request.method)
        path, query, route = self._target(m.pid, request.target)
        local = address_text(m.family, m.local_address)
        peer = address_text(m.family, m.peer_address)
        host, host_port = _host_and_port(request.host)
        attrs: dict = {"http.request.method": method, "url.scheme": scheme,
                       "network.protocol.version": request.version,
                       "network.peer.address": peer, "network.peer.port": m.peer_port}
        if method == "_OTHER":
            attrs["http.request.method_original"] = request.method
        if server:
            attrs.update({"url.path": path, "http.route": route, "server.address": host or local,
                          "server.port": host_port or m.local_port, "client.address": peer})
            if query:
                attrs["url.query"] = query
        else:
            server_address = host or peer
            server_port = host_port or m.peer_port
            attrs.update({"url.full": f"{scheme}://{server_address}:{server_port}{request.target}"
                          if request.target.startswith("/") else request.target,
                          "server.address": server_address, "server.port": server_port})
        if request.user_agent:
            attrs["user_agent.original"] = request.user_agent
        error_type = failure
        if status is not None:
            attrs["http.response.status_code"] = status
            if status >= 500 or (not server and status >= 400):
                error_type = str(status)
        status_code = StatusCode.UNSET
        if error_type:
            attrs["error.type"] = error_type
            status_code = StatusCode.ERROR
        name = f"{method} {route}" if server else method
        if method == "_OTHER":
            name = "HTTP"
        return attrs, name, status_code

    def _route(self, pid: int, route: str) -> str:
        routes = self._routes.get(pid)
        if routes is None:
            if len(self._routes) >= MAX_CACHED:  # processes come and go: forget them all at once
                self._routes.clear()
            routes = self._routes[pid] = set()
        if route in routes:
            return route
        if len(routes) >= MAX_ROUTES:
            return "_OTHER"
        routes.add(route)
        return route
