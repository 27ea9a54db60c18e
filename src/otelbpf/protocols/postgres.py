"""PostgreSQL frontend/backend protocol 3.0: simple and extended queries paired with their
results, errors with their SQLSTATE.

Extended-protocol statements are remembered per connection (Parse names them, Bind turns
them into portals, Execute runs a portal), so each Execute is named by its SQL even when the
statement was prepared long before. The server answers messages in order, so a queue of
what the client sent pairs every reply; after an ErrorResponse the server skips to the next
Sync, and so does the queue. An SSLRequest refused ('N') continues in clear text; one
accepted ('S') turns the connection opaque.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from dataclasses import dataclass

from . import sql
from .detect import PG_CANCEL_REQUEST, PG_GSSENC_REQUEST, PG_PROTOCOL_3, PG_SSL_REQUEST
from .exchange import MAX_PENDING, Direction, Exchange, Malformed, QueuedSession

MAX_STATEMENTS = 1024        # named statements and portals remembered per connection
MAX_MESSAGE = 1 << 30        # the protocol's own limit
SKIPPED = frozenset(b"Dd")   # data rows and copy data: counted, their bodies never buffered
_CLIENT_TYPES = frozenset(b"QPBDESCHXFpdcf")
_SERVER_TYPES = frozenset(b"RSKZTDCEINAnts123GHWdcvV")


@dataclass(slots=True)
class _Op:
    kind: str                  # the client message: Q, P, B, D, E, S, C, F
    start_ns: int
    query: str | None = None   # the SQL this op runs or prepares, when known
    rows: int = 0
    error: tuple[str, str] | None = None  # (SQLSTATE, message)
    tag: str = ""              # the CommandComplete tag ("SELECT 3")


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise Malformed("string without its terminating zero")
    return body[pos:end].decode("utf-8", "replace"), end + 1


def error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields by code: S severity, C SQLSTATE, M message..."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = _cstring(body, pos + 1)
        fields[code] = value
    return fields


class PostgresSession(QueuedSession):
    protocol = "postgresql"

    def __init__(self, *, keep_literals: bool = False) -> None:
        super().__init__(keep_literals=keep_literals)
        self.started = False           # the startup message was seen (or skipped: mid-stream)
        self.awaiting_encryption = False
        self.database: str | None = None
        self.user: str | None = None
        self.statements: OrderedDict[str, str] = OrderedDict()
        self.portals: OrderedDict[str, str | None] = OrderedDict()
        self.pending: deque[_Op] = deque()

    # -- framing ---------------------------------------------------------------------
    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        buffer = self.buffers[direction]
        out: list[Exchange] = []
        while buffer.data and not self.opaque:
            data = buffer.data
            if direction is Direction.SERVER and self.awaiting_encryption:
                self.awaiting_encryption = False
                answer = data[0]
                buffer.consume(1)
                if answer in b"SG":
                    self.opaque = True  # TLS or GSS encryption from here on
                    self.counters["encrypted"] += 1
                elif answer != ord("N"):
                    raise Malformed("answer to SSLRequest is not S, G or N")
                continue
            if direction is Direction.CLIENT and not self.started and data[0] == 0:
                if len(data) < 8:
                    break
                length = struct.unpack_from(">I", data)[0]
                if not 8 <= length <= 10_000:
                    raise Malformed("startup message length")
                if len(data) < length:
                    break
                self._startup(bytes(data[4:length]))
                buffer.consume(length)
                continue
            if len(data) < 5:
                break
            kind = data[0]
            length = struct.unpack_from(">I", data, 1)[0]
            if kind not in (_CLIENT_TYPES if direction is Direction.CLIENT else _SERVER_TYPES) or \
                    not 4 <= length <= MAX_MESSAGE:
                raise Malformed(f"message type {kind:#x} length {length}")
            self.started = True
            start = buffer.ts_at(0)  # when the message's first byte came
            if kind in SKIPPED and len(data) < 1 + length:
                body = b""
                buffer.consume(1 + length)  # the rest of a long row is skipped as it arrives
            elif len(data) < 1 + length:
                break
            else:
                body = bytes(data[5:1 + length])
                buffer.consume(1 + length)
            if direction is Direction.CLIENT:
                self._client(chr(kind), body, start)
            else:
                exchange = self._server(chr(kind), body, ts_ns)
                if exchange is not None:
                    out.append(exchange)
        return out

    def _startup(self, body: bytes) -> None:
        code = struct.unpack_from(">I", body)[0]
        if code in (PG_SSL_REQUEST, PG_GSSENC_REQUEST):
            self.awaiting_encryption = True
            return
        if code == PG_CANCEL_REQUEST:
            self.counters["cancel_request"] += 1
            return
        if code != PG_PROTOCOL_3:
            raise Malformed(f"startup protocol {code:#x}")
        pos, params = 4, {}
        while pos < len(body) and body[pos] != 0:
            key, pos = _cstring(body, pos)
            value, pos = _cstring(body, pos)
            params[key] = value
        self.user = params.get("user")
        self.database = params.get("database", self.user)
        self.started = True

    # -- what the client asks ------------------------------------------------------------
    def _client(self, kind: str, body: bytes, ts_ns: int) -> None:
        if kind == "Q":
            self._push(_Op("Q", ts_ns, _cstring(body, 0)[0]))
        elif kind == "P":
            name, pos = _cstring(body, 0)
            query, _ = _cstring(body, pos)
            self._remember(self.statements, name, query)
            self._push(_Op("P", ts_ns, query))
        elif kind == "B":
            portal, pos = _cstring(body, 0)
            statement, _ = _cstring(body, pos)
            prepared = self.statements.get(statement)
            if prepared is None:
                self.counters["unknown_statement"] += 1  # prepared before we were watching
            self._remember(self.portals, portal, prepared)
            self._push(_Op("B", ts_ns, prepared))
        elif kind == "E":
            portal, _ = _cstring(body, 0)
            self._push(_Op("E", ts_ns, self.portals.get(portal)))
        elif kind == "C":
            target, name = body[:1], _cstring(body, 1)[0]
            (self.statements if target == b"S" else self.portals).pop(name, None)
            self._push(_Op("C", ts_ns))
        elif kind in "DSF":
            self._push(_Op(kind, ts_ns))

    def _push(self, op: _Op) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.counters["evicted"] += 1
        self.pending.append(op)

    def _remember(self, table: OrderedDict, name: str, value: str | None) -> None:
        table[name] = value
        table.move_to_end(name)
        if len(table) > MAX_STATEMENTS:
            table.popitem(last=False)
            self.counters["statements_evicted"] += 1

    # -- what the server answers ---------------------------------------------------------
    def _server(self, kind: str, body: bytes, ts_ns: int) -> Exchange | None:
        head = self.pending[0] if self.pending else None
        if kind in "RSKNAv" or (kind in "dcGHW" and head is not None):
            return None  # authentication, parameters, notices, notifications, copy data
        if head is None:
            if kind == "E":
                self.counters["errors_outside_queries"] += 1  # authentication failed, shutdown...
            elif kind != "Z":
                self.counters["unsolicited"] += 1
            return None
        if kind == "D":
            head.rows += 1
            return None
        if kind == "T":
            if head.kind == "D":
                self.pending.popleft()
            return None
        if kind == "n":
            if head.kind == "D":
                self.pending.popleft()
            return None
        if kind == "t":
            return None  # the statement's parameters; its row description follows
        if kind in "123V":  # ParseComplete, BindComplete, CloseComplete, FunctionCallResponse
            self.pending.popleft()
            return None
        if kind in "CIs":
            if kind == "C":
                head.tag = _cstring(body, 0)[0]
            if head.kind == "E":
                self.pending.popleft()
                return self._exchange(head, ts_ns)
            return None  # one statement of a simple query; the query ends at ReadyForQuery
        if kind == "E":
            fields = error_fields(body)
            error = (fields.get("C", "XX000"), fields.get("M", ""))
            if head.kind == "Q":
                head.error = head.error or error
                return None
            return self._extended_error(error, ts_ns)
        if kind == "Z":
            self.pending.popleft()
            if head.kind == "Q":
                return self._exchange(head, ts_ns)
            return None
        self.counters["unexpected"] += 1
        return None

    def _extended_error(self, error: tuple[str, str], ts_ns: int) -> Exchange | None:
        """The server skips every message up to the next Sync: the first Execute among them
        (or the failing Parse itself) carries the error."""
        failed = self.pending.popleft()
        skipped = [failed]
        while self.pending and self.pending[0].kind != "S":
            skipped.append(self.pending.popleft())
        carrier = next((op for op in skipped if op.kind == "E"), failed if failed.kind == "P" else None)
        if carrier is None:
            self.counters["errors_outside_queries"] += 1
            return None
        carrier.error = error
        carrier.start_ns = min(carrier.start_ns, failed.start_ns)
        return self._exchange(carrier, ts_ns)

    def _exchange(self, op: _Op, end_ns: int, complete: bool = True) -> Exchange:
        query = op.query or ""
        operation = sql.operation_name(query)
        attributes: dict[str, str | int] = {"db.system.name": "postgresql"}
        if operation:
            attributes["db.operation.name"] = operation
        if self.database:
            attributes["db.namespace"] = self.database
        if query:
            attributes["db.query.text"] = sql.query_text(query, keep_literals=self.keep_literals)
            table = sql.collection_name(query, operation)
            if table:
                attributes["db.collection.name"] = table
        if op.tag.startswith(("SELECT", "FETCH", "MOVE", "COPY")) and op.tag.rsplit(" ", 1)[-1].isdigit():
            attributes["db.response.returned_rows"] = int(op.tag.rsplit(" ", 1)[-1])
        error_type = None
        if op.error is not None:
            attributes["db.response.status_code"] = error_type = op.error[0]
        return Exchange("postgresql", operation, op.start_ns, end_ns, attributes, error_type, complete)


    def close(self, ts_ns: int) -> list[Exchange]:
        out = [self._exchange(op, ts_ns, complete=False) for op in self.pending if op.kind in "QE"]
        self.pending.clear()
        return out
