"""AMQP 0-9-1 (RabbitMQ): basic.publish and the messages the broker hands a client
(basic.deliver, basic.get-ok) as messaging exchanges.

Frames are a type, a channel, a size and an end octet (0xCE). A message is a method frame,
then a content header that gives the body size, then body frames that are skipped; the
exchange is made when the header arrives. Channel and connection closes that carry an error
(404 NOT_FOUND on a publish to a missing exchange...) and returned messages are counted.
"""

from __future__ import annotations

import struct

from .detect import AMQP_HEADER
from .exchange import Direction, Exchange, Malformed, Session

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
MAX_FRAME = 128 << 20
BASIC = 60
PUBLISH, RETURN, DELIVER, GET_OK = 40, 50, 60, 71
CLOSES = {(10, 50): "connection", (20, 40): "channel"}


def _shortstr(payload: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(payload):
        raise Malformed("short string cut off")
    end = pos + 1 + payload[pos]
    if end > len(payload):
        raise Malformed("short string longer than its frame")
    return payload[pos + 1:end].decode("utf-8", "replace"), end


class AmqpSession(Session):
    protocol = "amqp"

    def __init__(self, *, keep_literals: bool = False) -> None:
        super().__init__(keep_literals=keep_literals)
        self.header_owed = [True, False]  # the client opens with "AMQP" 0 0 9 1
        # Per (direction, channel): a message whose content header is still to come.
        self.messages: dict[tuple[Direction, int], tuple[str, str, str, int]] = {}

    def _parse(self, direction: Direction, ts_ns: int) -> list[Exchange]:
        buffer = self.buffers[direction]
        out: list[Exchange] = []
        if direction is Direction.CLIENT and self.header_owed[0]:
            if len(buffer.data) < 8:
                if not AMQP_HEADER.startswith(bytes(buffer.data)):
                    raise Malformed("not the AMQP 0-9-1 protocol header")
                return out
            if buffer.data[:8] != AMQP_HEADER:
                raise Malformed("not the AMQP 0-9-1 protocol header")
            buffer.consume(8)
            self.header_owed[0] = False
        while len(buffer.data) >= 7:
            kind = buffer.data[0]
            channel, size = struct.unpack_from(">HI", buffer.data, 1)
            if kind not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT) or size > MAX_FRAME:
                raise Malformed(f"frame type {kind} size {size}")
            if len(buffer.data) < 7 + size + 1:
                if kind == FRAME_BODY and len(buffer.data) > 65536:
                    buffer.consume(7 + size + 1)  # a large body: skipped as it arrives
                    continue
                break
            if buffer.data[7 + size] != FRAME_END:
                raise Malformed("frame without its end octet")
            payload = bytes(buffer.data[7:7 + size])
            start = buffer.ts_at(0)  # when the frame's first byte came
            buffer.consume(7 + size + 1)
            if kind == FRAME_METHOD:
                self._method(direction, channel, payload, start)
            elif kind == FRAME_HEADER:
                exchange = self._header(direction, channel, payload)
                if exchange is not None:
                    out.append(exchange)
        return out

    def _method(self, direction: Direction, channel: int, payload: bytes, ts_ns: int) -> None:
        if len(payload) < 4:
            raise Malformed("method frame too short")
        class_id, method_id = struct.unpack_from(">HH", payload)
        if (class_id, method_id) in CLOSES:
            code = struct.unpack_from(">H", payload, 4)[0] if len(payload) >= 6 else 0
            if code >= 300:
                self.counters[f"{CLOSES[class_id, method_id]}_errors"] += 1
            return
        if class_id != BASIC:
            return
        if method_id == PUBLISH and direction is Direction.CLIENT:
            exchange, pos = _shortstr(payload, 6)  # after the reserved short
            routing_key, _ = _shortstr(payload, pos)
            self.messages[direction, channel] = ("publish", exchange, routing_key, ts_ns)
        elif method_id == DELIVER and direction is Direction.SERVER:
            _, pos = _shortstr(payload, 4)  # the consumer tag
            exchange, pos = _shortstr(payload, pos + 9)  # after the delivery tag and redelivered
            routing_key, _ = _shortstr(payload, pos)
            self.messages[direction, channel] = ("receive", exchange, routing_key, ts_ns)
        elif method_id == GET_OK and direction is Direction.SERVER:
            exchange, pos = _shortstr(payload, 4 + 9)
            routing_key, _ = _shortstr(payload, pos)
            self.messages[direction, channel] = ("receive", exchange, routing_key, ts_ns)
        elif method_id == RETURN and direction is Direction.SERVER:
            self.counters["returned"] += 1
            self.messages[direction, channel] = ("", "", "", ts_ns)  # its header and body follow: not a delivery

    def _header(self, direction: Direction, channel: int, payload: bytes) -> Exchange | None:
        message = self.messages.pop((direction, channel), None)
        if message is None or not message[0]:
            return None
        if len(payload) < 12:
            raise Malformed("content header too short")
        operation, exchange, routing_key, ts_ns = message
        body_size = struct.unpack_from(">Q", payload, 4)[0]
        attributes: dict[str, str | int] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": operation,
            "messaging.operation.type": "send" if operation == "publish" else "receive",
            "messaging.destination.name": exchange or "amq.default",
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "messaging.message.body.size": body_size,
        }
        return Exchange("amqp", operation, ts_ns, ts_ns, attributes)

    def close(self, ts_ns: int) -> list[Exchange]:
        if self.messages:
            self.counters["unfinished_messages"] += len(self.messages)
            self.messages.clear()
        return []
