"""Protocol detection by a connection's first bytes, and what it leaves alone."""

from __future__ import annotations

import struct

import pytest

from otelbpf.protocols.detect import detect
from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.l7 import Connection


@pytest.mark.parametrize(("client", "server", "expected"), [
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"", "http2"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", b"", "http2"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", "http1"),
    (b"AMQP\x00\x00\x09\x01", b"", "amqp"),
    (struct.pack(">II", 8, 80877103), b"", "postgresql"),
    (struct.pack(">II", 40, 196608) + b"user\0u\0", b"", "postgresql"),
    (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"", "redis"),
    (b"get some-key\r\n", b"", "memcached"),
    (b"set k 0 60 5\r\nhello\r\n", b"", "memcached"),
    (b'CONNECT {"verbose":false}\r\n', b"", "nats"),
    (b"", b'INFO {"server_id":"x"}\r\n', "nats"),
    (b"", b"\x4a\x00\x00\x00\x0a10.11.6-MariaDB\x00", "mysql"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"", None),  # a TLS ClientHello
    (b"SSH-2.0-OpenSSH_9.2\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", None),
    (b"", b"220 mail ESMTP\r\n", None),
])
def test_detect(client, server, expected):
    assert detect(client, server) == expected


def test_a_first_message_in_pieces_is_still_detected():
    connection = Connection()
    for i, piece in enumerate([b"*1", b"\r\n$4", b"\r\nPI", b"NG\r\n"]):
        connection.feed(Direction.CLIENT, i, piece)
    [exchange] = connection.feed(Direction.SERVER, 9, b"+PONG\r\n")
    assert connection.protocol == "redis" and exchange.operation == "PING" and exchange.start_ns == 0


def test_port_hints_name_what_detection_cannot():
    from otelbpf.protocols.l7 import Connections
    table = Connections(port_hints={6380: "redis"})
    assert table.feed("a", Direction.CLIENT, 1, b"PING\r\n", server_port=6380) == []  # an inline command
    [exchange] = table.feed("a", Direction.SERVER, 2, b"+PONG\r\n")
    assert exchange.operation == "PING"
