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

import ipaddress
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from otelbpf.protocols import http1
from otelbpf.signals.model import SpanKind, SpanRecord, StatusCode

MAX_CONNECTIONS = 65536  # connections with state; the least recently used go first
MAX_PENDING = 64         # open exchanges per connection and direction
MAX_ROUTES = 2000        # distinct routes per process before new ones become "_OTHER"


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
    server: deque[Exchange] = field(default_factory=deque)  # requests this process read
    client: deque[Exchange] = field(default_factory=deque)  # requests this process wrote


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


def address_text(family: int, raw: bytes) -> str:
    if family == 10:  # AF_INET6
        addr = ipaddress.IPv6Address(raw)
        return str(addr.ipv4_mapped or addr)
    return str(ipaddress.IPv4Address(raw[:4]))


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
        self.unparsed = 0      # messages that started like HTTP but did not parse
        self.unmatched = 0     # responses with no request seen (connection older than the agent)
        self.evicted = 0       # open exchanges lost to the bounds

    def feed(self, m: Message) -> None:
        key = (m.pid, m.sock)
        if m.direction == 2:
            conn = self._connections.pop(key, None)
            if conn is not None:
                for exchange in (*conn.server, *conn.client):
                    self._finish(exchange, m.ktime_ns, None, "connection_closed")
            return
        conn = self._connections.get(key)
        if conn is None:
            conn = self._connections[key] = _Connection()
            if len(self._connections) > MAX_CONNECTIONS:
                _, old = self._connections.popitem(last=False)
                self.evicted += len(old.server) + len(old.client)
        else:
            self._connections.move_to_end(key)
        if m.payload.startswith(b"HTTP/"):
            self._responses(conn, m)
        else:
            self._requests(conn, m)

    def _requests(self, conn: _Connection, m: Message) -> None:
        requests = http1.parse_requests(m.payload)
        if not requests:
            self.unparsed += 1
            return
        server = m.direction == 1
        queue = conn.server if server else conn.client
        for request in requests:
            exchange = self._open(request, m, server)
            if len(queue) >= MAX_PENDING:
                queue.popleft()
                self.evicted += 1
            queue.append(exchange)
            if server:
                self._active_server[(m.pid, m.tid)] = exchange

    def _open(self, request: http1.Request, m: Message, server: bool) -> Exchange:
        context = http1.parse_traceparent(request.traceparent)
        span_id = self._rng.getrandbits(64).to_bytes(8, "big")
        if server:
            if context:
                return Exchange(request, m.ktime_ns, context.trace_id, span_id, context.parent_id, m)
            return Exchange(request, m.ktime_ns, self._trace_id(), span_id, b"", m)
        if context:  # an instrumented client: its header names the span it sends from
            return Exchange(request, m.ktime_ns, context.trace_id, context.parent_id, b"", m)
        parent = self._active_server.get((m.pid, m.tid))
        if parent is not None:
            return Exchange(request, m.ktime_ns, parent.trace_id, span_id, parent.span_id, m)
        return Exchange(request, m.ktime_ns, self._trace_id(), span_id, b"", m)

    def _trace_id(self) -> bytes:
        return self._rng.getrandbits(128).to_bytes(16, "big")

    def _responses(self, conn: _Connection, m: Message) -> None:
        responses = http1.parse_responses(m.payload)
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
            self._finish(queue.popleft(), m.ktime_ns, response.status, None)

    def _finish(self, exchange: Exchange, end_ns: int, status: int | None, failure: str | None) -> None:
        m, request = exchange.message, exchange.request
        server = m.direction == 1
        if server and self._active_server.get((m.pid, m.tid)) is exchange:
            del self._active_server[(m.pid, m.tid)]
        scheme = "https" if m.tls else "http"
        method = http1.method_attribute(request.method)
        path, query = http1.split_target(request.target)
        route = self._route(m.pid, http1.route_of(path))
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
        span = SpanRecord(
            trace_id=exchange.trace_id, span_id=exchange.span_id, parent_span_id=exchange.parent_span_id,
            name=name, kind=SpanKind.SERVER if server else SpanKind.CLIENT,
            start_time_unix_nano=exchange.start_ns + self._offset, end_time_unix_nano=end_ns + self._offset,
            attributes=attrs, status_code=status_code,
            status_message=failure.replace("_", " ") if failure else "")
        self._on_span(CompletedSpan(m.pid, span, max(end_ns - exchange.start_ns, 0) / 1e9, method, route,
                                    scheme, status, error_type))

    def _route(self, pid: int, route: str) -> str:
        routes = self._routes.setdefault(pid, set())
        if route in routes:
            return route
        if len(routes) >= MAX_ROUTES:
            return "_OTHER"
        routes.add(route)
        return route

