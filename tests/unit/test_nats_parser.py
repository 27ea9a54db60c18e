"""NATS messages on hand-written lines: replies, headers, payloads cut and large, errors."""

from __future__ import annotations

from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.nats import NatsSession

C, S = Direction.CLIENT, Direction.SERVER


def test_messages_cut_anywhere_are_each_one_exchange():
    wire = b"MSG a.b 1 _INBOX.x 5\r\nhello\r\nHMSG c 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n-ERR 'Stale Connection'\r\n"
    for cut in range(len(wire)):
        session = NatsSession()
        got = session.feed(S, 1, wire[:cut]) + session.feed(S, 2, wire[cut:])
        assert [(e.attributes["messaging.destination.name"], e.attributes["messaging.message.body.size"]) for e in got] == \
            [("a.b", 5), ("c", 2)]
        assert session.counters == {"server_errors": 1}


def test_a_large_publish_is_skipped_not_buffered():
    session = NatsSession()
    wire = b"PUB big 3000000\r\n" + b"x" * 3_000_000 + b"\r\nPUB small 1\r\ny\r\n"
    got = []
    for i in range(0, len(wire), 65536):
        got += session.feed(C, i, wire[i:i + 65536])
        assert len(session.buffers[C].data) <= 2 * 65536
    assert [(e.operation, e.attributes["messaging.destination.name"]) for e in got] == [("publish", "big"), ("publish", "small")]


def test_unknown_verbs_are_malformed():
    session = NatsSession()
    assert session.feed(C, 1, b"GET / HTTP/1.1\r\n") == [] and session.counters == {"malformed": 1}
