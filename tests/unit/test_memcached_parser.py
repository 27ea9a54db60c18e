"""Memcached pairing on hand-written lines: meta commands, quiet modes, large values, errors."""

from __future__ import annotations

from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.memcached import MemcachedSession

C, S = Direction.CLIENT, Direction.SERVER


def test_meta_commands_pair_in_order():
    session = MemcachedSession()
    session.feed(C, 1, b"ms k 2 T60\r\nhi\r\nmg k v\r\nmg nope v\r\nmn\r\n")
    got = session.feed(S, 2, b"HD\r\nVA 2\r\nhi\r\nEN\r\nMN\r\n")
    assert [(e.operation, e.end_ns) for e in got] == [("ms", 2), ("mg", 2), ("mg", 2), ("mn", 2)]
    assert not session.counters


def test_quiet_and_noreply_commands_expect_no_answer():
    session = MemcachedSession()
    got = session.feed(C, 1, b"set a 0 0 1 noreply\r\nx\r\nmg a v q\r\nget a\r\n")
    assert [e.operation for e in got] == ["set", "mg"]
    [get] = session.feed(S, 2, b"VALUE a 0 1\r\nx\r\nEND\r\n")
    assert (get.operation, get.attributes["db.response.returned_rows"]) == ("get", 1)


def test_a_large_value_is_skipped_as_it_arrives():
    session = MemcachedSession()
    session.feed(C, 1, b"get big\r\n")
    value = b"VALUE big 0 2000000\r\n" + b"v" * 2_000_000 + b"\r\nEND\r\n"
    got = []
    for i in range(0, len(value), 65536):
        got += session.feed(S, 2, value[i:i + 65536])
        assert len(session.buffers[S].data) <= 65536 + 8192
    assert [(e.operation, e.attributes["db.response.returned_rows"]) for e in got] == [("get", 1)]


def test_errors_name_error_type_and_stats_listing_ends_at_end():
    session = MemcachedSession()
    session.feed(C, 1, b"bogus\r\nstats\r\nincr a 1\r\n")
    got = session.feed(S, 2, b"ERROR\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\nSERVER_ERROR out of memory\r\n")
    assert [(e.operation, e.error_type) for e in got] == [("bogus", "ERROR"), ("stats", None), ("incr", "SERVER_ERROR")]
    assert session.counters == {"unknown_command": 1}
