"""The in-process store path (store.model_rows) against the OTLP path (encode with
signals.otlp, decode with the official opentelemetry-proto classes, store.otlp_rows): for
random batches both must give the same rows, column by column."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.signals.model import (
    LogBatch,
    LogRecord,
    Metric,
    MetricBatch,
    MetricKind,
    MetricPoint,
    Resource,
    Severity,
    SpanBatch,
    SpanColumns,
    SpanKind,
    SpanRecord,
    StatusCode,
)
from otelbpf.signals.otlp import logs_request, metrics_request, traces_request
from otelbpf.store.model_rows import RowBuilder
from otelbpf.store.otlp_rows import log_rows, metric_rows, span_rows

# Text with what hostile input brings: non-ASCII, control characters, lone surrogates
# (a file name that is not UTF-8, as os.readlink returns it).
text = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(["\udcff", "\x00", "é", "\n", '"'])),
               max_size=12)
int64 = st.integers(-(2**63), 2**63 - 1)
scalar = st.one_of(text, int64, st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                   st.binary(max_size=8))
value = st.one_of(scalar, st.lists(st.one_of(text, int64), max_size=4))
keys = st.sampled_from(["http.request.method", "http.route", "http.response.status_code", "http.status_code",
                        "process.pid", "process.command_args", "a", "b.c", "é"])
attributes = st.dictionaries(keys, value, max_size=5)
resources = st.builds(lambda attrs: Resource.of(attrs),
                      st.dictionaries(st.sampled_from(["service.name", "host.name", "x"]), st.one_of(text, int64),
                                      max_size=3))
times = st.integers(0, 2**63 - 1)


@st.composite
def span_batches(draw) -> SpanBatch:
    shared = MappingProxyType(draw(attributes))  # one set shared by several spans, as the HTTP tracker does
    spans = []
    for _ in range(draw(st.integers(0, 6))):
        start, end = draw(times), draw(times)
        attrs = shared if draw(st.booleans()) else draw(attributes)
        spans.append(SpanRecord(
            trace_id=draw(st.binary(min_size=16, max_size=16)), span_id=draw(st.binary(min_size=8, max_size=8)),
            name=draw(text), kind=draw(st.sampled_from(list(SpanKind))), start_time_unix_nano=start,
            end_time_unix_nano=end, parent_span_id=draw(st.sampled_from([b"", b"\x01" * 8])), attributes=attrs,
            status_code=draw(st.sampled_from(list(StatusCode))), status_message=draw(text)))
    return SpanBatch(draw(resources), "otelbpf.sensors.test", spans)


@st.composite
def log_batches(draw) -> LogBatch:
    same_keys = draw(st.booleans())  # one sensor's batch shares its keys (the column encoder)
    first = draw(attributes)
    records = []
    for _ in range(draw(st.integers(0, 6))):
        attrs = {k: draw(value) for k in first} if same_keys else draw(attributes)
        records.append(LogRecord(draw(times), draw(st.sampled_from(["process.exec", "process.exit", ""])),
                                 draw(st.sampled_from(list(Severity))),
                                 draw(st.one_of(st.none(), text, st.binary(max_size=4))), attrs))
    return LogBatch(draw(resources), "otelbpf.sensors.test", records)


@st.composite
def metric_batches(draw) -> MetricBatch:
    metrics = []
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(list(MetricKind)))
        points = []
        for _ in range(draw(st.integers(0, 3))):
            attrs = draw(attributes)
            if kind is MetricKind.HISTOGRAM:
                bounds = tuple(sorted(draw(st.lists(st.floats(0, 1e6), max_size=3))))
                buckets = tuple(draw(st.lists(st.integers(0, 2**40), min_size=len(bounds) + 1,
                                              max_size=len(bounds) + 1)))
                points.append(MetricPoint(attrs, bounds=bounds, bucket_counts=buckets, count=sum(buckets),
                                          sum=draw(st.floats(0, 1e9))))
            else:
                points.append(MetricPoint(attrs, draw(st.one_of(st.integers(0, 2**53), st.floats(-1e9, 1e9)))))
        metrics.append(Metric(f"m{i}", "d", draw(st.sampled_from(["", "By", "{run}"])), kind, points))
    start = draw(times)
    return MetricBatch(draw(resources), "otelbpf.agent", start, start + draw(st.integers(0, 10**12)), metrics)


def same_rows(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for column in ours:
        assert ours[column] == theirs[column], column


@settings(max_examples=300, deadline=None)
@given(span_batches())
def test_spans_in_process_equal_spans_through_otlp(batch):
    """Row for row, in any order: the OTLP encoder groups a request's spans by layout."""
    same_rows(in_any_order(RowBuilder().spans(batch)), in_any_order(span_rows(traces_request([batch]))))


@settings(max_examples=300, deadline=None)
@given(st.lists(span_batches(), min_size=1, max_size=3), st.lists(st.sampled_from(["network.peer.port", "é"]),
                                                                  max_size=2, unique=True), st.data())
def test_span_columns_give_the_rows_of_their_spans(batches, int_keys, data):
    """The column path (one batch of several resources, as the enrichment stage leaves it, with
    per-span integer attributes) gives the rows of the row path, row for row."""
    spans = [s for b in batches for s in b.spans]
    columns = SpanColumns.of_spans("otelbpf.sensors.test", spans, np.zeros(len(spans), np.uint32))
    columns.resources = [b.resource for b in batches]
    columns.resource = np.repeat(np.arange(len(batches), dtype=np.int32), [len(b.spans) for b in batches])
    for key in int_keys:
        columns.ints[key] = np.array(data.draw(st.lists(int64, min_size=len(spans), max_size=len(spans))), np.int64)
    ours = {name: list(values) for name, values in RowBuilder().span_columns(columns).items()}
    theirs: dict = {name: [] for name in ours}
    builder = RowBuilder()
    for b in columns.to_batches():
        for name, values in builder.spans(b).items():
            theirs[name].extend(values)
    same_rows(in_any_order(ours), in_any_order(theirs))


def in_any_order(columns: dict) -> dict:
    rows = sorted(zip(*columns.values()), key=repr)
    return {name: [row[i] for row in rows] for i, name in enumerate(columns)}


@settings(max_examples=300, deadline=None)
@given(log_batches())
def test_logs_in_process_equal_logs_through_otlp(batch):
    same_rows(RowBuilder().logs(batch), log_rows(logs_request([batch])))


@settings(max_examples=300, deadline=None)
@given(metric_batches())
def test_metrics_in_process_equal_metrics_through_otlp(batch):
    columns, attrs = RowBuilder().metrics(batch)
    same_rows(columns, metric_rows(metrics_request([batch])))
    assert attrs == [p.attributes for m in batch.metrics for p in m.points]


def test_a_shared_attribute_set_is_encoded_once_and_not_confused_with_a_new_one():
    rows = RowBuilder()
    shared = MappingProxyType({"http.route": "/a", "http.response.status_code": 200})
    span = SpanRecord(b"\x01" * 16, b"\x02" * 8, "GET /a", SpanKind.SERVER, 1, 2, attributes=shared)
    first = rows.spans(SpanBatch(Resource(), "s", [span, span]))
    assert first["http_route"] == ["/a", "/a"] and first["http_status"] == [200, 200]
    other = MappingProxyType({"http.route": "/b"})
    second = rows.spans(SpanBatch(Resource(), "s", [SpanRecord(b"\x01" * 16, b"\x02" * 8, "GET /b", SpanKind.SERVER,
                                                                1, 2, attributes=other)]))
    assert second["http_route"] == ["/b"] and second["attributes"] == ['{"http.route":"/b"}']
