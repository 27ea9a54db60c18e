"""Memcached's text protocol (classic and meta commands) paired with the server's answers.

Commands are lines, storage commands carry a data block, and the server answers in order,
so a FIFO pairs them; what ends an answer depends on the command (END after retrievals and
stats, one line otherwise). noreply commands get no answer and are exchanges of their own.
A miss (END with no VALUE, NOT_FOUND, EN) is not an error; ERROR, CLIENT_ERROR and
SERVER_ERROR are, and name error.type.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .exchange import MAX_PENDING, Direction, Exchange, Malformed, QueuedSession

MAX_LINE = 8192
STORAGE = frozenset({"set", "add", "replace", "append", "prepend", "cas"})
RETRIEVAL = frozenset({"get", "gets", "gat", "gats"})
LISTING = frozenset({"stats"})  # lines until END
SINGLE = frozenset({"delete", "incr", "decr", "touch", "version", "flush_all", "verbosity", "cache_memlimit",
                    "shutdown", "mn", "md", "ma", "mg", "ms", "me", "lru_crawler", "slabs", "watch"})
NO_ANSWER = frozenset({"quit"})
ERRORS = ("ERROR", "CLIENT_ERROR", "SERVER_ERROR")


@dataclass(slots=True)
class _Command:
    name: str
    keys: int
    start_ns: int
    hits: int = 0


class MemcachedSession(QueuedSession):
    protocol = "memcached"

    def __init__(self, *, keep_literals: bool = False) -> None:
        super().__init__(keep_literals=keep_literals)
        self.pending: deque[_Command] = deque()

    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        buffer = self.buffers[direction]
        out: list[Exchange] = []
        while True:
            end = buffer.line_end(MAX_LINE)
            if end < 0:
                return out
            line = bytes(buffer.data[:end])
            start = buffer.ts_at(0)  # when the line's first byte came
            parts = line.split()
            body = self._body_size(direction, parts)
            if body is not None:
                if body < 0 or body > 1 << 30:
                    raise Malformed("bad data block size")
                if len(buffer.data) < end + 2 + body + 2:
                    if len(buffer.data) > MAX_LINE:  # a large value: skip it as it arrives
                        buffer.consume(end + 2 + body + 2)
                    else:
                        return out
                else:
                    buffer.consume(end + 2 + body + 2)
            else:
                buffer.consume(end + 2)
            if direction is Direction.CLIENT:
                self._command(parts, start, out)
            else:
                exchange = self._answer(parts, ts_ns)
                if exchange is not None:
                    out.append(exchange)

    def _body_size(self, direction: Direction, parts: list[bytes]) -> int | None:
        """The size of the data block after this line, if it has one."""
        if not parts:
            return None
        word = parts[0]
        try:
            if direction is Direction.CLIENT:
                if word.decode("ascii", "replace") in STORAGE and len(parts) >= 5:
                    return int(parts[4])
                if word == b"ms" and len(parts) >= 3:
                    return int(parts[2])
            elif word == b"VALUE" and len(parts) >= 4:
                return int(parts[3])
            elif word == b"VA" and len(parts) >= 2:
                return int(parts[1])
        except ValueError:
            raise Malformed("data block size is not a number") from None
        return None

    def _command(self, parts: list[bytes], ts_ns: int, out: list[Exchange]) -> None:
        if not parts:
            raise Malformed("empty command line")
        name = parts[0].decode("ascii", "replace").lower()
        if not name.isalpha() and name not in ("flush_all", "cache_memlimit", "lru_crawler"):
            raise Malformed(f"not a command: {name[:20]!r}")
        if name in NO_ANSWER:
            return
        keys = len(parts) - 1 if name in RETRIEVAL else 1
        if name in ("gat", "gats"):
            keys -= 1  # the first argument is the expiry
        command = _Command(name, keys, ts_ns)
        quiet = parts[-1] == b"noreply" or (name in ("mg", "ms", "md", "ma") and b"q" in parts[2:])
        if quiet:
            out.append(self._exchange(command, ts_ns, None))  # no answer comes: the exchange is the send itself
            return
        if name not in STORAGE | RETRIEVAL | LISTING | SINGLE:
            self.counters["unknown_command"] += 1
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.counters["evicted"] += 1
        self.pending.append(command)

    def _answer(self, parts: list[bytes], ts_ns: int) -> Exchange | None:
        if not self.pending:
            self.counters["unsolicited"] += 1
            return None
        command = self.pending[0]
        word = parts[0].decode("ascii", "replace") if parts else ""
        if word in ERRORS:
            self.pending.popleft()
            return self._exchange(command, ts_ns, word)
        if command.name in RETRIEVAL or command.name in LISTING:
            if word == "VALUE":
                command.hits += 1
                return None
            if word == "STAT":
                return None
            if word != "END":
                raise Malformed(f"{word[:20]!r} in a {command.name} answer")
        self.pending.popleft()
        return self._exchange(command, ts_ns, None)

    def _exchange(self, command: _Command, end_ns: int, error: str | None, complete: bool = True) -> Exchange:
        attributes: dict[str, str | int] = {"db.system.name": "memcached", "db.operation.name": command.name}
        if command.name in RETRIEVAL:
            attributes["db.operation.batch.size"] = command.keys
            attributes["db.response.returned_rows"] = command.hits
        if error is not None:
            attributes["db.response.status_code"] = error
        return Exchange("memcached", command.name, command.start_ns, end_ns, attributes, error, complete)


    def close(self, ts_ns: int) -> list[Exchange]:
        out = [self._exchange(command, ts_ns, None, complete=False) for command in self.pending]
        self.pending.clear()
        return out
