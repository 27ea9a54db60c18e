"""Every L7 session parser on hostile bytes: whatever arrives, in whichever direction and
cut wherever, feed() and close() return exchanges and never raise; garbage is counted."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.protocols.detect import AMQP_HEADER, detect
from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.l7 import SESSIONS, Connection, Connections
from tests.unit import test_amqp_parser as _amqp
from tests.unit import test_http2_parser as _h2
from tests.unit import test_mysql_parser as _my


def _pg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


def _pg_startup() -> bytes:
    body = struct.pack(">I", 196608) + b"user\0app\0database\0db\0\0"
    return struct.pack(">I", len(body) + 4) + body


chunks = st.lists(st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=300)), max_size=12)

# A plausible start per protocol, so mutations reach deep states rather than failing at byte 0.
SEEDS: dict[str, list[tuple[Direction, bytes]]] = {
    "redis": [(Direction.CLIENT, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n"),
              (Direction.SERVER, b"+OK\r\n%1\r\n+a\r\n*2\r\n:1\r\n$-1\r\n>2\r\n+x\r\n+y\r\n-ERR no\r\n")],
    "postgresql": [
        (Direction.CLIENT, struct.pack(">II", 8, 80877103)), (Direction.SERVER, b"N"),
        (Direction.CLIENT, _pg_startup()),
        (Direction.SERVER, _pg(b"R", b"\0\0\0\0") + _pg(b"Z", b"I")),
        (Direction.CLIENT, _pg(b"P", b"s\0SELECT 1\0\0\0") + _pg(b"B", b"\0s\0\0\0\0\0\0\0") + _pg(b"E", b"\0\0\0\0\0")
                           + _pg(b"S") + _pg(b"Q", b"SELECT 1/0\0")),
        (Direction.SERVER, _pg(b"1") + _pg(b"2") + _pg(b"D", b"\0\1\0\0\0\1x") + _pg(b"C", b"SELECT 1\0") + _pg(b"Z", b"I")
                           + _pg(b"E", b"SERROR\0C22012\0\0") + _pg(b"Z", b"I")),
    ],
    "mysql": [
        (Direction.SERVER, _my.greeting(_my.MODERN)), (Direction.CLIENT, _my.handshake_response(_my.MODERN)),
        (Direction.SERVER, _my.ok(2)),
        (Direction.CLIENT, _my.packet(0, b"\x03SELECT a FROM t")),
        (Direction.SERVER, _my.packet(1, b"\x01") + _my.packet(2, b"coldef") + _my.packet(3, b"\x01x") + _my.ok(4, header=0xfe)),
        (Direction.CLIENT, _my.packet(0, b"\x16SELECT ? FROM t")),
        (Direction.SERVER, _my.packet(1, b"\x00" + struct.pack("<IHHBH", 1, 1, 1, 0, 0))
                           + _my.packet(2, b"p") + _my.packet(3, b"c")),
        (Direction.CLIENT, _my.packet(0, b"\x17" + struct.pack("<IBI", 1, 0, 1))),
        (Direction.SERVER, _my.packet(1, b"\xff\x7a\x04#42S02No such table")),
    ],
    "http2": [
        (Direction.CLIENT, _h2.HTTP2_PREFACE + _h2.frame(4, 0, 0) + _h2.request(_h2.Encoder(), 1, "/pkg.S/M", grpc=True)
                           + _h2.frame(0, 1, 1, b"\0\0\0\0\1x")),
        (Direction.SERVER, _h2.frame(4, 0, 0) + _h2.frame(1, 4, 1, _h2.Encoder().encode([(":status", "200")]))
                           + _h2.frame(0, 0, 1, b"\0\0\0\0\1y")
                           + _h2.frame(1, 5, 1, _h2.Encoder().encode([("grpc-status", "0")]))),
    ],
    "nats": [
        (Direction.SERVER, b'INFO {"server_id":"x","headers":true}\r\n'),
        (Direction.CLIENT, b'CONNECT {"verbose":false}\r\nSUB a 1\r\nPUB a 2\r\nhi\r\n'
                           b"HPUB b 12 14\r\nNATS/1.0\r\n\r\nyo\r\nPING\r\n"),
        (Direction.SERVER, b"MSG a 1 2\r\nhi\r\nHMSG a 1 r 12 14\r\nNATS/1.0\r\n\r\nyo\r\nPONG\r\n+OK\r\n"),
    ],
    "amqp": [
        (Direction.CLIENT, AMQP_HEADER + _amqp.publish("ex", "key", b"body") + _amqp.publish("", "q", b"")),
        (Direction.SERVER, _amqp.deliver("q", b"hello") + _amqp.method(20, 40, struct.pack(">H", 404) + _amqp.shortstr("NF"))),
    ],
    "memcached": [
        (Direction.CLIENT, b"set k 0 0 5\r\nhello\r\nget k x\r\nincr n 1\r\nmg k v\r\nstats\r\n"),
        (Direction.SERVER, b"STORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\nNOT_FOUND\r\nVA 5\r\nhello\r\nSTAT a 1\r\nEND\r\n"),
    ],
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SESSIONS)), chunks)
def test_random_bytes_never_raise(protocol, feed):
    session = SESSIONS[protocol]()
    for i, (direction, chunk) in enumerate(feed):
        for exchange in session.feed(direction, i, chunk):
            assert exchange.protocol == protocol
    session.close(len(feed))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_mutated_conversations_never_raise(protocol, data):
    session = SESSIONS[protocol]()
    for i, (direction, chunk) in enumerate(SEEDS[protocol]):
        raw = bytearray(chunk)
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at + data.draw(st.integers(0, 8))] = data.draw(st.binary(max_size=8))
        cut = data.draw(st.integers(0, len(raw)))
        session.feed(direction, 2 * i, bytes(raw[:cut]))
        session.feed(direction, 2 * i + 1, bytes(raw[cut:]))
    session.close(99)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_detection_never_raises(client, server):
    assert detect(client, server) in (None, "http1", *SESSIONS, "http2", "postgresql", "mysql", "memcached", "nats", "amqp")


def test_garbage_is_counted_not_raised():
    for protocol in SESSIONS:
        connection = Connection(protocol)
        for _ in range(3):
            connection.feed(Direction.SERVER, 1, b"\x00\xff\xfe garbage \r\n\x01\x02" * 40)
            connection.feed(Direction.CLIENT, 2, b"\xff\xff\xff\xff\x00 nonsense\r\n" * 40)
        assert connection.counters["malformed"] >= 1, protocol


def test_connections_are_bounded_and_evictions_counted():
    table = Connections(max_connections=3)
    for key in range(5):
        table.feed(key, Direction.CLIENT, key, b"*1\r\n$4\r\nPING\r\n")
    assert len(table.table) == 3
    assert table.totals[("redis", "connection_evicted")] == 2
    assert sorted(table.table) == [2, 3, 4]


def test_unknown_connections_are_ignored_after_one_look():
    connection = Connection()
    assert connection.feed(Direction.CLIENT, 1, b"\x16\x03\x01 TLS hello") == []
    assert connection.feed(Direction.SERVER, 2, b"\x16\x03\x03 TLS hello") == []
    assert connection.ignored and connection.protocol is None


def test_seeds_are_valid_conversations():
    """The mutation seeds parse cleanly unmutated, so the fuzzing starts from real states."""
    for protocol, seed in SEEDS.items():
        session = SESSIONS[protocol]()
        exchanges = [e for i, (direction, chunk) in enumerate(seed) for e in session.feed(direction, i, chunk)]
        assert exchanges and not {"malformed", "oversize", "unsolicited"} & set(session.counters), (protocol, session.counters)
