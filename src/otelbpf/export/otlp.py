"""OTLP exporter: batches logs, metrics, spans and profiles and sends them over gRPC,
HTTP/protobuf or HTTP/JSON: one queue, retry, compression, TLS and header path for all four.

Per signal, a bounded queue feeds one worker thread that cuts requests of up to
max_batch_size items (or whatever arrived within batch_timeout), encodes them and sends
with retries. The queue bound counts items queued plus in flight; a batch that does not
fit is dropped and counted. Counters go to the Registry given (or a private one):
otelbpf.exporter.{sent,failed,retried,dropped,rejected} and otelbpf.exporter.queue.size,
with attributes signal and exporter.
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

import urllib3
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otelbpf.export.otlp_response import Sent, partial_success
from otelbpf.export.otlp_settings import SIGNALS, OtlpSettings, SignalSettings
from otelbpf.export.retry import (
    RETRYABLE_HTTP_STATUSES,
    PermanentError,
    RetryableError,
    parse_retry_after,
    send_with_retry,
)
from otelbpf.signals import otlp as mapping
from otelbpf.signals import otlp_profiles
from otelbpf.signals.model import LogBatch, MetricBatch, ProfileBatch, SpanBatch, SpanColumns
from otelbpf.signals.otlp_json import from_json, to_json
from otelbpf.signals.registry import Registry

log = logging.getLogger(__name__)
B = TypeVar("B", LogBatch, MetricBatch, SpanBatch | SpanColumns, ProfileBatch)

@dataclass(frozen=True)
class _Codec(Generic[B]):
    """What differs between signals: counting, splitting, encoding, the response."""

    count: Callable[[B], int]
    split: Callable[[B, int], tuple[B, B]] | None  # (first n items, rest); None: never split
    encode_protobuf: Callable[[list[B]], bytes]
    encode_message: Callable[[list[B]], Message]
    response: type[Message]
    rejected_field: str
    grpc_method: str


def _split_logs(batch: LogBatch, n: int) -> tuple[LogBatch, LogBatch]:
    head = LogBatch(batch.resource, batch.scope, batch.records[:n])
    return head, LogBatch(batch.resource, batch.scope, batch.records[n:])


def _split_spans(batch, n: int) -> tuple:
    if isinstance(batch, SpanColumns):
        return batch.take(slice(0, n)), batch.take(slice(n, None))
    head = SpanBatch(batch.resource, batch.scope, batch.spans[:n])
    return head, SpanBatch(batch.resource, batch.scope, batch.spans[n:])


def _grpc_method(service_module, service: str) -> str:
    """Method path from the official descriptor, e.g. /opentelemetry...LogsService/Export."""
    return f"/{service_module.DESCRIPTOR.services_by_name[service].full_name}/Export"


_CODECS: dict[str, _Codec[LogBatch] | _Codec[MetricBatch] | _Codec[SpanBatch | SpanColumns] | _Codec[ProfileBatch]] = {
    "logs": _Codec(
        count=mapping.log_item_count,
        split=_split_logs,
        encode_protobuf=mapping.encode_logs_request,
        encode_message=mapping.logs_request,
        response=logs_service_pb2.ExportLogsServiceResponse,
        rejected_field="rejected_log_records",
        grpc_method=_grpc_method(logs_service_pb2, "LogsService"),
    ),
    "metrics": _Codec(
        count=mapping.metric_item_count,
        split=None,  # a metric batch is one snapshot: keep it whole
        encode_protobuf=mapping.encode_metrics_request,
        encode_message=mapping.metrics_request,
        response=metrics_service_pb2.ExportMetricsServiceResponse,
        rejected_field="rejected_data_points",
        grpc_method=_grpc_method(metrics_service_pb2, "MetricsService"),
    ),
    "traces": _Codec(
        count=mapping.span_item_count,
        split=_split_spans,
        encode_protobuf=mapping.encode_traces_request,
        encode_message=mapping.traces_request,
        response=trace_service_pb2.ExportTraceServiceResponse,
        rejected_field="rejected_spans",
        grpc_method=_grpc_method(trace_service_pb2, "TraceService"),
    ),
    "profiles": _Codec(
        count=otlp_profiles.profile_item_count,
        split=None,  # one profile is one interval's aggregate: keep it whole
        encode_protobuf=otlp_profiles.encode_profiles_request,
        encode_message=otlp_profiles.profiles_request,
        response=profiles_service_pb2.ExportProfilesServiceResponse,
        rejected_field="rejected_profiles",
        grpc_method=_grpc_method(profiles_service_pb2, "ProfilesService"),
    ),
}


def _grpc_transport_class():
    # grpcio is big (about 16 MB resident): imported only by agents that export over gRPC.
    from otelbpf.export.otlp_grpc import GrpcTransport

    return GrpcTransport


class _TlsOptions(TypedDict, total=False):
    """urllib3 connection pool keywords for an https:// endpoint."""

    ca_certs: str | None
    cert_file: str | None
    key_file: str | None


