"""Our receiver against the official OpenTelemetry SDK exporters, and its HTTP error replies."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request

import pytest
from google.rpc import status_pb2
from opentelemetry._logs import SeverityNumber
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otelbpf.receiver.otlp import OtlpReceiver
from otelbpf.signals.model import LogBatch, LogRecord, Resource
from otelbpf.signals.otlp import encode_logs_request

RESOURCE = SdkResource.create({"service.name": "round-trip"})


@pytest.fixture
def receiver():
    with OtlpReceiver() as r:
        yield r


def _sdk_exporters(protocol: str, receiver: OtlpReceiver):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        kw = {"endpoint": f"127.0.0.1:{receiver.grpc_port}", "insecure": True}
        return OTLPLogExporter(**kw), OTLPSpanExporter(**kw), OTLPMetricExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = receiver.http_endpoint
    return (
        OTLPLogExporter(endpoint=f"{base}/v1/logs"),
        OTLPSpanExporter(endpoint=f"{base}/v1/traces"),
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
    )


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_official_sdk_exporters_round_trip(receiver, protocol):
    log_exporter, span_exporter, metric_exporter = _sdk_exporters(protocol, receiver)

    logs = LoggerProvider(resource=RESOURCE)
    logs.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    logger = logs.get_logger("test.logs")
    for i in range(23):
        logger.emit(
            timestamp=1_000 + i,
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            body=f"line {i}",
            attributes={"process.pid": i, "ok": True, "ratio": 0.5, "args": ["a", "b"]},
            event_name="process.exec",
        )
    logs.shutdown()

    traces = TracerProvider(resource=RESOURCE)
    traces.add_span_processor(SimpleSpanProcessor(span_exporter))
    with traces.get_tracer("test.traces").start_as_current_span("GET /", attributes={"http.request.method": "GET"}) as span:
        span_context = span.get_span_context()
    traces.shutdown()

    reader = InMemoryMetricReader()
    meters = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meters.get_meter("test.metrics").create_counter("requests").add(7, {"route": "/"})
    metric_exporter.export(reader.get_metrics_data())
    meters.shutdown()
    metric_exporter.shutdown()

    assert receiver.wait_for_items("logs", 23, timeout=10)
    records = [
        r for req in receiver.received_logs() for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records
    ]
    assert [r.body.string_value for r in records] == [f"line {i}" for i in range(23)]
    first = records[0]
    assert (first.time_unix_nano, first.severity_number, first.event_name) == (1_000, 13, "process.exec")
    attrs = {a.key: a.value for a in first.attributes}
    assert attrs["process.pid"].int_value == 0 and attrs["ok"].bool_value and attrs["ratio"].double_value == 0.5
    assert [v.string_value for v in attrs["args"].array_value.values] == ["a", "b"]
    resource = {a.key: a.value.string_value for a in receiver.received_logs()[0].resource_logs[0].resource.attributes}
    assert resource["service.name"] == "round-trip"

    assert receiver.wait_for_items("traces", 1, timeout=10)
    span = receiver.received_traces()[0].resource_spans[0].scope_spans[0].spans[0]
    assert span.name == "GET /" and span.trace_id == span_context.trace_id.to_bytes(16, "big")

    assert receiver.wait_for_items("metrics", 1, timeout=10)
    metric = receiver.received_metrics()[0].resource_metrics[0].scope_metrics[0].metrics[0]
    assert metric.name == "requests" and metric.sum.data_points[0].as_int == 7


def _post(receiver, path, body, content_type="application/x-protobuf", encoding=None):
    request = urllib.request.Request(f"{receiver.http_endpoint}{path}", data=body, method="POST")
    request.add_header("Content-Type", content_type)
    if encoding:
        request.add_header("Content-Encoding", encoding)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


BODY = encode_logs_request([LogBatch(Resource(), "s", [LogRecord(1, "e", attributes={"k": "v"})])])


def test_http_accepts_gzip_and_json(receiver):
    assert _post(receiver, "/v1/logs", gzip.compress(BODY), encoding="gzip")[0] == 200
    json_body = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"5","eventName":"e","unknownField":1}]}]}]}'
    status, reply, headers = _post(receiver, "/v1/logs", json_body, "application/json")
    assert status == 200 and headers["Content-Type"] == "application/json" and reply == b"{}"
    assert receiver.item_count("logs") == 2
    assert receiver.received_logs()[1].resource_logs[0].scope_logs[0].log_records[0].time_unix_nano == 5


@pytest.mark.parametrize(
    ("path", "body", "content_type", "encoding", "status", "message"),
    [
        ("/v1/nothing", BODY, "application/x-protobuf", None, 404, "no OTLP endpoint at /v1/nothing"),
        ("/v1/logs", BODY, "text/plain", None, 415, "Content-Type text/plain is not supported"),
        ("/v1/logs", b"\xff\xff\xff", "application/x-protobuf", None, 400, "not a valid protobuf"),
        ("/v1/logs", b"{nope", "application/json", None, 400, "body is not JSON"),
        ("/v1/logs", b'{"resourceLogs": 5}', "application/json", None, 400, "not a valid ExportLogsServiceRequest"),
        ("/v1/logs", BODY, "application/x-protobuf", "gzip", 400, "not valid gzip"),
        ("/v1/logs", BODY, "application/x-protobuf", "br", 415, "Content-Encoding br is not supported"),
    ],
)
def test_http_errors_are_clear(receiver, path, body, content_type, encoding, status, message):
    got, reply, headers = _post(receiver, path, body, content_type, encoding)
    assert got == status
    if headers["Content-Type"] == "application/x-protobuf":
        text = status_pb2.Status.FromString(reply).message
    else:
        text = reply.decode()
    assert message in text
    assert receiver.item_count("logs") == 0


def test_kept_requests_are_bounded():
    with OtlpReceiver(keep=3, grpc_port=None) as receiver:
        for _ in range(5):
            assert _post(receiver, "/v1/logs", BODY)[0] == 200
        assert len(receiver.received_logs()) == 3 and receiver.item_count("logs") == 5
        assert isinstance(receiver.received_logs()[0], ExportLogsServiceRequest)
        assert receiver.grpc_port is None
