"""The fast span encoder against spans built field by field with the official classes."""

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from otelbpf.signals.model import Resource, SpanBatch, SpanKind, SpanRecord, StatusCode
from otelbpf.signals.otlp import encode_traces_request, set_any_value

HOST = Resource.of({"host.name": "node-1", "service.name": "otelbpf"})
values = st.one_of(st.text(max_size=20), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(),
                   st.floats(allow_nan=False), st.lists(st.text(max_size=5), max_size=3))
spans = st.builds(
    SpanRecord,
    trace_id=st.binary(min_size=16, max_size=16), span_id=st.binary(min_size=8, max_size=8),
    name=st.text(max_size=30), kind=st.sampled_from(list(SpanKind)),
    start_time_unix_nano=st.integers(min_value=0, max_value=2**64 - 1),
    end_time_unix_nano=st.integers(min_value=0, max_value=2**64 - 1),
    parent_span_id=st.one_of(st.just(b""), st.binary(min_size=8, max_size=8)),
    attributes=st.dictionaries(st.sampled_from(["http.request.method", "url.path", "server.port", "a", "b"]), values,
                               max_size=5),
    status_code=st.sampled_from(list(StatusCode)), status_message=st.text(max_size=10),
)


def official(batch: SpanBatch) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in batch.resource.attributes:
        set_any_value(rs.resource.attributes.add(key=key).value, value)
    ss = rs.scope_spans.add()
    ss.scope.name = batch.scope
    from otelbpf import __version__
    ss.scope.version = __version__
    for span in batch.spans:
        s = ss.spans.add(trace_id=span.trace_id, span_id=span.span_id, parent_span_id=span.parent_span_id,
                         name=span.name, kind=int(span.kind), start_time_unix_nano=span.start_time_unix_nano,
                         end_time_unix_nano=span.end_time_unix_nano)
        for key, value in span.attributes.items():
            set_any_value(s.attributes.add(key=key).value, value)
        if span.status_code or span.status_message:
            s.status.code = int(span.status_code)
            s.status.message = span.status_message
    return request


@settings(max_examples=300, deadline=None)
@given(st.lists(spans, min_size=1, max_size=8))
def test_fast_encoding_decodes_to_the_official_message(batch_spans):
    batch = SpanBatch(HOST, "otelbpf.sensors.http", batch_spans)
    ours = ExportTraceServiceRequest.FromString(encode_traces_request([batch]))
    assert ours == official(batch)


def test_status_and_kind_survive():
    span = SpanRecord(b"\x01" * 16, b"\x02" * 8, "GET /x", SpanKind.SERVER, 10, 20,
                      attributes={"http.response.status_code": 500}, status_code=StatusCode.ERROR)
    decoded = ExportTraceServiceRequest.FromString(encode_traces_request([SpanBatch(HOST, "s", [span])]))
    s = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert s.kind == trace_pb2.Span.SPAN_KIND_SERVER and s.status.code == trace_pb2.Status.STATUS_CODE_ERROR


@settings(max_examples=100, deadline=None)
@given(st.lists(spans, min_size=1, max_size=8), st.integers(min_value=1, max_value=4))
def test_shared_read_only_attributes_encode_like_a_dict(batch_spans, sharing):
    """Spans that share one MappingProxyType (as the HTTP tracker's do) are encoded from a
    cache keyed by that object: each must still decode to its own attributes, including
    proxies made and freed one after another (their ids can repeat)."""
    from types import MappingProxyType

    shared = [MappingProxyType(dict(s.attributes)) for s in batch_spans[:sharing]]
    for i, span in enumerate(batch_spans):
        span.attributes = shared[i % len(shared)]
    batch = SpanBatch(HOST, "otelbpf.sensors.http", batch_spans)
    assert ExportTraceServiceRequest.FromString(encode_traces_request([batch])) == official(batch)
    for i in range(20):  # short-lived proxies, each encoded once
        span = SpanRecord(b"\x01" * 16, b"\x02" * 8, "x", SpanKind.SERVER, 1, 2,
                          attributes=MappingProxyType({"n": i}))
        decoded = ExportTraceServiceRequest.FromString(encode_traces_request([SpanBatch(HOST, "s", [span])]))
        assert decoded.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.int_value == i