class _HttpTransport:
    """POSTs over a keep-alive urllib3 pool."""

    def __init__(self, settings: SignalSettings, codec: _Codec) -> None:
        self._settings, self._codec = settings, codec
        self._json = settings.protocol == "http/json"
        self._headers = {
            "Content-Type": "application/json" if self._json else "application/x-protobuf",
            "User-Agent": f"otelbpf/{mapping.SCOPE_VERSION}",
            **dict(settings.headers),
        }
        if settings.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        tls: _TlsOptions = {}
        if settings.endpoint.startswith("https://"):
            tls = _TlsOptions(
                ca_certs=settings.certificate,
                cert_file=settings.client_certificate,
                key_file=settings.client_key,
            )
        self._pool = urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False, timeout=settings.timeout, **tls
        )

    def send(self, batches: list) -> Sent:
        if self._json:
            body = to_json(self._codec.encode_message(batches))
        else:
            body = self._codec.encode_protobuf(batches)
        if self._settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
        try:
            reply = self._pool.request(
                "POST", self._settings.endpoint, body=body, headers=self._headers
            )
        except urllib3.exceptions.HTTPError as error:  # refused, reset, timed out
            raise RetryableError(f"HTTP request to {self._settings.endpoint} failed: {error}") from None
        if reply.status == 200:
            return partial_success(self._decode(reply.data, self._codec.response), self._codec)
        message = f"HTTP {reply.status} from {self._settings.endpoint}: {self._error_text(reply)}"
        if reply.status in RETRYABLE_HTTP_STATUSES:
            raise RetryableError(message, parse_retry_after(reply.headers.get("Retry-After")))
        raise PermanentError(message)

    def _decode(self, data: bytes, message_class: type[Message]) -> Message:
        if not data:
            return message_class()
        try:
            return from_json(data, message_class) if self._json else message_class.FromString(data)
        except (ValueError, DecodeError):
            return message_class()  # a 200 with an unreadable body still means accepted

    def _error_text(self, reply) -> str:
        """The google.rpc.Status message when the body holds one, else the raw text."""
        if reply.headers.get("Content-Type", "").startswith(("application/x-protobuf", "application/json")):
            try:
                status = self._decode(reply.data, status_pb2.Status)
                if status.message:
                    return status.message
            except Exception:  # noqa: BLE001 (any odd body falls back to text)
                pass
        return reply.data[:200].decode("utf-8", "replace") or "(empty body)"

    def close(self) -> None:
        self._pool.clear()


