"""MySQL and MariaDB client/server protocol: COM_QUERY and prepared statements
(COM_STMT_PREPARE, COM_STMT_EXECUTE, statement ids remembered per connection) paired with
their OK, ERR or result set.

Packets are a 3-byte length and a sequence number; each command starts a new sequence from
the client and the server's answer ends where the protocol says (an OK or ERR, or a result
set's terminator, following more results while the server says so). Whether result sets end
with EOF packets or OK packets depends on CLIENT_DEPRECATE_EOF, read from the handshake; a
connection first seen mid-stream assumes the modern form. A client asking for TLS (an
SSLRequest, CLIENT_SSL) turns the connection opaque.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from dataclasses import dataclass

from . import sql
from .exchange import MAX_PENDING, Direction, Exchange, Malformed, QueuedSession

CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_COMPRESS = 0x20
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_DEPRECATE_EOF = 0x1000000
CLIENT_QUERY_ATTRIBUTES = 0x8000000
SERVER_MORE_RESULTS_EXISTS = 0x8
MAX_STATEMENTS = 1024
COM_QUIT, COM_INIT_DB, COM_QUERY = 0x01, 0x02, 0x03
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE = 0x16, 0x17, 0x18, 0x19
NO_RESPONSE = frozenset({COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE})
COMMANDS = {0x0e: "PING", 0x09: "STATISTICS", 0x1a: "STMT_RESET", 0x1b: "SET_OPTION", 0x1f: "RESET_CONNECTION",
            0x11: "CHANGE_USER", 0x0d: "DEBUG", 0x0c: "PROCESS_KILL", 0x04: "FIELD_LIST"}


@dataclass(slots=True)
class _Command:
    code: int
    start_ns: int
    query: str | None = None
    statement_id: int | None = None
    # Where its answer is: "first" packet, "columns" (left to come), "column_eof", "rows";
    # a prepare's "params", "params_eof", "prepare_columns", "prepare_columns_eof".
    state: str = "first"
    left: int = 0
    columns_after: int = 0  # a prepare's column definitions, after its parameters
    error: tuple[str, str] | None = None  # (error number, SQLSTATE)
    rows: int = 0
    sequence: int = 1  # the sequence number of the next packet of its answer


def lenenc(payload: bytes, pos: int) -> tuple[int, int]:
    """A length-encoded integer at pos and the offset after it."""
    if pos >= len(payload):
        raise Malformed("length-encoded integer cut off")
    first = payload[pos]
    if first < 0xfb:
        return first, pos + 1
    size = {0xfc: 2, 0xfd: 3, 0xfe: 8}.get(first)
    if size is None or pos + 1 + size > len(payload):
        raise Malformed(f"bad length-encoded integer {first:#x}")
    return int.from_bytes(payload[pos + 1:pos + 1 + size], "little"), pos + 1 + size


class MySQLSession(QueuedSession):
    protocol = "mysql"

    def __init__(self, *, keep_literals: bool = False) -> None:
        super().__init__(keep_literals=keep_literals)
        self.phase = "command"  # "greeting" -> "auth" -> "command"; mid-stream starts in "command"
        self.capabilities = CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF
        self.server_capabilities = 0
        self.database: str | None = None
        self.statements: OrderedDict[int, str] = OrderedDict()
        self.pending: deque[_Command] = deque()
        self.seen_greeting = False
        self.system = "mysql"  # "mariadb" when the greeting says so

    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        buffer = self.buffers[direction]
        out: list[Exchange] = []
        while len(buffer.data) >= 4 and not self.opaque:
            length = int.from_bytes(buffer.data[:3], "little")
            sequence = buffer.data[3]
            self._check_sequence(direction, sequence)
            if len(buffer.data) < 4 + length:
                if direction is Direction.SERVER and self.pending and self.pending[0].state == "rows" and length > 4096:
                    # A long row: what matters is that it is a row; its bytes are skipped as they come.
                    self.pending[0].rows += 1
                    self.pending[0].sequence = (sequence + 1) & 0xff
                    buffer.consume(4 + length)
                    continue
                break
            payload = bytes(buffer.data[4:4 + length])
            start = buffer.ts_at(0)  # when the packet's first byte came
            buffer.consume(4 + length)
            if direction is Direction.CLIENT:
                self._client(payload, sequence, start)
            else:
                exchange = self._server(payload, sequence, ts_ns)
                if exchange is not None:
                    out.append(exchange)
        return out

    def _check_sequence(self, direction: Direction, sequence: int) -> None:
        """Sequence numbers say whether bytes are this protocol at all: a command starts at 0
        and its answer counts on from there."""
        if self.phase != "command":
            return
        if direction is Direction.CLIENT:
            if sequence != 0:
                raise Malformed(f"a command with sequence {sequence}")
        elif self.pending:
            if sequence != self.pending[0].sequence:
                raise Malformed(f"answer sequence {sequence}, expected {self.pending[0].sequence}")
        elif self.seen_greeting or sequence != 0:
            raise Malformed("a packet that answers no command")

    # -- handshake ------------------------------------------------------------------------
    def _greeting(self, payload: bytes) -> None:
        end = payload.find(b"\0", 1)
        if payload[:1] != b"\x0a" or end < 0 or len(payload) < end + 1 + 4 + 8 + 1 + 2:
            raise Malformed("not a protocol 10 handshake")
        pos = end + 1 + 4 + 8 + 1
        lower = int.from_bytes(payload[pos:pos + 2], "little")
        upper = int.from_bytes(payload[pos + 5:pos + 7], "little") if len(payload) >= pos + 7 else 0
        self.server_capabilities = lower | upper << 16
        self.phase = "auth"
        self.seen_greeting = True
        if b"MariaDB" in payload[1:end]:
            self.system = "mariadb"

    def _handshake_response(self, payload: bytes) -> None:
        if len(payload) < 32:
            raise Malformed("handshake response too short")
        flags = struct.unpack_from("<I", payload)[0]
        self.capabilities = flags & (self.server_capabilities or 0xffffffff)
        if self.capabilities & CLIENT_COMPRESS:
            self.opaque = True  # compressed packets from here on: not followed
            self.counters["compressed"] += 1
            return
        if flags & CLIENT_SSL and len(payload) == 32:
            self.opaque = True  # an SSLRequest: TLS from here on
            self.counters["encrypted"] += 1
            return
        pos = payload.find(b"\0", 32)  # the user name
        if pos < 0 or not flags & CLIENT_CONNECT_WITH_DB:
            return
        pos += 1
        if flags & 0x200000:  # CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            size, pos = lenenc(payload, pos)
        else:
            size, pos = payload[pos] if pos < len(payload) else 0, pos + 1
        pos += size
        end = payload.find(b"\0", pos)
        if 0 <= pos < len(payload) and end > pos:
            self.database = payload[pos:end].decode("utf-8", "replace")

    # -- commands -----------------------------------------------------------------------------
    def _client(self, payload: bytes, sequence: int, ts_ns: int) -> None:
        if self.phase == "auth":
            if sequence == 1 and not self.pending:
                self._handshake_response(payload)
            return  # auth switch responses and the like
        if not payload:  # (a command's sequence number was checked with its header)
            return
        code = payload[0]
        if self.pending:  # a new command while the last answer was not understood to its end
            self.counters["unfinished"] += len(self.pending)
            self.pending.clear()
        if code == COM_STMT_CLOSE and len(payload) >= 5:
            self.statements.pop(struct.unpack_from("<I", payload, 1)[0], None)
        if code in NO_RESPONSE:
            return
        command = _Command(code, ts_ns)
        if code in (COM_QUERY, COM_STMT_PREPARE):
            start = 1
            if code == COM_QUERY and self.capabilities & CLIENT_QUERY_ATTRIBUTES:  # MySQL 8: attributes first
                count, start = lenenc(payload, 1)
                _, start = lenenc(payload, start)
                if count:
                    self.counters["query_attributes"] += 1  # typed values precede the text: not followed
                    start = len(payload)
            command.query = payload[start:].rstrip(b"\0").decode("utf-8", "replace") or None  # zeros: capture cut
        elif code == COM_STMT_EXECUTE and len(payload) >= 5:
            command.statement_id = struct.unpack_from("<I", payload, 1)[0]
            command.query = self.statements.get(command.statement_id)
            if command.query is None:
                self.counters["unknown_statement"] += 1
        elif code == COM_INIT_DB:
            command.query = payload[1:].decode("utf-8", "replace")
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.counters["evicted"] += 1
        self.pending.append(command)

    # -- answers --------------------------------------------------------------------------------
    def _server(self, payload: bytes, sequence: int, ts_ns: int) -> Exchange | None:
        if not self.seen_greeting and sequence == 0 and payload[:1] == b"\x0a" and not self.pending:
            self._greeting(payload)
            return None
        if self.phase == "auth":
            if payload[:1] in (b"\x00", b"\xff"):
                self.phase = "command"  # authenticated (or refused: the server closes)
            return None
        if not self.pending:
            self.counters["unsolicited"] += 1
            return None
        command = self.pending[0]
        command.sequence = (command.sequence + 1) & 0xff
        if self._advance(command, payload):
            self.pending.popleft()
            return self._exchange(command, ts_ns)
        return None

    def _eof(self, payload: bytes) -> bool:
        if self.capabilities & CLIENT_DEPRECATE_EOF:
            return payload[:1] == b"\xfe" and len(payload) < 0xffffff
        return payload[:1] == b"\xfe" and len(payload) < 9

    def _more_results(self, payload: bytes) -> bool:
        """SERVER_MORE_RESULTS_EXISTS in an OK or EOF packet's status flags."""
        if len(payload) == 5 and payload[0] == 0xfe:  # EOF: warnings, status
            return bool(struct.unpack_from("<H", payload, 3)[0] & SERVER_MORE_RESULTS_EXISTS)
        _, pos = lenenc(payload, 1)  # affected rows
        _, pos = lenenc(payload, pos)  # last insert id
        if pos + 2 > len(payload):
            return False
        return bool(struct.unpack_from("<H", payload, pos)[0] & SERVER_MORE_RESULTS_EXISTS)

    def _advance(self, command: _Command, payload: bytes) -> bool:
        """Take one packet of the answer; True when the answer is complete."""
        if not payload:
            raise Malformed("empty packet")
        classic_eof = not self.capabilities & CLIENT_DEPRECATE_EOF
        state = command.state
        if state == "first":
            return self._first(command, payload)
        if state == "columns":  # a result set's column definitions, then rows
            command.left -= 1
            if command.left <= 0:
                command.state = "column_eof" if classic_eof else "rows"
            return False
        if state == "column_eof":
            command.state = "rows"
            return False
        if state == "rows":
            if payload[0] == 0xff:
                command.error = self._error(payload)
                return True
            if self._eof(payload):
                if self._more_results(payload):
                    command.state = "first"
                    return False
                return True
            command.rows += 1
            return False
        if state == "params":  # a prepared statement's parameter definitions
            command.left -= 1
            if command.left > 0:
                return False
            if classic_eof:
                command.state = "params_eof"
                return False
            return self._prepare_columns(command)
        if state == "params_eof":
            return self._prepare_columns(command)
        if state == "prepare_columns":
            command.left -= 1
            if command.left > 0:
                return False
            if classic_eof:
                command.state = "prepare_columns_eof"
                return False
            return True
        if state == "prepare_columns_eof":
            return True
        raise Malformed(f"state {state}")

    def _first(self, command: _Command, payload: bytes) -> bool:
        head = payload[0]
        if head == 0xff:
            command.error = self._error(payload)
            return True
        if command.code == COM_STMT_PREPARE:
            if head != 0 or len(payload) < 9:
                raise Malformed("not a COM_STMT_PREPARE answer")
            statement_id, columns, params = struct.unpack_from("<IHH", payload, 1)
            self._remember(statement_id, command.query or "")
            command.left, command.columns_after = params, columns
            if params:
                command.state = "params"
                return False
            return self._prepare_columns(command)
        if command.code not in (COM_QUERY, COM_STMT_EXECUTE):
            if head == 0x00 and command.code == COM_INIT_DB:
                self.database = command.query
            return True  # one packet answers the other commands
        if head == 0x00:
            if command.code == COM_QUERY and command.query and sql.operation_name(command.query) == "USE":
                self.database = command.query.split(None, 1)[-1].strip(" `;") or self.database
            return not self._more_results(payload)  # a multi-statement's next result may follow
        if head == 0xfb:
            raise Malformed("LOCAL INFILE requests are not followed")
        command.left, _ = lenenc(payload, 0)
        command.state = "columns" if command.left else "rows"
        return False

    def _prepare_columns(self, command: _Command) -> bool:
        if not command.columns_after:
            return True
        command.left, command.columns_after = command.columns_after, 0
        command.state = "prepare_columns"
        return False

    def _error(self, payload: bytes) -> tuple[str, str]:
        code = str(struct.unpack_from("<H", payload, 1)[0]) if len(payload) >= 3 else "0"
        state = payload[4:9].decode("ascii", "replace") if payload[3:4] == b"#" else ""
        return code, state

    def _remember(self, statement_id: int, query: str) -> None:
        self.statements[statement_id] = query
        if len(self.statements) > MAX_STATEMENTS:
            self.statements.popitem(last=False)
            self.counters["statements_evicted"] += 1

    def _exchange(self, command: _Command, end_ns: int, complete: bool = True) -> Exchange | None:
        if command.code not in (COM_QUERY, COM_STMT_EXECUTE) and not (command.code == COM_STMT_PREPARE and command.error):
            return None  # pings, prepares that worked, USE: not operations of their own
        query = command.query or ""
        operation = sql.operation_name(query)
        attributes: dict[str, str | int] = {"db.system.name": self.system}
        if operation:
            attributes["db.operation.name"] = operation
        if self.database:
            attributes["db.namespace"] = self.database
        if query:
            attributes["db.query.text"] = sql.query_text(query, keep_literals=self.keep_literals, mysql=True)
            table = sql.collection_name(query, operation)
            if table:
                attributes["db.collection.name"] = table
        if command.rows:
            attributes["db.response.returned_rows"] = command.rows
        error_type = None
        if command.error is not None:
            attributes["db.response.status_code"] = error_type = command.error[0]
        return Exchange("mysql", operation, command.start_ns, end_ns, attributes, error_type, complete)


    def close(self, ts_ns: int) -> list[Exchange]:
        out = [e for command in self.pending if (e := self._exchange(command, ts_ns, complete=False)) is not None]
        self.pending.clear()
        return out
