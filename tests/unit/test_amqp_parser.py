"""AMQP 0-9-1 frames built here: publish and deliver with content headers, basic.get-ok,
returned messages, large bodies skipped, frames without their end octet refused."""

from __future__ import annotations

import struct

from otelbpf.protocols.amqp import AmqpSession
from otelbpf.protocols.detect import AMQP_HEADER, detect
from otelbpf.protocols.exchange import Direction

C, S = Direction.CLIENT, Direction.SERVER


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def shortstr(text: str) -> bytes:
    return bytes([len(text)]) + text.encode()


def method(class_id: int, method_id: int, args: bytes) -> bytes:
    return frame(1, 1, struct.pack(">HH", class_id, method_id) + args)


def header(size: int) -> bytes:
    return frame(2, 1, struct.pack(">HHQH", 60, 0, size, 0))


def publish(exchange: str, key: str, body: bytes) -> bytes:
    return method(60, 40, b"\0\0" + shortstr(exchange) + shortstr(key) + b"\0") + header(len(body)) + frame(3, 1, body)


def deliver(key: str, body: bytes) -> bytes:
    args = shortstr("ctag") + struct.pack(">QB", 7, 0) + shortstr("") + shortstr(key)
    return method(60, 60, args) + header(len(body)) + frame(3, 1, body)


def test_publish_and_deliver_cut_anywhere():
    assert detect(AMQP_HEADER) == "amqp"
    client = AMQP_HEADER + publish("ex", "k", b"hello") + publish("", "q", b"")
    server = deliver("q", b"world!") + method(60, 71, struct.pack(">QB", 1, 0) + shortstr("e") + shortstr("r") + b"\0\0\0\0")
    server += header(3) + frame(3, 1, b"abc")
    for cut in range(0, len(client), 7):
        session = AmqpSession()
        got = session.feed(C, 1, client[:cut]) + session.feed(C, 2, client[cut:]) + session.feed(S, 3, server)
        assert [(e.operation, e.attributes["messaging.destination.name"], e.attributes["messaging.message.body.size"])
                for e in got] == [("publish", "ex", 5), ("publish", "amq.default", 0), ("receive", "amq.default", 6),
                                  ("receive", "e", 3)]
        assert not session.counters


def test_returned_messages_are_counted_not_delivered():
    session = AmqpSession()
    session.feed(C, 1, AMQP_HEADER)
    returned = method(60, 50, struct.pack(">H", 312) + shortstr("NO_ROUTE") + shortstr("ex") + shortstr("k"))
    assert session.feed(S, 2, returned + header(1) + frame(3, 1, b"x")) == []
    assert session.counters == {"returned": 1}


def test_large_bodies_are_skipped_and_bad_frames_refused():
    session = AmqpSession()
    wire = AMQP_HEADER + method(60, 40, b"\0\0" + shortstr("") + shortstr("q") + b"\0") + header(2_000_000) \
        + frame(3, 1, b"b" * 2_000_000) + publish("", "q2", b"x")
    got = []
    for i in range(0, len(wire), 65536):
        got += session.feed(C, 1, wire[i:i + 65536])
        assert len(session.buffers[C].data) <= 2 * 65536
    assert [e.attributes["messaging.rabbitmq.destination.routing_key"] for e in got] == ["q", "q2"]
    session.feed(C, 2, frame(1, 1, b"\0\x3c\0\x28")[:-1] + b"\x00")
    assert session.counters == {"malformed": 1}
