"""HTTP/2 pairing on frames built here with hpack's encoder: h2c by Upgrade, CONTINUATION,
padding, resets, trailers-only gRPC answers, large bodies skipped."""

from __future__ import annotations

import struct

from hpack import Encoder

from otelbpf.protocols.detect import HTTP2_PREFACE, detect
from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.http2 import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    RST_STREAM,
    SETTINGS,
    Http2Session,
)

C, S = Direction.CLIENT, Direction.SERVER


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def request(encoder: Encoder, stream: int, path: str, grpc: bool = False) -> bytes:
    headers = [(":method", "POST" if grpc else "GET"), (":scheme", "http"), (":path", path), (":authority", "svc:50051")]
    if grpc:
        headers.append(("content-type", "application/grpc"))
    return frame(HEADERS, END_HEADERS | (0 if grpc else END_STREAM), stream, encoder.encode(headers))


def test_h2c_upgrade_then_streams():
    upgrade = (b"GET /first HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
    assert detect(upgrade) == "http2"
    session = Http2Session()
    client, server = Encoder(), Encoder()
    session.feed(C, 1, upgrade)
    session.feed(S, 2, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + frame(SETTINGS, 0, 0))
    session.feed(C, 3, HTTP2_PREFACE + frame(SETTINGS, 0, 0) + request(client, 3, "/second"))
    got = session.feed(S, 4, frame(HEADERS, END_HEADERS | END_STREAM, 1, server.encode([(":status", "200")]))
                       + frame(HEADERS, END_HEADERS, 3, server.encode([(":status", "404")])) + frame(DATA, END_STREAM, 3, b"x"))
    assert [(e.attributes["url.path"], e.attributes["http.response.status_code"], e.start_ns) for e in got] == \
        [("/first", 200, 1), ("/second", 404, 3)]
    assert got[0].attributes["server.address"] == "web" and not session.counters


def test_upgrade_refused_leaves_the_connection_alone():
    session = Http2Session()
    session.feed(C, 1, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n")
    session.feed(S, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert session.opaque and session.counters == {"upgrade_refused": 1}


def test_continuation_padding_and_trailers_only_grpc_error():
    session = Http2Session()
    client, server = Encoder(), Encoder()
    block = request(client, 1, "/pkg.Svc/Call", grpc=True)[9:]
    padded = bytes([3]) + block[:5] + b"\0\0\0"
    session.feed(C, 1, HTTP2_PREFACE + frame(HEADERS, PADDED, 1, padded) + frame(CONTINUATION, END_HEADERS, 1, block[5:]))
    trailers_only = server.encode([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "14")])
    [exchange] = session.feed(S, 2, frame(HEADERS, END_HEADERS | END_STREAM, 1, trailers_only))
    assert (exchange.operation, exchange.error_type, exchange.attributes["rpc.response.status_code"]) == \
        ("pkg.Svc/Call", "UNAVAILABLE", "UNAVAILABLE")


def test_reset_stream_ends_it_with_the_error_code():
    session = Http2Session()
    session.feed(C, 1, HTTP2_PREFACE + request(Encoder(), 1, "/slow") + frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    assert session.streams == {}
    session2 = Http2Session()
    session2.feed(C, 1, HTTP2_PREFACE + request(Encoder(), 1, "/slow"))
    [exchange] = session2.feed(C, 2, frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    assert (exchange.operation, exchange.error_type) == ("GET", "CANCEL")


def test_large_data_frames_are_skipped_and_oversized_frames_refused():
    session = Http2Session()
    server = Encoder()
    session.feed(C, 1, HTTP2_PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 1 << 20)) + request(Encoder(), 1, "/big"))
    body = frame(HEADERS, END_HEADERS, 1, server.encode([(":status", "200")])) + frame(DATA, END_STREAM, 1, b"b" * 1_000_000)
    got = []
    for i in range(0, len(body), 65536):
        got += session.feed(S, 2, body[i:i + 65536])
        assert len(session.buffers[S].data) <= 2 * 65536
    assert [e.attributes["http.response.status_code"] for e in got] == [200]
    session.feed(C, 3, frame(DATA, 0, 1, b"c" * 20000))  # over the client's default 16384
    assert session.counters["malformed"] == 1
