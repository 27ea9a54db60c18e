"""Embedded OTLP receiver: gRPC and HTTP (protobuf and JSON) servers for logs, metrics, traces.

Every decoded Export*ServiceRequest goes to an optional handler and is kept (bounded) in
memory for tests and the local view. A handler refuses a request by raising `Refusal`,
which becomes the matching gRPC status (with RetryInfo when a delay is given) or HTTP
status (with Retry-After); tests use that to play a collector under pressure.
"""

from __future__ import annotations

import gzip
import math
import threading
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from otelbpf.signals.otlp_json import from_json, to_json

Handler = Callable[[str, Message], Message | None]

MAX_BODY_BYTES = 64 << 20
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@dataclass(frozen=True)
class _Signal:
    name: str
    path: str
    request: type[Message]
    response: type[Message]


SIGNALS = {
    s.name: s
    for s in (
        _Signal(
            "logs",
            "/v1/logs",
            logs_service_pb2.ExportLogsServiceRequest,
            logs_service_pb2.ExportLogsServiceResponse,
        ),
        _Signal(
            "metrics",
            "/v1/metrics",
            metrics_service_pb2.ExportMetricsServiceRequest,
            metrics_service_pb2.ExportMetricsServiceResponse,
        ),
        _Signal(
            "traces",
            "/v1/traces",
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
        ),
    )
}
_BY_PATH = {s.path: s for s in SIGNALS.values()}


def item_count(signal: str, request: Message) -> int:
    """Log records, metric data points or spans in a request."""
    if signal == "logs":
        return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
    if signal == "traces":
        return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
    total = 0
    for r in request.resource_metrics:
        for s in r.scope_metrics:
            for m in s.metrics:
                kind = m.WhichOneof("data")
                if kind:
                    total += len(getattr(m, kind).data_points)
    return total


class Refusal(Exception):
    """Raised by a handler to refuse a request; retry_after (seconds) adds a retry hint."""

    def __init__(
        self,
        message: str,
        http_status: int = 503,
        grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.retry_after = retry_after


class OtlpReceiver:
    """OTLP over gRPC and HTTP on `host`; port 0 picks a free port (see grpc_port/http_port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        grpc_port: int | None = 0,
        http_port: int | None = 0,
        handler: Handler | None = None,
        keep: int = 1000,
    ) -> None:
        """grpc_port / http_port None disables that server; keep bounds the kept requests."""
        self.host = host
        self._wanted_grpc_port, self._wanted_http_port = grpc_port, http_port
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._handler = handler
        self._kept: dict[str, deque[Message]] = {name: deque(maxlen=keep) for name in SIGNALS}
        self._items = dict.fromkeys(SIGNALS, 0)
        self._changed = threading.Condition()
        self._grpc_server: grpc.Server | None = None
        self._http_server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        if self._wanted_grpc_port is not None:
            self._start_grpc()
        if self._wanted_http_port is not None:
            self._start_http()
        return self

    def stop(self, grace: float = 1.0) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait(grace + 1)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    # -- what arrived ------------------------------------------------------------------

    def received_logs(self) -> list[logs_service_pb2.ExportLogsServiceRequest]:
        return self._received("logs")

    def received_metrics(self) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
        return self._received("metrics")

    def received_traces(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        return self._received("traces")

    def _received(self, signal: str) -> list:
        with self._changed:
            return list(self._kept[signal])

    def item_count(self, signal: str) -> int:
        with self._changed:
            return self._items[signal]

    def wait_for_items(self, signal: str, count: int, timeout: float) -> bool:
        """True once at least `count` items of the signal arrived, False after timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._items[signal] >= count, timeout)

    # -- the shared path from a decoded request to the handler --------------------------

    def _accept(self, signal: str, request: Message) -> Message:
        """Hands the request to the handler (which may raise Refusal) and keeps it."""
        response = self._handler(signal, request) if self._handler else None
        with self._changed:
            self._kept[signal].append(request)
            self._items[signal] += item_count(signal, request)
            self._changed.notify_all()
        return response if response is not None else SIGNALS[signal].response()

    # -- gRPC --------------------------------------------------------------------------

    def _start_grpc(self) -> None:
        server = grpc.server(
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", MAX_BODY_BYTES)],
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        address = f"{self.host}:{self._wanted_grpc_port}"
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {address}: is the port in use?")
        server.start()
        self.grpc_port, self._grpc_server = port, server

    def _grpc_export(self, signal: str, request: Message, context: grpc.ServicerContext):
        try:
            return self._accept(signal, request)
        except Refusal as refusal:
            if refusal.retry_after is not None:
                context.set_trailing_metadata(
                    [("grpc-status-details-bin", _status_with_retry_info(refusal))]
                )
            context.abort(refusal.grpc_code, refusal.message)

    # -- HTTP --------------------------------------------------------------------------

    def _start_http(self) -> None:
        assert self._wanted_http_port is not None  # start() calls this only when HTTP is enabled
        receiver = self

        class RequestHandler(_HttpHandler):
            owner = receiver

        try:
            server = ThreadingHTTPServer((self.host, self._wanted_http_port), RequestHandler)
        except OSError as exc:
            raise OSError(
                f"cannot listen for OTLP/HTTP on {self.host}:{self._wanted_http_port}: {exc}"
            ) from exc
        server.daemon_threads = True
        self.http_port = server.server_address[1]
        self._http_server = server
        threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True).start()


