"""Redis pairing on hand-made RESP2/RESP3 bytes: chunks cut anywhere, pushes and attributes
that answer no command, inline commands, and errors."""

from __future__ import annotations

from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.redis import RedisSession

C, S = Direction.CLIENT, Direction.SERVER


def feed_all(session, parts):
    out = []
    for i, (direction, chunk) in enumerate(parts):
        out += session.feed(direction, i, chunk)
    return out


def test_replies_cut_anywhere_pair_in_order():
    request = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$2\r\nxy\r\n*1\r\n$4\r\nPING\r\n"
    reply = b"$5\r\nhello\r\n-WRONGTYPE bad\r\n+PONG\r\n"
    for cut in range(len(reply) + 1):
        session = RedisSession()
        got = feed_all(session, [(C, request[:cut % len(request)]), (C, request[cut % len(request):]),
                                 (S, reply[:cut]), (S, reply[cut:])])
        assert [(e.operation, e.error_type) for e in got] == [("GET", None), ("SET", "WRONGTYPE"), ("PING", None)]
        assert not session.counters


def test_resp3_push_and_attribute_answer_no_command():
    session = RedisSession()
    push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    attribute = b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.5\r\n"
    got = feed_all(session, [(C, b"*1\r\n$4\r\nPING\r\n"), (S, push + attribute + b"+PONG\r\n")])
    assert [e.operation for e in got] == ["PING"]
    assert session.counters == {"push": 1}


def test_inline_commands_and_keep_literals():
    session = RedisSession(keep_literals=True)
    got = feed_all(session, [(C, b"set k v\r\nget k\r\n"), (S, b"+OK\r\n$1\r\nv\r\n")])
    assert [(e.operation, e.attributes["db.query.text"]) for e in got] == [("SET", "set k v"), ("GET", "get k")]


def test_unanswered_commands_end_incomplete_at_close():
    session = RedisSession()
    feed_all(session, [(C, b"*2\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n")])
    [left] = session.close(50)
    assert (left.operation, left.complete, left.end_ns) == ("BLPOP", False, 50)


def test_malformed_reply_is_counted_and_pending_commands_dropped():
    session = RedisSession()
    got = feed_all(session, [(C, b"*1\r\n$4\r\nPING\r\n"), (S, b"?what\r\n")])
    assert got == [] and session.counters == {"malformed": 1, "unpaired": 1}
    assert [e.operation for e in feed_all(session, [(C, b"*1\r\n$4\r\nPING\r\n"), (S, b"+PONG\r\n")])] == ["PING"]
