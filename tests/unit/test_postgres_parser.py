"""PostgreSQL pairing on hand-built messages: the cases a real client rarely shows."""

from __future__ import annotations

import struct

from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.postgres import PostgresSession

C, S = Direction.CLIENT, Direction.SERVER


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


def z(s: str = "I") -> bytes:
    return msg(b"Z", s.encode())


def error(code: str) -> bytes:
    return msg(b"E", b"SERROR\0C" + code.encode() + b"\0Mboom\0\0")


def startup(db: str = "shop") -> bytes:
    body = struct.pack(">I", 196608) + b"user\0app\0database\0" + db.encode() + b"\0\0"
    return struct.pack(">I", len(body) + 4) + body


def test_ssl_accepted_makes_the_connection_opaque():
    session = PostgresSession()
    session.feed(C, 1, struct.pack(">II", 8, 80877103))
    session.feed(S, 2, b"S")
    assert session.opaque and session.counters == {"encrypted": 1}
    assert session.feed(C, 3, b"\x16\x03\x01 anything") == []


def test_error_in_a_batch_skips_to_sync_and_names_the_execute():
    session = PostgresSession()
    session.feed(C, 1, startup())
    session.feed(S, 2, msg(b"R", b"\0\0\0\0") + z())
    batch = (msg(b"P", b"s1\0SELECT * FROM t WHERE a = $1\0\0\0") + msg(b"B", b"\0s1\0\0\0\0\0\0\0")
             + msg(b"E", b"\0\0\0\0\0") + msg(b"S"))
    session.feed(C, 3, batch)
    [failed] = session.feed(S, 4, msg(b"1") + error("42P01") + z())
    assert (failed.operation, failed.error_type, failed.attributes["db.collection.name"]) == ("SELECT", "42P01", "t")
    assert failed.attributes["db.namespace"] == "shop" and not session.pending
    # The named statement outlives the failed batch: a later Execute of it is named.
    session.feed(C, 5, msg(b"B", b"p\0s1\0\0\0\0\0\0\0") + msg(b"E", b"p\0\0\0\0\0") + msg(b"S"))
    [ok] = session.feed(S, 6, msg(b"2") + msg(b"D", b"\0\1\0\0\0\1x") + msg(b"C", b"SELECT 1\0") + z())
    assert (ok.attributes["db.query.text"], ok.attributes["db.response.returned_rows"], ok.error_type) == \
        ("SELECT * FROM t WHERE a = $1", 1, None)


def test_mid_stream_execute_of_an_unknown_statement_is_counted():
    session = PostgresSession()
    session.feed(C, 1, msg(b"B", b"\0_pg3_9\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0") + msg(b"S"))
    [exchange] = session.feed(S, 2, msg(b"2") + msg(b"C", b"UPDATE 2\0") + z())
    assert exchange.operation == "" and "db.query.text" not in exchange.attributes
    assert session.counters == {"unknown_statement": 1}


def test_long_data_rows_are_skipped_not_buffered():
    session = PostgresSession()
    session.feed(C, 1, msg(b"Q", b"SELECT blob FROM t\0"))
    row = msg(b"D", b"\0\1" + struct.pack(">I", 3_000_000) + b"x" * 3_000_000)
    out = []
    for i in range(0, len(row), 65536):
        out += session.feed(S, 2, row[i:i + 65536])
        assert len(session.buffers[S].data) <= 65536
    out += session.feed(S, 3, msg(b"C", b"SELECT 1\0") + z())
    assert [(e.operation, e.attributes["db.response.returned_rows"]) for e in out] == [("SELECT", 1)]
    assert not session.counters
