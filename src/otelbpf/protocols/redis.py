"""Redis (RESP2 and RESP3): commands paired with their replies in order.

Replies come back in the order commands were sent, so a FIFO of commands pairs a pipeline
of any depth. MULTI, each queued command (+QUEUED) and EXEC are exchanges of their own.
Push messages (RESP3 `>`) and attributes (`|`) answer no command and are skipped; a reply
with no command waiting (pub/sub messages in RESP2) is counted as unsolicited.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .exchange import MAX_PENDING, Direction, Exchange, Malformed, QueuedSession

MAX_DEPTH = 8            # nesting of aggregate replies
MAX_ELEMENTS = 1 << 20   # elements of one aggregate
MAX_LINE = 64 * 1024     # an inline command or a simple reply line
_AGGREGATES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}
_BLOBS = frozenset(b"$!=")
_LINES = frozenset(b"+-:_,#(")


@dataclass(slots=True)
class Reply:
    kind: int            # the RESP type byte
    error: str | None    # the error prefix of -ERR... / !blob errors (ERR, WRONGTYPE...)


def _line_end(data: bytearray, pos: int) -> int:
    end = data.find(b"\r\n", pos)
    if data.find(b"\0", pos, end if end >= 0 else len(data)) >= 0:
        raise Malformed("a zero byte in a line (bytes the capture did not copy)")
    if end < 0:
        if len(data) - pos > MAX_LINE:
            raise Malformed("line too long")
        return -1
    return end


def _int(raw: bytes | bytearray) -> int:
    if not raw or len(raw) > 20 or not raw.lstrip(b"-").isdigit():
        raise Malformed(f"bad length {bytes(raw[:20])!r}")
    return int(raw)


def skip_value(data: bytearray, pos: int, depth: int = 0) -> int:
    """Offset after the RESP value at pos; -1 when it is not all there yet."""
    if pos >= len(data):
        return -1
    kind = data[pos]
    end = _line_end(data, pos + 1)
    if end < 0:
        return -1
    if kind in _LINES:
        return end + 2
    if kind in _BLOBS:
        size = _int(data[pos + 1:end])
        if size < 0:
            return end + 2  # $-1: null bulk string
        stop = end + 2 + size + 2
        return stop if stop <= len(data) else -1
    per = _AGGREGATES.get(kind)
    if per is None:
        raise Malformed(f"not a RESP type: {kind:#x}")
    count = _int(data[pos + 1:end])
    if count > MAX_ELEMENTS or depth >= MAX_DEPTH:
        raise Malformed("aggregate too large or too deep")
    pos = end + 2
    for _ in range(max(count, 0) * per):
        pos = skip_value(data, pos, depth + 1)
        if pos < 0:
            return -1
    if kind == ord("|"):  # an attribute precedes the reply it describes
        return skip_value(data, pos, depth + 1)
    return pos


def parse_command(data: bytearray, pos: int) -> tuple[list[bytes], int] | None:
    """A client's command (a RESP array of bulk strings, or an inline line) and the offset
    after it; None when it is not all there yet."""
    if pos >= len(data):
        return None
    if data[pos] != ord("*"):
        end = _line_end(data, pos)
        if end < 0:
            return None
        return bytes(data[pos:end]).split(), end + 2
    end = _line_end(data, pos + 1)
    if end < 0:
        return None
    count = _int(data[pos + 1:end])
    if count > MAX_ELEMENTS:
        raise Malformed("command with too many arguments")
    args: list[bytes] = []
    pos = end + 2
    for _ in range(max(count, 0)):
        if pos >= len(data):
            return None
        if data[pos] != ord("$"):
            raise Malformed("command argument is not a bulk string")
        end = _line_end(data, pos + 1)
        if end < 0:
            return None
        size = _int(data[pos + 1:end])
        stop = end + 2 + max(size, 0)
        if stop + 2 > len(data):
            return None
        if len(args) < 64:  # the name and first arguments are all anyone reads
            args.append(bytes(data[end + 2:stop]))
        pos = stop + 2
    return args, pos


def parse_reply(data: bytearray, pos: int) -> tuple[Reply, int] | None:
    """The server's reply at pos and the offset after it; None when not all there yet."""
    end = skip_value(data, pos)
    if end < 0:
        return None
    while data[pos] == ord("|"):  # an attribute map precedes the reply proper
        head = data.find(b"\r\n", pos)
        count = _int(data[pos + 1:head])
        pos = head + 2
        for _ in range(2 * max(count, 0)):
            pos = skip_value(data, pos, 1)
    kind = data[pos]
    error = None
    if kind == ord("-"):
        line = bytes(data[pos + 1:data.find(b"\r\n", pos)])
        error = line.split(b" ", 1)[0].decode("ascii", "replace") or "ERR"
    elif kind == ord("!"):
        head = data.find(b"\r\n", pos)
        error = bytes(data[head + 2:end - 2]).split(b" ", 1)[0].decode("ascii", "replace") or "ERR"
    return Reply(kind, error), end


@dataclass(slots=True)
class _Pending:
    name: str
    args: list[bytes]
    start_ns: int


class RedisSession(QueuedSession):
    protocol = "redis"

    def __init__(self, *, keep_literals: bool = False) -> None:
        super().__init__(keep_literals=keep_literals)
        self.pending: deque[_Pending] = deque()
        self.namespace = 0

    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        buffer = self.buffers[direction]
        data = buffer.data
        pos = 0
        out: list[Exchange] = []
        try:
            if direction is Direction.CLIENT:
                while (parsed := parse_command(data, pos)) is not None:
                    start = buffer.ts_at(pos)  # when the command's first byte came
                    args, pos = parsed
                    if args:
                        self._request(args, start)
            else:
                while (reply := parse_reply(data, pos)) is not None:
                    value, pos = reply
                    exchange = self._reply(value, ts_ns)
                    if exchange is not None:
                        out.append(exchange)
        finally:
            buffer.consume(pos)
        return out

    def _request(self, args: list[bytes], ts_ns: int) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.counters["evicted"] += 1
        name = args[0].decode("ascii", "replace").upper()
        self.pending.append(_Pending(name, args, ts_ns))

    def _reply(self, reply: Reply, ts_ns: int) -> Exchange | None:
        if reply.kind == ord(">"):
            self.counters["push"] += 1
            return None
        if not self.pending:
            self.counters["unsolicited"] += 1
            return None
        request = self.pending.popleft()
        if request.name == "SELECT" and reply.error is None and len(request.args) > 1 and request.args[1].isdigit():
            self.namespace = int(request.args[1])
        return self._exchange(request, ts_ns, reply.error, complete=True)

    def _exchange(self, request: _Pending, end_ns: int, error: str | None, complete: bool) -> Exchange:
        if self.keep_literals:
            text = b" ".join(request.args).decode("utf-8", "replace")
        else:
            text = " ".join([request.name] + ["?"] * (len(request.args) - 1))
        attributes: dict[str, str | int] = {
            "db.system.name": "redis",
            "db.operation.name": request.name,
            "db.namespace": str(self.namespace),
            "db.query.text": text[:2048],
        }
        if error is not None:
            attributes["db.response.status_code"] = error
        return Exchange("redis", request.name, request.start_ns, end_ns, attributes, error, complete)


    def close(self, ts_ns: int) -> list[Exchange]:
        out = [self._exchange(request, ts_ns, None, complete=False) for request in self.pending]
        self.pending.clear()
        return out
