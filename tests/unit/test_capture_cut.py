"""Chunks as a kernel capture gives them: a prefix of each read or write and how many bytes
were not copied. Bytes inside a body being skipped cost nothing, others are zeros that keep
the message's framing (a query's text ends where the capture did), and what the zeros break
is counted, never raised."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.protocols.exchange import MAX_PADDING, Direction
from otelbpf.protocols.l7 import SESSIONS
from otelbpf.protocols.postgres import PostgresSession
from otelbpf.protocols.redis import RedisSession
from tests.unit.test_l7_fuzz import SEEDS

C, S = Direction.CLIENT, Direction.SERVER


def pg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


def captured(session, direction, ts, chunk, limit):
    return session.feed(direction, ts, chunk[:limit], max(0, len(chunk) - limit))


def test_a_long_query_keeps_the_text_the_capture_copied():
    session = PostgresSession(keep_literals=True)
    query = b"INSERT INTO logs VALUES ('" + b"x" * 10_000 + b"')"
    captured(session, C, 1, pg(b"Q", query + b"\0"), 256)
    [exchange] = session.feed(S, 2, pg(b"C", b"INSERT 0 1\0") + pg(b"Z", b"I"))
    assert exchange.attributes["db.query.text"] == query[:256 - 5].decode()
    assert (exchange.operation, exchange.attributes["db.collection.name"]) == ("INSERT", "logs")
    assert session.counters == {"padded_bytes": len(query) + 1 + 5 - 256}


def test_a_long_row_being_skipped_needs_no_padding():
    session = PostgresSession()
    session.feed(C, 1, pg(b"Q", b"SELECT doc FROM t\0"))
    row = pg(b"D", b"\0\1" + struct.pack(">I", 300_000) + b"d" * 300_000)
    for i in range(0, len(row), 65536):  # reads of 64 KiB, 4 KiB of each copied
        assert captured(session, S, 2, row[i:i + 65536], 4096) == []
    [exchange] = session.feed(S, 3, pg(b"C", b"SELECT 1\0") + pg(b"Z", b"I"))
    assert exchange.attributes["db.response.returned_rows"] == 1 and not session.counters


def test_zeros_where_a_line_should_be_are_counted():
    session = RedisSession()
    pipeline = b"".join(b"*2\r\n$3\r\nGET\r\n$5\r\nkey:%d\r\n" % i for i in range(40))
    assert captured(session, C, 1, pipeline, 256) == []
    assert session.counters["malformed"] == 1 and session.counters["padded_bytes"] == len(pipeline) - 256


def test_more_missing_than_a_buffer_holds_starts_the_direction_over():
    session = RedisSession()
    session.feed(C, 1, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9999999\r\nvvvv", MAX_PADDING + 1)
    assert session.counters == {"gap": 1}
    session.feed(C, 2, b"*1\r\n$4\r\nPING\r\n")
    assert [e.operation for e in session.feed(S, 3, b"+PONG\r\n")] == ["PING"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SEEDS)), st.integers(1, 64), st.integers(0, 200_000))
def test_any_cut_never_raises(protocol, limit, extra):
    session = SESSIONS[protocol]()
    for i, (direction, chunk) in enumerate(SEEDS[protocol]):
        session.feed(direction, i, chunk[:limit], max(0, len(chunk) - limit) + (extra if i == 1 else 0))
    session.close(99)