class _SignalPipeline:
    """Bounded queue + worker thread + transport for one signal."""

    def __init__(
        self,
        signal: str,
        settings: OtlpSettings,
        registry: Registry,
        exporter_name: str,
    ) -> None:
        self.signal = signal
        self._settings = settings
        self._codec: _Codec[Any] = _CODECS[signal]  # the batches it gets are of its signal
        signal_settings = settings.for_signal(signal)
        transport_class = _grpc_transport_class() if signal_settings.protocol == "grpc" else _HttpTransport
        self._transport = transport_class(signal_settings, self._codec)
        attrs = {"signal": signal, "exporter": exporter_name}
        self._attrs = attrs
        self._sent = registry.counter("otelbpf.exporter.sent", "Items the receiver accepted", "{item}")
        self._failed = registry.counter("otelbpf.exporter.failed",
                                        "Items given up on after a permanent error or retries ran out", "{item}")
        self._retried = registry.counter("otelbpf.exporter.retried",
                                         "Items in requests sent again after a retryable error", "{item}")
        self._dropped = registry.counter("otelbpf.exporter.dropped",
                                         "Items dropped because the queue was full or at shutdown", "{item}")
        self._rejected = registry.counter("otelbpf.exporter.rejected", "Items the receiver rejected (partial success)", "{item}")
        self._queue_size = registry.up_down_counter("otelbpf.exporter.queue.size", "Items queued or in flight", "{item}")

        self._cond = threading.Condition()
        self._pending: deque[tuple[object, int]] = deque()
        self._pending_items = 0
        self._held_items = 0  # queued plus in flight: what the queue bound applies to
        self._first_pending_at = 0.0
        self._flushing = 0
        self._closing = False
        self._deadline = math.inf
        self._wake = threading.Condition()  # interrupts retry waits at shutdown
        self._thread = threading.Thread(
            target=self._run, name=f"otlp-{exporter_name}-{signal}", daemon=True
        )
        self._thread.start()

    # -- producer side -------------------------------------------------------------------

    def enqueue(self, batch) -> None:
        n = self._codec.count(batch)
        if n == 0:
            return
        with self._cond:
            if self._closing or self._held_items + n > self._settings.queue_size:
                self._dropped.add(n, self._attrs)
                return
            if not self._pending:
                self._first_pending_at = time.monotonic()
            self._pending.append((batch, n))
            self._pending_items += n
            self._held_items += n
            # Wake the worker for the first batch (it starts the batch timeout) and for a full one.
            if len(self._pending) == 1 or self._pending_items >= self._settings.max_batch_size:
                self._cond.notify_all()
        self._queue_size.add(n, self._attrs)

    def flush(self, timeout: float) -> bool:
        """Sends what is queued now, without waiting for batch_timeout; True when all left."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._held_items == 0, timeout)
            finally:
                self._flushing -= 1

    def close(self, deadline: float) -> None:
        """Stops taking batches; the worker sends what is queued until the monotonic deadline."""
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()
        with self._wake:
            self._wake.notify_all()

    def join(self) -> None:
        self._thread.join(max(self._deadline - time.monotonic(), 0.0) + 1.0)
        self._transport.close()

    # -- worker side ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batches, n = taken
            self._send(batches, n)
            with self._cond:
                self._held_items -= n
                self._cond.notify_all()
            self._queue_size.add(-n, self._attrs)

    def _take(self) -> tuple[list, int] | None:
        """Waits for a full batch, the batch timeout, a flush or shutdown; None: exit."""
        settings = self._settings
        with self._cond:
            while True:
                if self._closing and time.monotonic() >= self._deadline:
                    self._drop_pending()
                    return None
                if not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                urgent = self._closing or self._flushing
                if urgent or self._pending_items >= settings.max_batch_size:
                    break
                remaining = self._first_pending_at + settings.batch_timeout - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._pop(settings.max_batch_size)

    def _pop(self, limit: int) -> tuple[list, int]:
        batches, total = [], 0
        while self._pending and total < limit:
            batch, n = self._pending[0]
            room = limit - total
            if n > room and self._codec.split is not None:
                head, rest = self._codec.split(batch, room)
                self._pending[0] = (rest, n - room)
                batch, n = head, room
            elif n > room and total > 0:
                break  # an unsplittable batch waits for the next request
            else:
                self._pending.popleft()
            batches.append(batch)
            total += n
        self._pending_items -= total
        self._first_pending_at = time.monotonic()
        return batches, total

    def _drop_pending(self) -> None:
        n = self._pending_items
        if n:
            log.warning("OTLP %s exporter: shutdown timeout, dropping %d queued items", self.signal, n)
            self._dropped.add(n, self._attrs)
            self._queue_size.add(-n, self._attrs)
        self._pending.clear()
        self._pending_items = 0
        self._held_items -= n

    def _send(self, batches: list, n: int) -> None:
        def on_retry(reason: str) -> None:
            log.info("OTLP %s export will be retried: %s", self.signal, reason)
            self._retried.add(n, self._attrs)

        def sleep(seconds: float) -> None:
            with self._wake:
                self._wake.wait(max(min(seconds, self._deadline - time.monotonic()), 0.0))

        try:
            sent = send_with_retry(
                lambda: self._transport.send(batches),
                self._settings.retry,
                sleep=sleep,
                on_retry=on_retry,
                deadline=lambda: self._deadline,
            )
        except (RetryableError, PermanentError) as error:
            log.warning("OTLP %s export of %d items failed: %s", self.signal, n, error)
            self._failed.add(n, self._attrs)
            return
        except Exception:  # an encoding bug must not kill the worker and wedge the queue
            log.exception("OTLP %s export of %d items failed", self.signal, n)
            self._failed.add(n, self._attrs)
            return
        if sent.rejected:
            log.warning("OTLP receiver rejected %d %s items: %s", sent.rejected, self.signal, sent.message)
            self._rejected.add(sent.rejected, self._attrs)
        self._sent.add(n - sent.rejected, self._attrs)


class OtlpExporter:
    """Sink that exports logs, metrics and spans over OTLP; see the module docstring."""

    def __init__(
        self,
        settings: OtlpSettings | None = None,
        registry: Registry | None = None,
        name: str = "otlp",
        signals: tuple[str, ...] = SIGNALS,
    ) -> None:
        """signals: the ones this exporter sends; batches of the others are ignored."""
        self.name = name
        self.settings = settings or OtlpSettings.from_env()
        self.registry = registry if registry is not None else Registry()
        self._pipelines = {
            signal: _SignalPipeline(signal, self.settings, self.registry, name)
            for signal in signals
        }

    def _enqueue(self, signal: str, batch) -> None:
        pipeline = self._pipelines.get(signal)
        if pipeline is not None:
            pipeline.enqueue(batch)

    def export_logs(self, batch: LogBatch) -> None:
        self._enqueue("logs", batch)

    def export_metrics(self, batch: MetricBatch) -> None:
        self._enqueue("metrics", batch)

    def export_spans(self, batch: SpanBatch | SpanColumns) -> None:
        self._enqueue("traces", batch)

    def export_profiles(self, batch: ProfileBatch) -> None:
        self._enqueue("profiles", batch)

    def flush(self, timeout: float = 5.0) -> bool:
        """Sends everything queued; True when it all left within timeout."""
        deadline = time.monotonic() + timeout
        return all(
            pipeline.flush(max(deadline - time.monotonic(), 0.0))
            for pipeline in self._pipelines.values()
        )

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flushes within timeout (retries included), then stops; what is left is dropped."""
        deadline = time.monotonic() + timeout
        for pipeline in self._pipelines.values():
            pipeline.close(deadline)
        for pipeline in self._pipelines.values():
            pipeline.join()
