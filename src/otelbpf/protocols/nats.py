"""NATS client protocol: PUB/HPUB (a client publishing) and MSG/HMSG (the server delivering to a
subscriber) as messaging exchanges.

NATS messages are one-way: an exchange is the message itself, at the time its chunk was
seen, named "publish" or "receive" after the semantic conventions' operation types (send,
receive). Control lines (INFO, CONNECT, SUB, PING, +OK) are parsed to stay in step; -ERR is
counted.
"""

from __future__ import annotations

from .exchange import Direction, Exchange, Malformed, Session

MAX_LINE = 64 * 1024
MAX_PAYLOAD = 64 << 20
CLIENT_VERBS = frozenset({b"CONNECT", b"PUB", b"HPUB", b"SUB", b"UNSUB", b"PING", b"PONG"})
SERVER_VERBS = frozenset({b"INFO", b"MSG", b"HMSG", b"+OK", b"-ERR", b"PING", b"PONG"})


class NatsSession(Session):
    protocol = "nats"

    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        buffer = self.buffers[direction]
        out: list[Exchange] = []
        verbs = CLIENT_VERBS if direction is Direction.CLIENT else SERVER_VERBS
        while True:
            end = buffer.line_end(MAX_LINE)
            if end < 0:
                return out
            parts = bytes(buffer.data[:end]).split()
            verb = parts[0].upper() if parts else b""
            if verb not in verbs:
                raise Malformed(f"not a NATS verb: {verb[:16]!r}")
            size = header_size = 0
            start = buffer.ts_at(0)  # when the line's first byte came
            if verb in (b"PUB", b"MSG", b"HPUB", b"HMSG"):
                size, header_size = self._sizes(verb, parts)
                if len(buffer.data) < end + 2 + size + 2:
                    if len(buffer.data) <= MAX_LINE:
                        return out  # wait for the payload
                    buffer.consume(end + 2 + size + 2)  # a large payload: skipped as it arrives
                else:
                    buffer.consume(end + 2 + size + 2)
                out.append(self._message(verb, parts, size - header_size, start))
                continue
            buffer.consume(end + 2)
            if verb == b"-ERR":
                self.counters["server_errors"] += 1

    @staticmethod
    def _sizes(verb: bytes, parts: list[bytes]) -> tuple[int, int]:
        """(payload bytes after the line, of which headers) for PUB/MSG/HPUB/HMSG."""
        headers = verb in (b"HPUB", b"HMSG")
        least = (3 if verb in (b"PUB", b"HPUB") else 4) + (1 if headers else 0)  # MSG adds the sid
        if len(parts) < least or not parts[-1].isdigit() or (headers and not parts[-2].isdigit()):
            raise Malformed(f"{verb.decode()} without its sizes")
        total = int(parts[-1])
        header_size = int(parts[-2]) if headers else 0
        if total > MAX_PAYLOAD or header_size > total:
            raise Malformed("message sizes")
        return total, header_size

    def _message(self, verb: bytes, parts: list[bytes], body_size: int, ts_ns: int) -> Exchange:
        publish = verb in (b"PUB", b"HPUB")
        subject = parts[1].decode("utf-8", "replace")
        operation = "publish" if publish else "receive"
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.operation.name": operation,
            "messaging.operation.type": "send" if publish else "receive",
            "messaging.destination.name": subject,
            "messaging.message.body.size": body_size,
        }
        return Exchange("nats", operation, ts_ns, ts_ns, attributes)
