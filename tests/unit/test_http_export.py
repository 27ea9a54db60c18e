"""Spans through the OTLP exporter's traces pipeline to a receiver, over every protocol."""

from __future__ import annotations

import pytest

from otelbpf.export.otlp import OtlpExporter
from otelbpf.export.otlp_settings import OtlpSettings
from otelbpf.receiver.otlp import OtlpReceiver
from otelbpf.signals.model import Resource, SpanBatch, SpanKind, SpanRecord
from otelbpf.signals.registry import Registry


def span(i: int) -> SpanRecord:
    return SpanRecord(trace_id=i.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name="GET /",
                      kind=SpanKind.SERVER, start_time_unix_nano=1_000 + i, end_time_unix_nano=2_000 + i,
                      attributes={"http.response.status_code": 200})


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
def test_spans_arrive_in_batches_and_are_counted(protocol):
    with OtlpReceiver() as receiver:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
        registry = Registry()
        settings = OtlpSettings.from_env({}, {"endpoint": endpoint, "protocol": protocol,
                                              "batch_timeout": 0.02, "max_batch_size": 100})
        exporter = OtlpExporter(settings, registry)
        spans = [span(i) for i in range(231)]
        for start in range(0, len(spans), 23):
            exporter.export_spans(SpanBatch(Resource.of({"service.name": "nginx"}), "http", spans[start:start + 23]))
        exporter.shutdown(timeout=10)
        got = [s for req in receiver.received_traces() for rs in req.resource_spans
               for ss in rs.scope_spans for s in ss.spans]
        assert sorted(s.start_time_unix_nano for s in got) == [1_000 + i for i in range(231)]
        assert {s.trace_id for s in got} == {i.to_bytes(16, "big") for i in range(231)}
        assert registry.counter("otelbpf.exporter.sent").value(signal="traces", exporter="otlp") == 231
