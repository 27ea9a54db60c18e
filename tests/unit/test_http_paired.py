"""The column path of kernel-paired requests (HttpTracker.paired) against the one-by-one path
(HttpTracker.exchange) it replaces: the same spans, whatever mix of requests, connections,
statuses and trace contexts a batch holds."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.sensors.http_tracker import HttpTracker, Message, PairedExchanges
from otelbpf.signals.model import Resource, SpanColumns

OFFSET = 1_000_000_000_000
WIDTH = 96
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"GET /items/17?q=1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: wrk\r\n\r\n",
    b"POST /orders HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET /t HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    b"GET /t HTTP/1.1\r\ntraceparent: 00-11111111111111111111111111111111-2222222222222222-01\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",  # pipelined: the slow way
    b"\x16\x03\x01 not http at all",                    # unparsed
]
ENDPOINTS = [(2, bytes([127, 0, 0, 1]) + bytes(12), 8080, bytes([127, 0, 0, 1]) + bytes(12), 40000 + i)
             for i in range(3)] + [(10, bytes(15) + b"\x01", 443, bytes(15) + b"\x01", 50000)]

row = st.tuples(st.sampled_from(range(len(REQUESTS))), st.sampled_from(range(len(ENDPOINTS))), st.booleans(),
                st.booleans(), st.sampled_from([200, 201, 404, 500, 503]), st.integers(1, 10**6))


def _message(request: bytes, endpoint: int, server: bool, tls: bool, start: int) -> Message:
    family, local, local_port, peer, peer_port = ENDPOINTS[endpoint]
    return Message(start, 0xFFFF0000 + endpoint, 4242, 7, int(server), tls, family, local, local_port, peer,
                   peer_port, request)


def _spans(columns: SpanColumns | None) -> list:
    if columns is None:
        return []
    columns.resources, columns.resource = [Resource.of({})], np.zeros(len(columns), np.int32)  # one process
    return [s for b in columns.to_batches() for s in b.spans]


def _view(span) -> tuple:
    return (span.name, span.kind, dict(span.attributes), span.status_code, span.status_message,
            span.start_time_unix_nano, span.end_time_unix_nano)


@settings(max_examples=150, deadline=None)
@given(st.lists(row, min_size=1, max_size=40))
def test_paired_columns_give_the_spans_of_one_by_one_pairing(rows):
    one_by_one: list = []
    reference = HttpTracker(one_by_one.append, OFFSET, random.Random(1))
    starts = np.cumsum([gap for *_, gap in rows]).astype(np.uint64)
    for (request, endpoint, server, tls, status, _), start in zip(rows, starts.tolist()):
        reference.exchange(_message(REQUESTS[request], endpoint, server, tls, start), start + 5, status)

    slow: list = []
    tracker = HttpTracker(slow.append, OFFSET, random.Random(2))
    n = len(rows)
    payload = np.frombuffer(random.Random(3).randbytes(n * WIDTH), np.uint8).reshape(n, WIDTH).copy()  # garbage tail
    captured = np.zeros(n, np.uint16)
    for i, (request, *_) in enumerate(rows):
        payload[i, :len(REQUESTS[request])] = np.frombuffer(REQUESTS[request], np.uint8)
        captured[i] = len(REQUESTS[request])
    run = PairedExchanges(
        starts, starts + np.uint64(5), np.full(n, 4242, np.uint32), np.full(n, 7, np.uint32),
        np.array([0xFFFF0000 + e for _, e, *_ in rows], np.uint64), np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows]), np.array([r[4] for r in rows], np.uint16), payload, captured,
        np.array([e for _, e, *_ in rows], np.int32), ENDPOINTS)
    columns = tracker.paired(run, "test")
    assert columns is None or (columns.pid == 4242).all()
    got = _spans(columns) + [c.span for c in slow]
    want = [c.span for c in one_by_one]
    key = lambda s: (s.start_time_unix_nano, s.end_time_unix_nano, s.name, s.kind)
    got.sort(key=key)
    want.sort(key=key)
    assert [_view(s) for s in got] == [_view(s) for s in want]
    for g, w in zip(got, want):
        # a trace context in the request: its trace id, and its span id as a client's own or a server's parent
        if "traceparent" in str(w.attributes) or w.trace_id.hex().startswith(("0af7", "1111")):
            assert (g.trace_id, g.parent_span_id) == (w.trace_id, w.parent_span_id)
        assert len(g.span_id) == 8 and len(g.trace_id) == 16
    assert tracker.unparsed == reference.unparsed
    if columns is not None:  # distinct requests share a shape: each described once
        assert len(columns.shapes) <= len({(r[0], r[1], r[2], r[3], r[4]) for r in rows})
