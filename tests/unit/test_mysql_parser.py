"""MySQL pairing on hand-built packets: the modern CLIENT_DEPRECATE_EOF form (OK packets end
result sets), multiple results, prepares with parameters and columns, TLS."""

from __future__ import annotations

import struct

from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.mysql import CLIENT_CONNECT_WITH_DB, CLIENT_DEPRECATE_EOF, CLIENT_PROTOCOL_41, CLIENT_SSL, MySQLSession

C, S = Direction.CLIENT, Direction.SERVER
MODERN = CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF | CLIENT_CONNECT_WITH_DB


def packet(sequence: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


def greeting(caps: int, version: bytes = b"8.0.36") -> bytes:
    body = (b"\x0a" + version + b"\0" + struct.pack("<I", 7) + b"12345678" + b"\0" + struct.pack("<H", caps & 0xffff)
            + b"\x21" + b"\x02\x00" + struct.pack("<H", caps >> 16) + b"\x15" + b"\0" * 10 + b"123456789012\0")
    return packet(0, body)


def handshake_response(caps: int, database: bytes = b"shop") -> bytes:
    body = struct.pack("<IIB", caps, 1 << 24, 0x21) + b"\0" * 23 + b"app\0" + b"\x00" + database + b"\0"
    return packet(1, body)


def ok(sequence: int, status: int = 2, header: int = 0) -> bytes:
    return packet(sequence, bytes([header]) + b"\0\0" + struct.pack("<HH", status, 0))


def connected(caps: int = MODERN) -> MySQLSession:
    session = MySQLSession()
    session.feed(S, 1, greeting(caps))
    session.feed(C, 2, handshake_response(caps))
    session.feed(S, 3, ok(2))
    return session


def test_result_set_ended_by_an_ok_packet():
    session = connected()
    session.feed(C, 4, packet(0, b"\x03SELECT a, b FROM t WHERE c = 'x'"))
    answer = packet(1, b"\x02") + packet(2, b"coldef-a") + packet(3, b"coldef-b") + packet(4, b"\x011\x012") \
        + packet(5, b"\x013\x014") + ok(6, header=0xfe)
    [exchange] = session.feed(S, 5, answer)
    assert exchange.attributes == {"db.system.name": "mysql", "db.operation.name": "SELECT", "db.namespace": "shop",
                                   "db.query.text": "SELECT a, b FROM t WHERE c = ?", "db.collection.name": "t",
                                   "db.response.returned_rows": 2}
    assert exchange.end_ns == 5 and not session.counters


def test_multiple_results_follow_while_the_server_says_more():
    session = connected()
    session.feed(C, 4, packet(0, b"\x03CALL p()"))
    assert session.feed(S, 5, packet(1, b"\x01") + packet(2, b"coldef") + packet(3, b"\x01x") + ok(4, 0x0a, 0xfe)) == []
    [exchange] = session.feed(S, 6, ok(5, 2))
    assert exchange.operation == "CALL" and exchange.attributes["db.response.returned_rows"] == 1


def test_prepare_with_parameters_and_columns_then_execute_and_error():
    session = connected()
    session.feed(C, 4, packet(0, b"\x16UPDATE t SET a = ? WHERE b = ?"))
    prepare_ok = packet(1, b"\x00" + struct.pack("<IHHBH", 42, 1, 2, 0, 0))
    assert session.feed(S, 5, prepare_ok + packet(2, b"param") + packet(3, b"param") + packet(4, b"column")) == []
    session.feed(C, 6, packet(0, b"\x17" + struct.pack("<IBI", 42, 0, 1) + b"\0\1\x03\0\x03\0" + b"\1\0\0\0\2\0\0\0"))
    [exchange] = session.feed(S, 7, packet(1, b"\xff" + struct.pack("<H", 1213) + b"#40001Deadlock found"))
    assert (exchange.attributes["db.query.text"], exchange.error_type) == ("UPDATE t SET a = ? WHERE b = ?", "1213")
    assert exchange.attributes["db.response.status_code"] == "1213"


def test_ssl_request_makes_the_connection_opaque():
    session = MySQLSession()
    session.feed(S, 1, greeting(MODERN | CLIENT_SSL, b"10.11.6-MariaDB"))
    session.feed(C, 2, packet(1, struct.pack("<IIB", MODERN | CLIENT_SSL, 1 << 24, 0x21) + b"\0" * 23))
    assert session.opaque and session.counters == {"encrypted": 1}
    assert session.system == "mariadb"


def test_mid_stream_commands_pair_without_the_handshake():
    session = MySQLSession()
    session.feed(C, 1, packet(0, b"\x03DELETE FROM t"))
    [exchange] = session.feed(S, 2, packet(1, b"\x00\x03\x00\x02\x00\x00\x00"))
    assert exchange.operation == "DELETE" and "db.namespace" not in exchange.attributes
