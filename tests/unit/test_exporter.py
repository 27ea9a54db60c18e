"""Our OTLP exporter against our receiver: delivery, retries, partial success, drops."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from otelbpf.export.otlp import OtlpExporter
from otelbpf.export.otlp_settings import OtlpSettings
from otelbpf.receiver.otlp import OtlpReceiver, Refusal
from otelbpf.signals.model import LogBatch, LogRecord, Resource, Severity
from otelbpf.signals.registry import Registry

HOST = Resource.of({"host.name": "node-1"})
FAST_RETRY = {
    "batch_timeout": 0.02,
    "retry_initial_interval": 0.05,
    "retry_max_interval": 0.2,
    "retry_max_elapsed": 20,
}


def batches(total: int, size: int) -> list[LogBatch]:
    records = [
        LogRecord(1_000 + i, "process.exec", Severity.INFO, None,
                  {"process.pid": i, "process.executable.name": ("bash", "ls", "cat")[i % 3]})
        for i in range(total)
    ]
    return [LogBatch(HOST, "otelbpf.process", records[i:i + size]) for i in range(0, total, size)]


def exporter(endpoint: str, protocol: str, **overrides) -> tuple[OtlpExporter, Registry]:
    registry = Registry()
    settings = OtlpSettings.from_env({}, {"endpoint": endpoint, "protocol": protocol, **FAST_RETRY, **overrides})
    return OtlpExporter(settings, registry), registry


def counts(registry: Registry, signal: str = "logs") -> dict[str, int]:
    attrs = {"signal": signal, "exporter": "otlp"}
    return {
        name: registry.counter(f"otelbpf.exporter.{name}").value(attrs)
        for name in ("sent", "failed", "retried", "dropped", "rejected")
    }


def endpoint_for(receiver: OtlpReceiver, protocol: str) -> str:
    return receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint


class Attempts:
    """Handler that answers the first `refusals` requests with a Refusal and records times."""

    def __init__(self, *refusals: Refusal, response=None) -> None:
        self.refusals = list(refusals)
        self.times: list[float] = []
        self.response = response
        self.lock = threading.Lock()

    def __call__(self, signal, request):
        with self.lock:
            self.times.append(time.monotonic())
            if self.refusals:
                raise self.refusals.pop(0)
        return self.response


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_everything_arrives_and_counts_match(protocol, compression):
    with OtlpReceiver() as receiver:
        ex, registry = exporter(endpoint_for(receiver, protocol), protocol,
                                compression=compression, max_batch_size=500)
        for batch in batches(2347, 101):
            ex.export_logs(batch)
        registry.counter("sensor.events").add(23, {"process.executable.name": "bash"})
        ex.export_metrics(registry.snapshot(HOST, "otelbpf"))
        ex.shutdown(timeout=10)

        assert receiver.item_count("logs") == 2347
        received = [r for req in receiver.received_logs() for rl in req.resource_logs
                    for sl in rl.scope_logs for r in sl.log_records]
        assert sorted(r.time_unix_nano for r in received) == [1_000 + i for i in range(2347)]
        assert max(len(rl.scope_logs[0].log_records) for req in receiver.received_logs()
                   for rl in req.resource_logs) <= 500
        assert counts(registry) == {"sent": 2347, "failed": 0, "retried": 0, "dropped": 0, "rejected": 0}
        metric_names = {m.name for req in receiver.received_metrics() for rm in req.resource_metrics
                        for sm in rm.scope_metrics for m in sm.metrics}
        assert "sensor.events" in metric_names
        assert counts(registry, "metrics")["sent"] == receiver.item_count("metrics")
        assert registry.up_down_counter("otelbpf.exporter.queue.size").value(signal="logs", exporter="otlp") == 0


def test_http_503_with_retry_after_is_retried_after_the_delay():
    attempts = Attempts(Refusal("busy", http_status=503, retry_after=1))
    with OtlpReceiver(handler=attempts, grpc_port=None) as receiver:
        # Backoff alone would wait 30 s: arriving after ~1 s proves Retry-After was used.
        ex, registry = exporter(receiver.http_endpoint, "http/protobuf",
                                retry_initial_interval=30, retry_max_interval=30)
        for batch in batches(23, 23):
            ex.export_logs(batch)
        assert ex.flush(timeout=10)
        ex.shutdown()
    assert len(attempts.times) == 2
    assert 0.9 <= attempts.times[1] - attempts.times[0] < 5
    assert receiver.item_count("logs") == 23  # the refused request is not kept
    assert counts(registry) == {"sent": 23, "failed": 0, "retried": 23, "dropped": 0, "rejected": 0}


def test_http_400_is_not_retried_and_counts_as_failed():
    attempts = Attempts(Refusal("bad data", http_status=400))
    with OtlpReceiver(handler=attempts, grpc_port=None) as receiver:
        ex, registry = exporter(receiver.http_endpoint, "http/protobuf")
        for batch in batches(23, 23):
            ex.export_logs(batch)
        assert ex.flush(timeout=10)
        ex.shutdown()
    assert len(attempts.times) == 1
    assert counts(registry) == {"sent": 0, "failed": 23, "retried": 0, "dropped": 0, "rejected": 0}


@pytest.mark.parametrize(
    ("refusal", "retried"),
    [
        (Refusal("down", grpc_code=grpc.StatusCode.UNAVAILABLE), True),
        (Refusal("slow down", grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=0.5), True),
        (Refusal("full", grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED), False),
        (Refusal("bad", grpc_code=grpc.StatusCode.INVALID_ARGUMENT), False),
    ],
    ids=["unavailable", "exhausted-with-retry-info", "exhausted-without-retry-info", "invalid-argument"],
)
def test_grpc_retry_rules(refusal, retried):
    attempts = Attempts(refusal)
    with OtlpReceiver(handler=attempts, http_port=None) as receiver:
        ex, registry = exporter(receiver.grpc_endpoint, "grpc")
        for batch in batches(23, 23):
            ex.export_logs(batch)
        assert ex.flush(timeout=10)
        ex.shutdown()
    if retried:
        assert len(attempts.times) == 2
        assert counts(registry) == {"sent": 23, "failed": 0, "retried": 23, "dropped": 0, "rejected": 0}
        if refusal.retry_after:
            assert attempts.times[1] - attempts.times[0] >= 0.45  # RetryInfo delay honoured
    else:
        assert len(attempts.times) == 1
        assert counts(registry) == {"sent": 0, "failed": 23, "retried": 0, "dropped": 0, "rejected": 0}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
def test_partial_success_is_counted_and_not_retried(protocol):
    response = ExportLogsServiceResponse()
    response.partial_success.rejected_log_records = 5
    response.partial_success.error_message = "5 records too old"
    attempts = Attempts(response=response)
    with OtlpReceiver(handler=attempts) as receiver:
        ex, registry = exporter(endpoint_for(receiver, protocol), protocol)
        for batch in batches(23, 23):
            ex.export_logs(batch)
        assert ex.flush(timeout=10)
        ex.shutdown()
    assert len(attempts.times) == 1
    assert counts(registry) == {"sent": 18, "failed": 0, "retried": 0, "dropped": 0, "rejected": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_receiver_down_at_start_loses_nothing(protocol):
    port = free_port()
    ex, registry = exporter(f"http://127.0.0.1:{port}", protocol, max_batch_size=100)
    for batch in batches(523, 50):
        ex.export_logs(batch)
    deadline = time.monotonic() + 5
    while counts(registry)["retried"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert counts(registry)["retried"] > 0  # it tried, failed, and keeps trying
    ports = {"grpc_port": port, "http_port": None} if protocol == "grpc" else {"grpc_port": None, "http_port": port}
    with OtlpReceiver(**ports) as receiver:
        assert ex.flush(timeout=15)
        ex.shutdown()
        assert receiver.item_count("logs") == 523
    result = counts(registry)
    assert (result["sent"], result["failed"], result["dropped"]) == (523, 0, 0)


def test_full_queue_drops_are_counted_exactly():
    port = free_port()
    ex, registry = exporter(f"http://127.0.0.1:{port}", "http/protobuf", queue_size=100, max_batch_size=100)
    for batch in batches(150, 10):  # 15 batches of 10: the first 10 fit, 5 are dropped
        ex.export_logs(batch)
    assert counts(registry)["dropped"] == 50
    assert registry.up_down_counter("otelbpf.exporter.queue.size").value(signal="logs", exporter="otlp") == 100
    with OtlpReceiver(grpc_port=None, http_port=port) as receiver:
        assert ex.flush(timeout=10)
        ex.shutdown()
        assert receiver.item_count("logs") == 100
    assert counts(registry) == {"sent": 100, "failed": 0, "retried": counts(registry)["retried"], "dropped": 50, "rejected": 0}


def test_shutdown_with_collector_down_is_bounded_and_counts_leftovers():
    ex, registry = exporter(f"http://127.0.0.1:{free_port()}", "http/protobuf", max_batch_size=10)
    for batch in batches(35, 5):
        ex.export_logs(batch)
    started = time.monotonic()
    ex.shutdown(timeout=0.5)
    assert time.monotonic() - started < 3
    result = counts(registry)
    assert result["sent"] == 0 and result["failed"] + result["dropped"] == 35
    ex.export_logs(batches(3, 3)[0])  # after shutdown: refused and counted
    assert counts(registry)["dropped"] == result["dropped"] + 3


def test_a_small_batch_leaves_on_the_batch_timeout_without_a_flush():
    # A trickle of events (a few execs a minute) must not wait for a full batch or shutdown.
    with OtlpReceiver() as receiver:
        ex, _registry = exporter(receiver.http_endpoint, "http/protobuf", batch_timeout=0.1)
        ex.export_logs(batches(3, 3)[0])
        assert receiver.wait_for_items("logs", 3, timeout=5)
        ex.export_logs(batches(5, 5)[0])  # and again once the queue has gone idle
        assert receiver.wait_for_items("logs", 8, timeout=5)
        ex.shutdown()
