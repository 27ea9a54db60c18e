"""OTLP over gRPC: the exporter's transport for protocol "grpc", in a module of its own so
that agents exporting over HTTP never load grpcio."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from otelbpf.export.otlp_response import Sent, partial_success
from otelbpf.export.otlp_settings import SignalSettings
from otelbpf.export.retry import PermanentError, RetryableError

RETRYABLE_GRPC = frozenset({
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
})


class GrpcTransport:
    """Sends encoded requests through grpcio; bytes go out as they are (no re-serialising)."""

    def __init__(self, settings: SignalSettings, codec) -> None:
        self._settings, self._codec = settings, codec
        # grpcio backs off up to 120 s between reconnects by default; a collector that comes
        # back should see our queue drained within seconds.
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if settings.insecure:
            self._channel = grpc.insecure_channel(settings.grpc_target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.certificate),
                private_key=_read(settings.client_key),
                certificate_chain=_read(settings.client_certificate),
            )
            self._channel = grpc.secure_channel(settings.grpc_target, credentials, options)
        self._export = self._channel.unary_unary(
            codec.grpc_method, request_serializer=None, response_deserializer=codec.response.FromString
        )
        self._compression = grpc.Compression.Gzip if settings.compression == "gzip" else None

    def send(self, batches: list) -> Sent:
        body = self._codec.encode_protobuf(batches)
        try:
            response = self._export(
                body,
                timeout=self._settings.timeout,
                metadata=self._settings.headers or None,
                compression=self._compression,
            )
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            message = f"gRPC {code.name}: {details}"
            delay = _retry_delay(error.trailing_metadata())
            if code in RETRYABLE_GRPC or (
                code is grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
            ):
                raise RetryableError(message, delay) from None
            raise PermanentError(message) from None
        return partial_success(response, self._codec)

    def close(self) -> None:
        self._channel.close()


def _retry_delay(trailing_metadata) -> float | None:
    """RetryInfo.retry_delay from the grpc-status-details-bin trailer, if the server sent it."""
    for key, value in trailing_metadata or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()
