"""Our OTLP encoding decodes with the official classes into exactly the expected messages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from otelbpf.signals.model import (
    LogBatch,
    LogRecord,
    Metric,
    MetricBatch,
    MetricKind,
    MetricPoint,
    Resource,
    Severity,
)
from otelbpf.signals.otlp import (
    SCOPE_VERSION,
    encode_logs_request,
    logs_request,
    metrics_request,
    set_any_value,
)
from otelbpf.signals.otlp_json import from_json, to_json


def reference_logs_request(batches: list[LogBatch]) -> ExportLogsServiceRequest:
    """Built field by field with the official classes, the slow obvious way."""
    request = ExportLogsServiceRequest()
    groups: dict = {}
    for b in batches:
        groups.setdefault(repr(b.resource), (b.resource, {}))[1].setdefault(b.scope, []).append(b)
    for resource, scopes in groups.values():
        rl = request.resource_logs.add()
        for k, v in resource.attributes:
            set_any_value(rl.resource.attributes.add(key=k).value, v)
        for scope, scope_batches in scopes.items():
            sl = rl.scope_logs.add()
            sl.scope.name, sl.scope.version = scope, SCOPE_VERSION
            for b in scope_batches:
                for r in b.records:
                    lr = sl.log_records.add(
                        time_unix_nano=r.time_unix_nano,
                        observed_time_unix_nano=r.time_unix_nano,
                        severity_number=int(r.severity),
                        severity_text=r.severity.name,
                        event_name=r.event_name,
                    )
                    if r.body is not None:
                        lr.body.string_value = r.body
                    for k, v in r.attributes.items():
                        set_any_value(lr.attributes.add(key=k).value, v)
    return request


HOST = Resource.of({"host.name": "node-1", "host.arch": "amd64"})

ALL_TYPES = {
    "s": "bash",
    "empty": "",
    "unicode": "zürich ✓",
    "i": 23,
    "zero": 0,
    "neg": -7,
    "big": 2**63 - 1,
    "min": -(2**63),
    "f": 0.25,
    "t": True,
    "false": False,
    "b": b"\x00\xffab",
    "list": ["ls", "-l", 3, 1.5, True, b"x"],
    "empty_list": [],
    "long": "x" * 300,
}


def test_every_attribute_type_time_severity_and_event_name_round_trip():
    records = [
        LogRecord(1_700_000_000_123_456_789, "process.exec", Severity.WARN, "hello", ALL_TYPES),
        LogRecord(1, "", Severity.DEBUG, None, {}),
        LogRecord(2**64 - 1, "process.exit", Severity.FATAL, "", {"i": 1, "t": True, "f": 1.0}),
    ]
    batch = LogBatch(HOST, "otelbpf.process", records)
    decoded = ExportLogsServiceRequest.FromString(encode_logs_request([batch]))
    assert decoded == reference_logs_request([batch])

    record = decoded.resource_logs[0].scope_logs[0].log_records[0]
    assert record.time_unix_nano == 1_700_000_000_123_456_789
    assert record.severity_number == logs_pb2.SEVERITY_NUMBER_WARN
    assert record.severity_text == "WARN"
    assert record.event_name == "process.exec"
    assert not any(a.key == "event.name" for a in record.attributes)
    assert record.body.string_value == "hello"
    values = {a.key: a.value for a in record.attributes}
    assert values["big"].int_value == 2**63 - 1
    assert values["min"].int_value == -(2**63)
    assert values["empty"].WhichOneof("value") == "string_value"
    assert values["t"].WhichOneof("value") == "bool_value"
    assert values["b"].bytes_value == b"\x00\xffab"
    assert values["empty_list"].WhichOneof("value") == "array_value"
    assert [v.WhichOneof("value") for v in values["list"].array_value.values] == [
        "string_value", "string_value", "int_value", "double_value", "bool_value", "bytes_value"
    ]


def test_equal_values_of_different_types_are_not_confused_by_the_cache():
    records = [
        LogRecord(1, "e", attributes={"k": 1}),
        LogRecord(2, "e", attributes={"k": True}),
        LogRecord(3, "e", attributes={"k": 1.0}),
        LogRecord(4, "e", attributes={"k": [1]}),
        LogRecord(5, "e", attributes={"k": [True]}),
        LogRecord(6, "e", attributes={"k": ["1"]}),
    ]
    decoded = logs_request([LogBatch(HOST, "s", records)])
    kinds = [
        r.attributes[0].value.WhichOneof("value")
        for r in decoded.resource_logs[0].scope_logs[0].log_records
    ]
    assert kinds == ["int_value", "bool_value", "double_value"] + ["array_value"] * 3
    arrays = [r.attributes[0].value.array_value.values[0] for r in decoded.resource_logs[0].scope_logs[0].log_records[3:]]
    assert [a.WhichOneof("value") for a in arrays] == ["int_value", "bool_value", "string_value"]


def test_batches_are_grouped_by_resource_and_scope():
    other = Resource.of({"host.name": "node-2"})
    batches = [
        LogBatch(HOST, "a", [LogRecord(1, "x")]),
        LogBatch(other, "a", [LogRecord(2, "x")]),
        LogBatch(HOST, "b", [LogRecord(3, "x")]),
        LogBatch(HOST, "a", [LogRecord(4, "x")]),
        LogBatch(Resource.of({"list": ["a", "b"]}), "a", [LogRecord(5, "x")]),
    ]
    request = logs_request(batches)
    assert request == reference_logs_request(batches)
    shape = [
        [(s.scope.name, [r.time_unix_nano for r in s.log_records]) for s in rl.scope_logs]
        for rl in request.resource_logs
    ]
    assert shape == [[("a", [1, 4]), ("b", [3])], [("a", [2])], [("a", [5])]]


scalars = (
    st.text(max_size=20)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.binary(max_size=20)
)
attr_values = scalars | st.lists(scalars, max_size=4)
records = st.builds(
    LogRecord,
    time_unix_nano=st.integers(min_value=0, max_value=2**64 - 1),
    event_name=st.text(max_size=10),
    severity=st.sampled_from(list(Severity)),
    body=st.none() | st.text(max_size=30),
    attributes=st.dictionaries(st.text(max_size=10), attr_values, max_size=6),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(records, max_size=5), st.lists(records, max_size=3))
def test_any_records_decode_to_the_reference_message(first, second):
    batches = [LogBatch(HOST, "s1", first), LogBatch(HOST, "s2", second)]
    assert ExportLogsServiceRequest.FromString(encode_logs_request(batches)) == (
        reference_logs_request(batches)
    )


def test_metrics_request_carries_kinds_points_and_times():
    batch = MetricBatch(
        resource=HOST,
        scope="otelbpf",
        start_time_unix_nano=100,
        time_unix_nano=200,
        metrics=[
            Metric("c", "a counter", "{item}", MetricKind.SUM,
                   [MetricPoint({"signal": "logs"}, 23), MetricPoint({"signal": "metrics"}, 1.5)]),
            Metric("u", "up down", "1", MetricKind.SUM, [MetricPoint({}, -3)], monotonic=False),
            Metric("g", "gauge", "By", MetricKind.GAUGE, [MetricPoint({"k": True}, 7)]),
            Metric("h", "hist", "s", MetricKind.HISTOGRAM, [
                MetricPoint({"m": "GET"}, bounds=(0.1, 1.0), bucket_counts=(1, 2, 0), count=3, sum=1.7)
            ]),
            Metric("empty_gauge", "", "1", MetricKind.GAUGE, []),
        ],
    )
    request = ExportMetricsServiceRequest.FromString(metrics_request([batch]).SerializeToString())
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    cumulative = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    c = metrics["c"].sum
    assert c.is_monotonic and c.aggregation_temporality == cumulative
    assert [(p.as_int, p.as_double, p.start_time_unix_nano, p.time_unix_nano) for p in c.data_points] == [
        (23, 0.0, 100, 200), (0, 1.5, 100, 200)
    ]
    assert metrics["c"].unit == "{item}" and metrics["c"].description == "a counter"
    assert not metrics["u"].sum.is_monotonic and metrics["u"].sum.data_points[0].as_int == -3
    assert metrics["g"].gauge.data_points[0].as_int == 7
    assert metrics["g"].gauge.data_points[0].attributes[0].value.bool_value is True
    h = metrics["h"].histogram.data_points[0]
    assert (list(h.explicit_bounds), list(h.bucket_counts), h.count, h.sum) == ([0.1, 1.0], [1, 2, 0], 3, 1.7)
    assert metrics["h"].histogram.aggregation_temporality == cumulative
    assert metrics["empty_gauge"].WhichOneof("data") == "gauge"


def test_json_follows_otlp_rules_and_round_trips():
    request = logs_request([LogBatch(HOST, "s", [LogRecord(2**62, "e", Severity.ERROR, None, {"i": 5})])])
    request.resource_logs[0].scope_logs[0].log_records[0].trace_id = bytes(range(16))
    text = to_json(request).decode()
    assert '"timeUnixNano":"4611686018427387904"' in text  # int64 as decimal string
    assert '"severityNumber":17' in text  # enum as integer
    assert '"traceId":"000102030405060708090a0b0c0d0e0f"' in text  # ids as hex
    assert '"intValue":"5"' in text
    assert from_json(text, ExportLogsServiceRequest) == request

    spans = ExportTraceServiceRequest()
    span = spans.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent_span_id=b"\x03" * 8, kind=trace_pb2.Span.SPAN_KIND_SERVER
    )
    span.links.add(trace_id=b"\x04" * 16, span_id=b"\x05" * 8)
    text = to_json(spans).decode()
    assert '"spanId":"0202020202020202"' in text and '"parentSpanId":"0303030303030303"' in text
    assert '"kind":2' in text and '"traceId":"04040404040404040404040404040404"' in text
    assert from_json(text, ExportTraceServiceRequest) == spans
