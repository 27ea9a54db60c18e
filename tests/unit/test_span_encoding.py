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
    # A parent id is empty (a root) or valid: all zero is no id (the columns' root)
    parent_span_id=st.one_of(st.just(b""), st.binary(min_size=8, max_size=8).filter(any)),
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
    assert in_any_order(ours) == in_any_order(official(batch))


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
    assert in_any_order(ExportTraceServiceRequest.FromString(encode_traces_request([batch]))) == \
        in_any_order(official(batch))
    for i in range(20):  # short-lived proxies, each encoded once
        span = SpanRecord(b"\x01" * 16, b"\x02" * 8, "x", SpanKind.SERVER, 1, 2,
                          attributes=MappingProxyType({"n": i}))
        decoded = ExportTraceServiceRequest.FromString(encode_traces_request([SpanBatch(HOST, "s", [span])]))
        assert decoded.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.int_value == i


@settings(max_examples=200, deadline=None)
@given(st.lists(spans, min_size=1, max_size=8), st.data())
def test_columns_with_int_attributes_and_resources_decode_to_the_rows_they_hold(batch_spans, data):
    """Columns as a sensor makes them: shapes shared among spans, per-span int attributes after
    the shape's, several resources in one batch. Their request decodes to the official
    message of the same spans in row form, resource by resource."""
    import numpy as np

    from otelbpf.signals.model import SpanColumns
    from otelbpf.signals.otlp import traces_request

    columns = SpanColumns.from_batch(SpanBatch(HOST, "otelbpf.sensors.http", batch_spans))
    n = len(columns)
    columns.shape = np.array(data.draw(st.lists(st.integers(0, len(columns.shapes) - 1), min_size=n, max_size=n)),
                             np.int32)
    ports = data.draw(st.lists(st.integers(0, 2**63 - 1) | st.integers(-(2**63), -1), min_size=n, max_size=n))
    columns.ints = {"network.peer.port": np.array(ports, np.int64)}
    columns.resources = [HOST, Resource.of({"process.pid": 7})]
    columns.resource = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.int32)
    expected = ExportTraceServiceRequest()
    for batch in columns.to_batches():
        expected.MergeFrom(official(batch))
    assert in_any_order(traces_request([columns])) == in_any_order(expected)


def in_any_order(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """The request with each scope's spans sorted: their order carries no meaning, and the
    column encoder groups them by layout."""
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            spans = sorted(ss.spans, key=lambda s: s.SerializeToString(deterministic=True))
            del ss.spans[:]
            ss.spans.extend(spans)
    return request


def test_the_exporter_splits_column_batches_without_losing_a_span():
    """A request over the exporter's item limit is split: 23 spans at 9 give 9 and 14, and
    both halves encode all their spans."""
    from otelbpf.export.otlp import _split_spans
    from otelbpf.signals.model import SpanColumns

    spans = [SpanRecord(bytes([i + 1]) * 16, bytes([i + 1]) * 8, f"GET /{i}", SpanKind.SERVER, i, i + 5)
             for i in range(23)]
    head, rest = _split_spans(SpanColumns.from_batch(SpanBatch(HOST, "s", spans)), 9)
    names = [{s.name for s in ExportTraceServiceRequest.FromString(encode_traces_request([half]))
              .resource_spans[0].scope_spans[0].spans} for half in (head, rest)]
    assert (len(head), len(rest)) == (9, 14)
    assert names[0] | names[1] == {f"GET /{i}" for i in range(23)} and not names[0] & names[1]
