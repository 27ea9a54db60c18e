"""Pairing of captured messages into spans, without a kernel: keep-alive, pipelining,
100-continue, closes mid-response, trace context, and the OTLP traces mapping."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbpf.export.console import JsonLinesSink
from otelbpf.export.fanout import FanoutSink
from otelbpf.sensors.http_tracker import HttpTracker, Message
from otelbpf.signals import otlp
from otelbpf.signals.model import Resource, SpanBatch, SpanKind, StatusCode

WRITE, READ, CLOSE = 0, 1, 2
LOCAL, PEER = bytes([127, 0, 0, 1]) + bytes(12), bytes([10, 0, 0, 7]) + bytes(12)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def msg(t, direction, payload=b"", sock=1, tid=100, tls=False):
    return Message(t, sock, 42, tid, direction, tls, 2, LOCAL, 8080, PEER, 50000, payload)


def tracker():
    spans = []
    return HttpTracker(spans.append, 1_000_000_000_000, random.Random(7)), spans


def test_exchanges_paired_in_the_kernel_and_the_requests_pipelined_behind_them():
    t, spans = tracker()
    # one message held two pipelined requests: the kernel paired the first with its response
    t.exchange(msg(10, READ, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), 20, 200)
    t.feed(msg(30, WRITE, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))  # /b's, passed through
    t.exchange(msg(40, WRITE, b"GET /down HTTP/1.1\r\nHost: db:5000\r\n\r\n", sock=2), 45, 500)
    t.exchange(msg(50, READ, b"\x16\x03\x01 not http"), 60, 200)
    assert [(c.span.name, c.span.kind, c.status, c.span.start_time_unix_nano % 10**6, c.span.end_time_unix_nano % 10**6)
            for c in spans] == [("GET /a", SpanKind.SERVER, 200, 10, 20), ("GET /b", SpanKind.SERVER, 404, 10, 30),
                                ("GET", SpanKind.CLIENT, 500, 40, 45)]
    assert spans[2].error_type == "500" and spans[2].span.attributes["server.address"] == "db"
    assert t.unparsed == 1 and t.open == 0


def test_keep_alive_and_pipelining_pair_in_order():
    t, spans = tracker()
    t.feed(msg(10, READ, b"GET /a HTTP/1.1\r\nHost: svc:8080\r\n\r\nGET /b/12 HTTP/1.1\r\n\r\n"))
    t.feed(msg(20, WRITE, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    t.feed(msg(30, WRITE, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"))
    t.feed(msg(40, READ, b"HEAD /c HTTP/1.1\r\n\r\n"))
    t.feed(msg(45, WRITE, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"))
    assert [(c.span.name, c.status, c.span.start_time_unix_nano % 10**6, c.span.end_time_unix_nano % 10**6)
            for c in spans] == [("GET /a", 200, 10, 20), ("GET /b/{id}", 503, 10, 30), ("HEAD /c", 200, 40, 45)]
    first = spans[0].span
    assert first.kind is SpanKind.SERVER
    assert first.attributes["server.address"] == "svc" and first.attributes["server.port"] == 8080
    assert first.attributes["client.address"] == "10.0.0.7"
    assert first.attributes["network.peer.port"] == 50000
    assert spans[1].span.status_code is StatusCode.ERROR and spans[1].error_type == "503"


def test_100_continue_waits_for_the_final_response():
    t, spans = tracker()
    t.feed(msg(1, READ, b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"))
    t.feed(msg(2, WRITE, b"HTTP/1.1 100 Continue\r\n\r\n"))
    t.feed(msg(5, WRITE, b"HTTP/1.1 201 Created\r\n\r\n"))
    assert [(c.status, c.duration_s) for c in spans] == [(201, 4e-9)]


def test_close_mid_response_ends_open_exchanges_as_errors():
    t, spans = tracker()
    t.feed(msg(1, WRITE, b"GET /slow HTTP/1.1\r\nHost: up\r\n\r\n", sock=9))
    t.feed(msg(7, CLOSE, sock=9))
    [c] = spans
    assert c.span.kind is SpanKind.CLIENT and c.error_type == "connection_closed"
    assert c.span.status_code is StatusCode.ERROR and c.span.end_time_unix_nano % 10**6 == 7
    assert c.span.attributes["url.full"] == "http://up:50000/slow"


def test_traceparent_and_the_same_thread_heuristic():
    t, spans = tracker()
    t.feed(msg(1, READ, f"GET /in HTTP/1.1\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode(), sock=1, tid=5))
    t.feed(msg(2, WRITE, b"GET /down HTTP/1.1\r\n\r\n", sock=2, tid=5))   # child: same thread
    t.feed(msg(2, WRITE, b"GET /other HTTP/1.1\r\n\r\n", sock=3, tid=6))  # another thread: a new trace
    t.feed(msg(3, READ, b"HTTP/1.1 200 OK\r\n\r\n", sock=2, tid=5))
    t.feed(msg(3, READ, b"HTTP/1.1 404 Not Found\r\n\r\n", sock=3, tid=6))
    t.feed(msg(4, WRITE, b"HTTP/1.1 200 OK\r\n\r\n", sock=1, tid=5))
    down, other, server = (c.span for c in spans)
    assert server.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert server.parent_span_id.hex() == "b7ad6b7169203331"
    assert down.trace_id == server.trace_id and down.parent_span_id == server.span_id
    assert other.trace_id != server.trace_id and other.parent_span_id == b""
    assert spans[1].error_type == "404"  # a client sees 4xx as an error


def test_an_instrumented_client_keeps_its_span_id():
    t, spans = tracker()
    t.feed(msg(1, WRITE, f"GET / HTTP/1.1\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode(), tls=True))
    t.feed(msg(2, READ, b"HTTP/1.1 200 OK\r\n\r\n"))
    [c] = spans
    assert c.span.span_id.hex() == "b7ad6b7169203331" and c.scheme == "https"


def test_unparsed_and_unmatched_are_counted():
    t, spans = tracker()
    t.feed(msg(1, READ, b"GET garbage"))
    t.feed(msg(2, WRITE, b"HTTP/1.1 200 OK\r\n\r\n"))
    assert (t.unparsed, t.unmatched, spans) == (1, 1, [])


def test_spans_map_to_official_otlp_and_json_lines(tmp_path):
    t, spans = tracker()
    t.feed(msg(10, READ, f"GET /a HTTP/1.1\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode()))
    t.feed(msg(20, WRITE, b"HTTP/1.1 500 Oops\r\n\r\n"))
    batch = SpanBatch(Resource.of({"service.name": "svc"}), "otelbpf.sensors.http", [c.span for c in spans])
    decoded = ExportTraceServiceRequest.FromString(otlp.encode_traces_request([batch]))
    [span] = decoded.resource_spans[0].scope_spans[0].spans
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    assert span.kind == 2 and span.status.code == 2 and span.name == "GET /a"
    assert span.end_time_unix_nano - span.start_time_unix_nano == 10
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert attrs["http.response.status_code"].int_value == 500
    assert attrs["error.type"].string_value == "500"
    assert decoded.resource_spans[0].resource.attributes[0].value.string_value == "svc"
    path = tmp_path / "spans.jsonl"
    sink = FanoutSink([JsonLinesSink(str(path))])
    sink.export_spans(batch)
    sink.shutdown()
    assert '"trace_id":"0af7651916cd43dd8448eb211c80319c"' in path.read_text()


def test_open_exchanges_are_bounded_in_all_and_evictions_counted(monkeypatch):
    from otelbpf.sensors import http_tracker

    monkeypatch.setattr(http_tracker, "MAX_OPEN", 23)
    t, spans = tracker()
    for sock in range(31):  # 31 connections, each with a request and no response yet
        t.feed(msg(sock, READ, b"GET /x HTTP/1.1\r\n\r\n", sock=sock))
    assert t.open == 23 and t.evicted == 31 - 23
    t.feed(msg(100, WRITE, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", sock=30))  # a live one still pairs
    t.feed(msg(101, WRITE, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", sock=0))   # an evicted one does not
    assert len(spans) == 1 and t.unmatched == 1 and t.open == 22
    t.feed(msg(102, CLOSE, sock=29))
    assert t.open == 21 and spans[-1].error_type == "connection_closed"


def test_repeated_heads_are_parsed_once_and_give_equal_spans():
    t, spans = tracker()
    for i in range(7):
        t.feed(msg(10 * i, READ, b"GET /same HTTP/1.1\r\nUser-Agent: u\r\n\r\n"))
        t.feed(msg(10 * i + 5, WRITE, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    assert len(t._parsed) == 2
    assert len({c.span.span_id for c in spans}) == 7
    assert all(c.span.attributes == spans[0].span.attributes for c in spans)
    assert spans[0].span.attributes is not spans[1].span.attributes  # each span owns its dict


def test_cached_descriptions_keep_each_connections_peer_port():
    t, spans = tracker()
    for port in (50001, 50003):
        m = Message(1, port, 42, 100, READ, False, 2, LOCAL, 8080, PEER, port, b"GET /p HTTP/1.1\r\n\r\n")
        t.feed(m)
        t.feed(Message(2, port, 42, 100, WRITE, False, 2, LOCAL, 8080, PEER, port, b"HTTP/1.1 200 OK\r\n\r\n"))
    assert [c.span.attributes["network.peer.port"] for c in spans] == [50001, 50003]
