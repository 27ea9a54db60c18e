"""What every L7 session parser shares: the two directions of a connection, the exchange a
request and its response make, and a bounded byte buffer that reassembles one direction.

Pure: a session is fed the bytes of one connection in order, each chunk with its direction
and a timestamp, and returns the exchanges that chunk completed. Malformed input is counted
in the session's counters and never raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# A message still incomplete after this many buffered bytes is given up (counted "oversize"):
# per-connection state stays bounded whatever a peer sends.
MAX_BUFFER = 1 << 20
# Bytes a capture did not copy (it copies a prefix of each read or write) are stood in for
# by zeros, so the message they belong to keeps its framing, up to what a buffer may hold;
# more, and the direction starts over from the next chunk.
MAX_PADDING = MAX_BUFFER
# Requests waiting for their responses, per connection; older ones are evicted and counted.
MAX_PENDING = 1024

Attribute = str | int


class Direction(IntEnum):
    CLIENT = 0  # bytes the side that opened the connection sent
    SERVER = 1  # bytes the side that accepted it sent


class Malformed(ValueError):
    """Bytes that cannot be this protocol: the session counts them and resynchronises."""


@dataclass(slots=True)
class Exchange:
    """A request and its response (or a one-way message): one span's worth."""

    protocol: str                  # "redis", "postgresql", "mysql", "memcached", "http2", "nats", "amqp"
    operation: str                 # db.operation.name, the rpc method, or the messaging operation
    start_ns: int                  # when the chunk holding the request was seen
    end_ns: int                    # when the chunk completing the response was seen
    attributes: dict[str, Attribute] = field(default_factory=dict)
    error_type: str | None = None  # error.type; None when it succeeded
    complete: bool = True          # False: the connection ended before the response

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


class StreamBuffer:
    """Bytes of one direction not yet parsed. Parsers read from `data` at `pos` and consume;
    `skip` drops bytes still to come (a large body nobody needs) without buffering them.
    `ts_at(pos)` is when the chunk holding data[pos] was seen: a message's start time is when
    its first byte came, whatever chunk completed it."""

    __slots__ = ("consumed", "data", "marks", "skip")

    def __init__(self) -> None:
        self.data = bytearray()
        self.skip = 0
        self.consumed = 0  # bytes consumed since the start, for the marks
        self.marks: deque[tuple[int, int]] = deque()  # (offset after a chunk, its timestamp)

    def add(self, chunk: bytes, ts_ns: int = 0) -> bool:
        """Append a chunk; False when the buffer would pass MAX_BUFFER (it is then cleared)."""
        if self.skip:
            dropped = min(self.skip, len(chunk))
            self.skip -= dropped
            self.consumed += dropped
            chunk = chunk[dropped:]
        if not chunk:
            return True
        self.data += chunk
        self.marks.append((self.consumed + len(self.data), ts_ns))
        if len(self.data) > MAX_BUFFER:
            self.clear()
            return False
        return True

    def line_end(self, max_line: int) -> int:
        """Where the first CRLF-ended line of a text protocol ends (-1: not all here yet).
        Raises Malformed for a zero byte in it (bytes the capture did not copy) or a line
        longer than max_line."""
        end = self.data.find(b"\r\n")
        if self.data.find(b"\0", 0, end if end >= 0 else len(self.data)) >= 0:
            raise Malformed("a zero byte in a line (bytes the capture did not copy)")
        if end < 0 and len(self.data) > max_line:
            raise Malformed("line too long")
        return end

    def ts_at(self, pos: int) -> int:
        offset = self.consumed + pos
        for end, ts_ns in self.marks:
            if offset < end:
                return ts_ns
        return self.marks[-1][1] if self.marks else 0

    def consume(self, count: int) -> None:
        if count > len(self.data):
            self.skip += count - len(self.data)
            count = len(self.data)
        del self.data[:count]
        self.consumed += count
        while self.marks and self.marks[0][0] <= self.consumed:
            self.marks.popleft()

    def clear(self) -> None:
        self.consumed += len(self.data)
        self.data.clear()
        self.marks.clear()
        self.skip = 0


class Session(ABC):
    """Base of the per-connection parsers: one buffer per direction, counters, and the
    feed/close contract. Subclasses implement _parse(direction, ts) -> exchanges."""

    protocol = ""

    def __init__(self, *, keep_literals: bool = False) -> None:
        self.keep_literals = keep_literals
        self.buffers = (StreamBuffer(), StreamBuffer())
        self.counters: Counter[str] = Counter()
        self.opaque = False  # TLS started or the stream was lost for good: bytes are ignored

    def feed(self, direction: Direction, ts_ns: int, chunk: bytes, missing: int = 0) -> list[Exchange]:
        """The exchanges this chunk completes. missing: bytes of the same read or write that
        the capture did not copy. Bytes the parser was skipping anyway (a long row, a body)
        cost nothing; up to MAX_PADDING more are zeros (a query's text ends where the capture
        did, counted "padded_bytes"); past that the direction starts over (counted "gap")."""
        out = self._feed(direction, ts_ns, chunk)
        if missing <= 0 or self.opaque:
            return out
        buffer = self.buffers[direction]
        covered = min(buffer.skip, missing)
        buffer.skip -= covered
        buffer.consumed += covered
        missing -= covered
        if not missing:
            return out
        if missing <= MAX_PADDING:
            self.counters["padded_bytes"] += missing
            return out + self._feed(direction, ts_ns, bytes(missing))
        self.counters["gap"] += 1
        buffer.clear()
        self.resync(direction)
        return out

    def _feed(self, direction: Direction, ts_ns: int, chunk: bytes) -> list[Exchange]:
        if self.opaque or not chunk:
            return []
        buffer = self.buffers[direction]
        if not buffer.add(chunk, ts_ns):
            self.counters["oversize"] += 1
            self.resync(direction)
            return []
        try:
            return self._parse(direction, ts_ns)
        except Malformed:
            self.counters["malformed"] += 1
            buffer.clear()
            self.resync(direction)
            return []

    def close(self, ts_ns: int) -> list[Exchange]:
        """The connection ended: requests still waiting become incomplete exchanges."""
        return []

    def resync(self, direction: Direction) -> None:
        """A direction lost its framing: forget what pairs with it (subclasses count it). By
        default nothing: a session without pending requests has nothing to forget."""
        return None

    @abstractmethod
    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        """The exchanges the buffered bytes of this direction complete (they consume them)."""


class QueuedSession(Session):
    """A session whose requests wait in order for their responses in `pending` (a list or a
    deque the subclass fills): when a direction loses its framing, the requests waiting can no
    longer pair with what the other side sends, so they are counted and dropped, and the other
    side's buffered bytes with them."""

    pending: Any

    def resync(self, direction: Direction) -> None:
        if self.pending:
            self.counters["unpaired"] += len(self.pending)
            self.pending.clear()
        self.buffers[1 - direction].clear()  # the other side's replies would pair wrongly now
