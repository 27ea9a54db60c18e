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

from otelbpf.protocols import http1
from otelbpf.signals.model import SpanKind, SpanRecord, StatusCode

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
    """A span with what the metrics and views need besides the OTLP record."""

    pid: int
    span: SpanRecord
    duration_s: float
    method: str
    route: str
    scheme: str
    status: int | None
    error_type: str | None


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
        attrs, name, status_code, method, route, scheme, error_type, context = known
        server = m.direction == 1
        trace_id, span_id, parent_id = self._span_ids(context, server, m)
        span = SpanRecord(
            trace_id=trace_id, span_id=span_id, parent_span_id=parent_id, name=name,
            kind=SpanKind.SERVER if server else SpanKind.CLIENT,
            start_time_unix_nano=m.ktime_ns + self._offset, end_time_unix_nano=end_ns + self._offset,
            attributes=attrs, status_code=status_code)
        self._on_span(CompletedSpan(m.pid, span, max(end_ns - m.ktime_ns, 0) / 1e9, method, route, scheme,
                                    status, error_type))

    def _describe_exchange(self, m: Message, request: http1.Request, status: int) -> tuple:
        attrs, name, status_code, method, route, scheme, error_type = self._describe(
            m, request, m.direction == 1, status, None)
        return (MappingProxyType(attrs), name, status_code, method, route, scheme, error_type,
                http1.parse_traceparent(request.traceparent))

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
        attrs, name, status_code, method, route, scheme, error_type = described
        attrs = dict(attrs)
        attrs["network.peer.port"] = m.peer_port
        span = SpanRecord(
            trace_id=exchange.trace_id, span_id=exchange.span_id, parent_span_id=exchange.parent_span_id,
            name=name, kind=SpanKind.SERVER if server else SpanKind.CLIENT,
            start_time_unix_nano=exchange.start_ns + self._offset, end_time_unix_nano=end_ns + self._offset,
            attributes=attrs, status_code=status_code,
            status_message=failure.replace("_", " ") if failure else "")
        self._on_span(CompletedSpan(m.pid, span, max(end_ns - exchange.start_ns, 0) / 1e9, method, route,
                                    scheme, status, error_type))

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
        return attrs, name, status_code, method, route, scheme, error_type

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

