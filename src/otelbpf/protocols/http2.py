"""HTTP/2 (h2c with prior knowledge, h2c by Upgrade, h2 once TLS is undone by the libssl
uprobes) and gRPC over it: frames parsed per direction, header blocks decoded with the
`hpack` package (one decoder per connection and direction, as the peers' encoders assume),
streams paired into exchanges.

A stream ends when the server ends it (END_STREAM on its DATA or trailers) or either side
resets it. gRPC calls (content-type application/grpc) are named by their method
(pkg.Service/Method) and carry grpc-status from the trailers (or a trailers-only answer).
A connection first seen mid-stream has no dynamic table: header blocks that refer to it fail
to decode, are counted, and their streams still give exchanges with what is known.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from hpack import Decoder, HPACKError

from .detect import HTTP2_PREFACE
from .exchange import MAX_PENDING, Direction, Exchange, Malformed, Session
from .hpack_partial import PartialDecoder

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x1, 0x5
DEFAULT_MAX_FRAME, MAX_FRAME = 16384, (1 << 24) - 1
MAX_HEADER_BLOCK = 256 * 1024
STREAM_BOUND = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION})  # never on stream 0
ERROR_CODES = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
               "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
               "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"]
GRPC_CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]


@dataclass(slots=True)
class _Stream:
    start_ns: int
    request: dict[str, str] = field(default_factory=dict)
    response: dict[str, str] = field(default_factory=dict)  # headers, then trailers merged in
    partial: bool = False  # a header block of this stream decoded only in part
    reset: str | None = None


class Http2Session(Session):
    protocol = "http2"

    def __init__(self, *, keep_literals: bool = False) -> None:
        super().__init__(keep_literals=keep_literals)
        self.decoders = (Decoder(), Decoder())
        # Once a direction's table is known to be incomplete (joined mid-stream, or a block
        # that did not decode), its blocks are decoded in part from then on.
        self.partial: list[PartialDecoder | None] = [None, None]
        self.streams: OrderedDict[int, _Stream] = OrderedDict()
        self.preface = [True, False]   # does this direction still owe its preface (client) / a 101 (upgrade)?
        self.upgrade_request: dict[str, str] | None = None
        self.upgrade_start = 0
        self.block: list[tuple[Direction, int, int, bytearray]] = []  # a header block awaiting CONTINUATION
        self.block_start = 0
        self.max_frame = [DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME]  # per sending direction, raised by the peer's SETTINGS

    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        buffer = self.buffers[direction]
        out: list[Exchange] = []
        if not self._opening(direction, ts_ns):
            return out
        while len(buffer.data) >= 9 and not self.opaque:
            length = int.from_bytes(buffer.data[:3], "big")
            kind, flags = buffer.data[3], buffer.data[4]
            stream_id = struct.unpack_from(">I", buffer.data, 5)[0] & 0x7fffffff
            if length > self.max_frame[direction]:
                raise Malformed(f"frame of {length} bytes, over the {self.max_frame[direction]} allowed")
            if len(buffer.data) < 9 + length:
                if kind == DATA and len(buffer.data) > 65536:
                    buffer.consume(9 + length)  # a large body: skipped as it arrives
                    exchange = self._data(direction, stream_id, flags, ts_ns)
                    if exchange is not None:
                        out.append(exchange)
                    continue
                break
            payload = bytes(buffer.data[9:9 + length])
            start = buffer.ts_at(0)  # when the frame's first byte came: a stream starts at its HEADERS
            buffer.consume(9 + length)
            exchange = self._frame(direction, kind, flags, stream_id, payload, ts_ns, start)
            if exchange is not None:
                out.append(exchange)
        return out

    # -- the connection's opening --------------------------------------------------------
    def _opening(self, direction: Direction, ts_ns: int) -> bool:
        """Consume the client preface or an h2c upgrade; False while more bytes are needed."""
        data = self.buffers[direction].data
        if direction is Direction.CLIENT and self.preface[0]:
            if data[:len(HTTP2_PREFACE)] == HTTP2_PREFACE:
                self.buffers[direction].consume(len(HTTP2_PREFACE))
                self.preface[0] = False
                return True
            if HTTP2_PREFACE.startswith(bytes(data)):
                return False  # the preface is still arriving
            if data[:1].isalpha():  # an HTTP/1.1 request asking to upgrade (h2c)
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > 16384:
                        raise Malformed("upgrade request head too long")
                    return False
                head = bytes(data[:end]).decode("latin-1").split("\r\n")
                method, _, rest = head[0].partition(" ")
                target = rest.rpartition(" ")[0]
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
                self.upgrade_request = {":method": method, ":path": target, ":authority": headers.get("host", ""),
                                        ":scheme": "http", "content-type": headers.get("content-type", "")}
                self.upgrade_start = self.buffers[direction].ts_at(0)
                self.buffers[direction].consume(end + 4)
                self.preface[1] = True  # the server answers 101 before its frames
                return False  # the preface follows once the server agrees
            self.preface[0] = False  # first seen mid-stream: frames from here, of sizes agreed unseen
            self.counters["mid_stream"] += 1
            self.max_frame = [MAX_FRAME, MAX_FRAME]
            self.partial = [PartialDecoder(), PartialDecoder()]
            return True
        if direction is Direction.SERVER and self.preface[1]:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    raise Malformed("upgrade answer head too long")
                return False
            if not data.startswith(b"HTTP/1.1 101"):
                self.opaque = True  # the server stayed on HTTP/1.1: the HTTP/1 sensor's business
                self.counters["upgrade_refused"] += 1
                return False
            self.buffers[direction].consume(end + 4)
            self.preface[1] = False
            if self.upgrade_request is not None:
                self._stream(1, self.upgrade_start).request.update(self.upgrade_request)
            return True
        return True

    # -- frames --------------------------------------------------------------------------
    def _frame(self, direction: Direction, kind: int, flags: int, stream_id: int, payload: bytes,
               ts_ns: int, start_ns: int) -> Exchange | None:
        if self.block and kind != CONTINUATION:
            raise Malformed("a header block interrupted")
        if (stream_id == 0) != (kind in (SETTINGS, PING, GOAWAY)) and kind in STREAM_BOUND | {SETTINGS, PING, GOAWAY}:
            raise Malformed(f"frame type {kind} on stream {stream_id}")  # zeros from a capture cut look like this
        if kind == DATA:
            return self._data(direction, stream_id, flags, ts_ns)
        if kind in (HEADERS, PUSH_PROMISE):
            fragment = self._unpad(payload, flags)
            if kind == HEADERS and flags & PRIORITY_FLAG:
                fragment = fragment[5:]
            if kind == PUSH_PROMISE:
                fragment = fragment[4:]
                self.counters["push_promise"] += 1
            self.block = [(direction, stream_id, flags if kind == HEADERS else 0, bytearray(fragment))]
            self.block_start = start_ns
            if flags & END_HEADERS:
                return self._header_block(ts_ns, kind == PUSH_PROMISE)
            return None
        if kind == CONTINUATION:
            if not self.block or self.block[0][1] != stream_id or self.block[0][0] != direction:
                raise Malformed("CONTINUATION without its HEADERS")
            self.block[0][3].extend(payload)
            if len(self.block[0][3]) > MAX_HEADER_BLOCK:
                raise Malformed("header block too large")
            if flags & END_HEADERS:
                return self._header_block(ts_ns, False)
            return None
        if kind == RST_STREAM and len(payload) >= 4:
            code = struct.unpack_from(">I", payload)[0]
            stream = self.streams.pop(stream_id, None)
            if stream is None:
                return None
            stream.reset = ERROR_CODES[code] if code < len(ERROR_CODES) else f"0x{code:x}"
            return self._exchange(stream, ts_ns)
        if kind == SETTINGS and not flags & 0x1:
            for offset in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, offset)
                # What this side can take: the table and the frames of what the other side sends.
                if key == SETTINGS_HEADER_TABLE_SIZE:
                    self.decoders[1 - direction].max_allowed_table_size = value
                elif key == SETTINGS_MAX_FRAME_SIZE and DEFAULT_MAX_FRAME <= value <= MAX_FRAME:
                    self.max_frame[1 - direction] = value
            return None
        if kind == GOAWAY:
            self.counters["goaway"] += 1
        return None

    @staticmethod
    def _unpad(payload: bytes, flags: int) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise Malformed("padding longer than the frame")
        return payload[1:len(payload) - payload[0]]

    def _header_block(self, ts_ns: int, promise: bool) -> Exchange | None:
        direction, stream_id, flags, block = self.block[0]
        self.block = []
        fields, complete = self._decode(direction, bytes(block))
        if promise:
            return None
        if direction is Direction.CLIENT:
            stream = self._stream(stream_id, self.block_start)
            stream.request.update(fields)
        else:
            stream = self.streams.get(stream_id) or self._stream(stream_id, ts_ns, counted=True)
            stream.response.update(fields)
        stream.partial |= not complete
        if direction is Direction.SERVER and flags & END_STREAM:
            self.streams.pop(stream_id, None)
            return self._exchange(stream, ts_ns)
        return None

    def _decode(self, direction: Direction, block: bytes) -> tuple[dict[str, str], bool]:
        """The block's fields, and whether none was missing."""
        partial = self.partial[direction]
        if partial is None:
            try:
                headers = self.decoders[direction].decode(block, raw=True)
                return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in headers}, True
            except (HPACKError, IndexError, ValueError):
                # The table is out of step (bytes lost, or a bad encoder): from here on in part.
                self.counters["hpack_errors"] += 1
                partial = self.partial[direction] = PartialDecoder(self.decoders[direction].max_allowed_table_size)
        try:
            pairs, missing = partial.decode(block)
        except (HPACKError, IndexError, ValueError):
            self.counters["hpack_errors"] += 1
            return {}, False
        if missing:
            self.counters["hpack_fields_missing"] += missing
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in pairs}, not missing

    def _data(self, direction: Direction, stream_id: int, flags: int, ts_ns: int) -> Exchange | None:
        if direction is Direction.SERVER and flags & END_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                return self._exchange(stream, ts_ns)
        return None

    def _stream(self, stream_id: int, ts_ns: int, counted: bool = False) -> _Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            if counted:
                self.counters["response_without_request"] += 1
            stream = self.streams[stream_id] = _Stream(ts_ns)
            if len(self.streams) > MAX_PENDING:
                self.streams.popitem(last=False)
                self.counters["evicted"] += 1
        return stream

    # -- exchanges -----------------------------------------------------------------------
    def _exchange(self, stream: _Stream, end_ns: int, complete: bool = True) -> Exchange:
        request, response = stream.request, stream.response
        attributes: dict[str, str | int] = {"network.protocol.name": "http", "network.protocol.version": "2"}
        method = request.get(":method", "")
        path = request.get(":path", "")
        if method:
            attributes["http.request.method"] = method
        if path:
            attributes["url.path"] = path.partition("?")[0]
        if request.get(":scheme"):
            attributes["url.scheme"] = request[":scheme"]
        authority = request.get(":authority", "")
        if authority:
            host, _, port = authority.rpartition(":") if authority.rpartition(":")[2].isdigit() else (authority, "", "")
            attributes["server.address"] = host.strip("[]")
            if port:
                attributes["server.port"] = int(port)
        status = response.get(":status", "")
        if status.isdigit():
            attributes["http.response.status_code"] = int(status)
        error_type = None
        operation = method
        if request.get("content-type", "").startswith("application/grpc"):
            operation = path.lstrip("/")
            attributes["rpc.system.name"] = "grpc"
            if operation:
                attributes["rpc.method"] = operation
            code = response.get("grpc-status", "")
            if code.isdigit():
                name = GRPC_CODES[int(code)] if int(code) < len(GRPC_CODES) else code
                attributes["rpc.response.status_code"] = name
                if name != "OK":
                    error_type = name
        if status.isdigit() and int(status) >= 500 and error_type is None:
            error_type = status
        if stream.reset is not None and error_type is None and (not status or "grpc-status" not in response):
            error_type = stream.reset
        if stream.partial:
            attributes["otelbpf.http2.headers_partial"] = 1  # fields of a table entry never seen are missing
        return Exchange("http2", operation, stream.start_ns, end_ns, attributes, error_type, complete)

    def resync(self, direction: Direction) -> None:
        # Frames of this direction were lost: its HPACK table is out of step for good.
        self.counters["unpaired"] += len(self.streams)
        self.streams.clear()
        self.block = []
        self.opaque = True

    def close(self, ts_ns: int) -> list[Exchange]:
        out = [self._exchange(stream, ts_ns, complete=False) for stream in self.streams.values()]
        self.streams.clear()
        return out
