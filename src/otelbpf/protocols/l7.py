"""Connections' bytes -> request/response exchanges, for every protocol parsed here.

A Connection detects its protocol from the first bytes of each direction (or is told it, as
a configured port hint would), then hands every chunk to that protocol's session. Connections
holds many, bounded: the least recently fed is evicted (its waiting requests become
incomplete exchanges) and counted. Totals of what the parsers counted (malformed, oversize,
evicted, unsolicited...) are kept per protocol for the agent's own metrics.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

from .amqp import AmqpSession
from .detect import detect
from .exchange import Direction, Exchange, Session
from .http2 import Http2Session
from .memcached import MemcachedSession
from .mysql import MySQLSession
from .nats import NatsSession
from .postgres import PostgresSession
from .redis import RedisSession

SESSIONS: dict[str, type[Session]] = {
    "redis": RedisSession,
    "postgresql": PostgresSession,
    "mysql": MySQLSession,
    "memcached": MemcachedSession,
    "http2": Http2Session,
    "nats": NatsSession,
    "amqp": AmqpSession,
}
MAX_CONNECTIONS = 4096
MAX_UNDETECTED_CHUNKS = 8  # chunks kept while waiting for enough first bytes
DETECT_BYTES = 32          # what detection needs of each direction at most


class Connection:
    """One connection, fed in order: feed(direction, timestamp, bytes) -> exchanges."""

    def __init__(self, protocol: str | None = None, *, keep_literals: bool = False) -> None:
        self.keep_literals = keep_literals
        self.protocol = protocol
        self.session: Session | None = None
        self.ignored = False  # no protocol of ours: later bytes cost nothing
        self._first: dict[Direction, bytes] = {}
        self._held: list[tuple[Direction, int, bytes, int]] = []
        if protocol is not None:
            self._start(protocol)

    def feed(self, direction: Direction, ts_ns: int, chunk: bytes, missing: int = 0) -> list[Exchange]:
        """missing: bytes of this read or write the capture did not copy (see Session.feed)."""
        if self.ignored or not chunk:
            return []
        if self.session is not None:
            return self.session.feed(direction, ts_ns, chunk, missing)
        # A first message may come in pieces: look at up to DETECT_BYTES of each direction.
        self._first[direction] = (self._first.get(direction, b"") + chunk)[:DETECT_BYTES]
        self._held.append((direction, ts_ns, chunk, missing))
        found = detect(self._first.get(Direction.CLIENT, b""), self._first.get(Direction.SERVER, b""))
        if found is None:
            # Both sides spoke (a first message is whole once the other side answers it).
            if len(self._first) == 2 or len(self._held) >= MAX_UNDETECTED_CHUNKS:
                self._ignore()
            return []
        self.protocol = found
        self._start(found)
        held, self._held = self._held, []
        out: list[Exchange] = []
        if self.session is not None:
            for held_direction, held_ts, held_chunk, held_missing in held:
                out += self.session.feed(held_direction, held_ts, held_chunk, held_missing)
        return out

    def close(self, ts_ns: int) -> list[Exchange]:
        return self.session.close(ts_ns) if self.session is not None else []

    @property
    def counters(self) -> Counter[str]:
        return self.session.counters if self.session is not None else Counter()

    def _start(self, protocol: str) -> None:
        session_type = SESSIONS.get(protocol)
        if session_type is None:  # known (http1 is the HTTP sensor's) but not parsed here
            self._ignore()
            return
        self.session = session_type(keep_literals=self.keep_literals)

    def _ignore(self) -> None:
        self.ignored = True
        self._held.clear()
        self._first.clear()


class Connections:
    """Many connections by key (pid, fd, socket cookie...), bounded, least recently fed evicted."""

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS, keep_literals: bool = False,
                 port_hints: dict[int, str] | None = None) -> None:
        self.max_connections = max_connections
        self.keep_literals = keep_literals
        self.port_hints = port_hints or {}  # server port -> protocol, overriding detection
        self.table: OrderedDict[Hashable, Connection] = OrderedDict()
        self.totals: Counter[tuple[str, str]] = Counter()  # (protocol, reason) -> count

    def feed(self, key: Hashable, direction: Direction, ts_ns: int, chunk: bytes, missing: int = 0,
             server_port: int | None = None) -> list[Exchange]:
        connection = self.table.get(key)
        out: list[Exchange] = []
        if connection is None:
            if len(self.table) >= self.max_connections:
                _, evicted = self.table.popitem(last=False)
                self.totals[(evicted.protocol or "unknown", "connection_evicted")] += 1
                out += self._retire(evicted, ts_ns)
            hint = self.port_hints.get(server_port) if server_port is not None else None
            connection = self.table[key] = Connection(hint, keep_literals=self.keep_literals)
        else:
            self.table.move_to_end(key)
        return out + connection.feed(direction, ts_ns, chunk, missing)

    def close(self, key: Hashable, ts_ns: int) -> list[Exchange]:
        connection = self.table.pop(key, None)
        return self._retire(connection, ts_ns) if connection is not None else []

    def _retire(self, connection: Connection, ts_ns: int) -> list[Exchange]:
        out = connection.close(ts_ns)
        for reason, count in connection.counters.items():
            self.totals[(connection.protocol or "unknown", reason)] += count
        return out
