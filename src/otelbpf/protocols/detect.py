"""Which protocol a connection speaks, from the first bytes of its first message in each
direction, not from its port.

Some protocols open with the client's bytes (PostgreSQL's startup packet, AMQP's header,
the HTTP/2 preface, a Redis or memcached command), others with the server's (MySQL's
handshake, NATS's INFO): detect() takes both and says None when neither is known, so an
unknown connection costs this one check. The checks are cheap prefix tests, the same ones
the kernel side can make on its first copied bytes.
"""

from __future__ import annotations

import re
import struct

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
PG_PROTOCOL_3 = 196608        # protocol 3.0 in a startup message
PG_SSL_REQUEST = 80877103
PG_GSSENC_REQUEST = 80877104
PG_CANCEL_REQUEST = 80877102

_HTTP1_REQUEST = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) \S")
_H2C_UPGRADE = re.compile(rb"\r\nupgrade:[ \t]*h2c\r\n", re.I)
_REDIS_ARRAY = re.compile(rb"\*[1-9][0-9]{0,6}\r\n\$[0-9]{1,9}\r\n")
_MEMCACHED = re.compile(
    rb"(?:(?:get|gets|gat|gats|delete|incr|decr|touch) \S|(?:set|add|replace|append|prepend|cas) \S+ \d+ -?\d+ \d+"
    rb"|(?:version|stats|flush_all|verbosity|quit)(?:\r\n| )|(?:mg|ms|md|ma|mn)(?: |\r\n))"
)
_NATS_INFO = re.compile(rb"INFO \{")
_NATS_CLIENT = re.compile(rb"(?:CONNECT \{|PUB \S|HPUB \S|SUB \S)")


def detect(client: bytes = b"", server: bytes = b"") -> str | None:
    """The protocol of a connection whose first messages are these (either may be empty):
    "http1", "http2", "postgresql", "mysql", "redis", "memcached", "nats", "amqp"; None when
    neither side's bytes are recognised."""
    if client:
        found = _from_client(client)
        if found is not None:
            return found
    if server:
        return _from_server(server)
    return None


def _from_client(data: bytes) -> str | None:
    if data.startswith(HTTP2_PREFACE[:min(len(data), len(HTTP2_PREFACE))]) and len(data) >= 4:
        return "http2"
    if data.startswith(AMQP_HEADER[:min(len(data), 8)]) and len(data) >= 5:
        return "amqp"
    if _is_postgres_first(data):
        return "postgresql"
    if _NATS_CLIENT.match(data):  # before HTTP/1: NATS's CONNECT is followed by JSON, HTTP's by a host
        return "nats"
    if _HTTP1_REQUEST.match(data):
        return "http2" if _H2C_UPGRADE.search(data) else "http1"
    if _REDIS_ARRAY.match(data):
        return "redis"
    if _MEMCACHED.match(data):
        return "memcached"
    return None


def _is_postgres_first(data: bytes) -> bool:
    """A startup packet, SSLRequest, GSSENCRequest or CancelRequest: a length then a code."""
    if len(data) < 8:
        return False
    length, code = struct.unpack_from(">II", data)
    if code in (PG_SSL_REQUEST, PG_GSSENC_REQUEST):
        return length == 8
    if code == PG_CANCEL_REQUEST:
        return length == 16
    return code == PG_PROTOCOL_3 and 8 < length < 10_000


def _from_server(data: bytes) -> str | None:
    # MySQL's initial handshake: 3-byte length, sequence 0, protocol version 10, a version string.
    if len(data) >= 6 and data[3] == 0 and data[4] == 10 and 0 < int.from_bytes(data[:3], "little") < 1024 \
            and 0x20 <= data[5] < 0x7f:
        return "mysql"
    if _NATS_INFO.match(data):
        return "nats"
    return None