def _status_with_retry_info(refusal: Refusal) -> bytes:
    seconds = max(refusal.retry_after or 0.0, 0.0)
    info = error_details_pb2.RetryInfo(
        retry_delay=Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
    )
    status = status_pb2.Status(code=refusal.grpc_code.value[0], message=refusal.message)
    status.details.add().Pack(info)
    return status.SerializeToString()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):
        return self._receiver._grpc_export("logs", request, context)


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):
        return self._receiver._grpc_export("metrics", request, context)


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):
        return self._receiver._grpc_export("traces", request, context)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _HttpHandler(BaseHTTPRequestHandler):
    owner: OtlpReceiver
    protocol_version = "HTTP/1.1"  # keep-alive: exporters reuse connections

    def log_message(self, format: str, *args) -> None:
        pass  # one line per request on stderr would drown the agent's own output

    def do_POST(self) -> None:
        content_type = JSON  # errors are encoded like the request when it can be told
        try:
            signal = _BY_PATH.get(self.path.split("?", 1)[0])
            if signal is None:
                paths = ", ".join(_BY_PATH)
                raise _HttpError(404, f"no OTLP endpoint at {self.path}; use one of {paths}")
            content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if content_type not in (PROTOBUF, JSON):
                raise _HttpError(
                    415,
                    f"Content-Type {content_type or '(none)'} is not supported; "
                    f"send {PROTOBUF} or {JSON}",
                )
            request = self._decode(signal, content_type, self._body())
            try:
                response = self.owner._accept(signal.name, request)
            except Refusal as refusal:
                headers = {}
                if refusal.retry_after is not None:
                    headers["Retry-After"] = str(math.ceil(refusal.retry_after))
                raise _HttpError(refusal.http_status, refusal.message, headers) from None
            self._reply(200, content_type, response)
        except _HttpError as error:
            self._reply_error(error, content_type)

    def do_GET(self) -> None:
        self._reply_error(_HttpError(405, "OTLP/HTTP takes POST requests only"), JSON)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise _HttpError(411, "a Content-Length header is required")
            if int(length) > MAX_BODY_BYTES:
                raise _HttpError(413, f"body over {MAX_BODY_BYTES} bytes; send smaller batches")
            body = self.rfile.read(int(length))
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                return gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise _HttpError(400, f"body is not valid gzip: {exc}") from exc
        if encoding not in ("identity", ""):
            raise _HttpError(415, f"Content-Encoding {encoding} is not supported; use gzip")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes]
        chunks, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _HttpError(413, f"body over {MAX_BODY_BYTES} bytes; send smaller batches")
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    @staticmethod
    def _decode(signal: _Signal, content_type: str, body: bytes) -> Message:
        if content_type == JSON:
            try:
                return from_json(body, signal.request)
            except ValueError as exc:
                raise _HttpError(400, str(exc)) from exc
        try:
            return signal.request.FromString(body)
        except DecodeError as exc:
            raise _HttpError(
                400, f"body is not a valid protobuf {signal.request.DESCRIPTOR.name}: {exc}"
            ) from exc

    def _reply(self, status: int, content_type: str, message: Message, headers=None) -> None:
        body = to_json(message) if content_type == JSON else message.SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reply_error(self, error: _HttpError, content_type: str) -> None:
        """The body is a google.rpc.Status in the request's encoding, as OTLP asks."""
        if content_type not in (PROTOBUF, JSON):
            content_type = JSON
        status = status_pb2.Status(code=_grpc_code_for_http(error.status), message=error.message)
        self.close_connection = True  # an unread body would corrupt the next request
        self._reply(error.status, content_type, status, error.headers)


def _grpc_code_for_http(status: int) -> int:
    return {
        400: code_pb2.INVALID_ARGUMENT,
        404: code_pb2.UNIMPLEMENTED,
        405: code_pb2.UNIMPLEMENTED,
        415: code_pb2.INVALID_ARGUMENT,
        429: code_pb2.RESOURCE_EXHAUSTED,
        503: code_pb2.UNAVAILABLE,
    }.get(status, code_pb2.UNKNOWN if status >= 500 else code_pb2.INVALID_ARGUMENT)

