"""OTLP exporter settings from the standard OTEL_EXPORTER_OTLP_* variables and overrides.

Precedence, per setting: override for the signal (`logs_endpoint`), generic override
(`endpoint`), per-signal variable (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT), generic variable
(OTEL_EXPORTER_OTLP_ENDPOINT), default. Only a generic endpoint gets /v1/<signal> appended
for HTTP; a per-signal endpoint is used as given. Invalid values raise ValueError naming the
variable (or override key) and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import SupportsFloat, SupportsIndex, SupportsInt
from urllib.parse import unquote, urlsplit

SIGNALS = ("logs", "metrics", "traces", "profiles")
# OTLP/HTTP paths a generic endpoint gets; profiles are still a development signal.
HTTP_PATHS = {"logs": "/v1/logs", "metrics": "/v1/metrics", "traces": "/v1/traces",
              "profiles": "/v1development/profiles"}
PROTOCOLS = ("grpc", "http/protobuf", "http/json")
COMPRESSIONS = ("gzip", "none")
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_TIMEOUT_S = 10.0
_DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http": "http://localhost:4318"}
_PER_SIGNAL = ("endpoint", "headers", "compression", "timeout", "protocol", "insecure",
               "certificate", "client_key", "client_certificate")
_EXPORTER_KEYS = ("max_batch_size", "batch_timeout", "queue_size", "retry_initial_interval",
                  "retry_multiplier", "retry_max_interval", "retry_max_elapsed")


@dataclass(frozen=True)
class SignalSettings:
    """Where and how one signal is sent."""

    signal: str
    protocol: str
    endpoint: str  # full URL for HTTP; scheme://host:port for gRPC
    headers: tuple[tuple[str, str], ...] = ()
    compression: str = "none"
    timeout: float = DEFAULT_TIMEOUT_S  # seconds
    insecure: bool = False  # gRPC without TLS
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None

    @property
    def grpc_target(self) -> str:
        """host:port for grpc.*_channel."""
        parts = urlsplit(self.endpoint if "://" in self.endpoint else f"//{self.endpoint}")
        return f"{parts.hostname}:{parts.port or 4317}"


@dataclass(frozen=True)
class RetrySettings:
    """Exponential backoff with jitter, the collector's defaults."""

    initial_interval: float = 5.0
    multiplier: float = 1.5
    max_interval: float = 30.0
    max_elapsed: float = 300.0


@dataclass(frozen=True)
class OtlpSettings:
    logs: SignalSettings
    metrics: SignalSettings
    traces: SignalSettings
    profiles: SignalSettings
    max_batch_size: int = 8192  # items per request
    batch_timeout: float = 0.2  # seconds a partial batch waits for more
    queue_size: int = 100_000  # items queued or in flight; beyond it batches are dropped
    retry: RetrySettings = field(default_factory=RetrySettings)

    def for_signal(self, signal: str) -> SignalSettings:
        return getattr(self, signal)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, object] | None = None,
    ) -> OtlpSettings:
        """Settings from environ (default os.environ) and overrides (configuration keys).

        Override keys: endpoint, headers (str or dict), compression, timeout (seconds),
        protocol, insecure, certificate, client_key, client_certificate, each also as
        <signal>_<key>; and max_batch_size, batch_timeout, queue_size, retry_initial_interval,
        retry_multiplier, retry_max_interval, retry_max_elapsed.
        """
        source = _Source(os.environ if environ is None else environ, overrides or {})
        source.check_override_keys()
        signals = {signal: _signal_settings(source, signal) for signal in SIGNALS}
        retry = RetrySettings(
            initial_interval=source.number("retry_initial_interval", 5.0, minimum=0.0),
            multiplier=source.number("retry_multiplier", 1.5, minimum=1.0),
            max_interval=source.number("retry_max_interval", 30.0, minimum=0.0),
            max_elapsed=source.number("retry_max_elapsed", 300.0, minimum=0.0),
        )
        return cls(
            **signals,
            max_batch_size=int(source.number("max_batch_size", 8192, minimum=1, integer=True)),
            batch_timeout=source.number("batch_timeout", 0.2, minimum=0.0),
            queue_size=int(source.number("queue_size", 100_000, minimum=1, integer=True)),
            retry=retry,
        )


class _Source:
    """Looks a setting up in overrides, then the environment, remembering where it came from."""

    def __init__(self, environ: Mapping[str, str], overrides: Mapping[str, object]) -> None:
        self.environ, self.overrides = environ, overrides

    def check_override_keys(self) -> None:
        known = set(_PER_SIGNAL) | set(_EXPORTER_KEYS)
        known |= {f"{signal}_{key}" for signal in SIGNALS for key in _PER_SIGNAL}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown OTLP setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )

    def lookup(self, signal: str, key: str) -> tuple[object | None, str, bool]:
        """(value, name to blame, whether it came from a per-signal source)."""
        if f"{signal}_{key}" in self.overrides:
            return self.overrides[f"{signal}_{key}"], f"{signal}_{key}", True
        if key in self.overrides:
            return self.overrides[key], key, False
        for name, per_signal in (
            (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{key.upper()}", True),
            (f"OTEL_EXPORTER_OTLP_{key.upper()}", False),
        ):
            value = self.environ.get(name, "").strip()
            if value:
                return value, name, per_signal
        return None, "", False

    def number(self, key: str, default: float, minimum: float, integer: bool = False) -> float:
        value = self.overrides.get(key)
        if value is None:
            return default
        return _number(key, value, minimum, integer)


def _number(name: str, value: object, minimum: float, integer: bool) -> float:
    try:
        # What int() and float() take; anything else is the TypeError they would raise.
        number: float
        if integer and isinstance(value, str | bytes | bytearray | SupportsInt | SupportsIndex):
            number = int(value)
        elif not integer and isinstance(value, str | bytes | bytearray | SupportsFloat | SupportsIndex):
            number = float(value)
        else:
            raise TypeError
        if integer and isinstance(value, float | str) and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: {value!r} is not {kind}") from None
    if number < minimum:
        raise ValueError(f"{name}: {value!r} must be at least {minimum}")
    return number


def _signal_settings(source: _Source, signal: str) -> SignalSettings:
    protocol, name, _ = source.lookup(signal, "protocol")
    protocol = str(protocol or DEFAULT_PROTOCOL).lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"{name}: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    transport = "grpc" if protocol == "grpc" else "http"

    endpoint, name, per_signal = source.lookup(signal, "endpoint")
    endpoint = _endpoint(str(endpoint) if endpoint else None, name, transport, signal, per_signal)
    insecure = _insecure(source, signal, endpoint)

    return SignalSettings(
        signal=signal,
        protocol=protocol,
        endpoint=endpoint,
        headers=_headers(*source.lookup(signal, "headers")[:2]),
        compression=_compression(*source.lookup(signal, "compression")[:2]),
        timeout=_timeout(source, signal),
        insecure=insecure,
        certificate=_file(*source.lookup(signal, "certificate")[:2]),
        client_key=_file(*source.lookup(signal, "client_key")[:2]),
        client_certificate=_file(*source.lookup(signal, "client_certificate")[:2]),
    )


def _endpoint(value: str | None, name: str, transport: str, signal: str, per_signal: bool) -> str:
    if value is None:
        value, name, per_signal = _DEFAULT_ENDPOINTS[transport], "default endpoint", False
    parts = urlsplit(value if "://" in value or transport == "http" else f"//{value}")
    if transport == "http" and parts.scheme not in ("http", "https"):
        raise ValueError(f"{name}: {value!r} needs an http:// or https:// scheme")
    if parts.scheme not in ("", "http", "https"):
        raise ValueError(f"{name}: {value!r} has scheme {parts.scheme}; use http or https")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise ValueError(f"{name}: {value!r} has an invalid port ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"{name}: {value!r} has no host; write e.g. http://collector:4318")
    if transport == "http" and not per_signal:
        return f"{value.rstrip('/')}{HTTP_PATHS[signal]}"
    return value


def _insecure(source: _Source, signal: str, endpoint: str) -> bool:
    """An explicit scheme decides; INSECURE only matters for a bare host:port."""
    if endpoint.startswith("http://"):
        return True
    if endpoint.startswith("https://"):
        return False
    value, name, _ = source.lookup(signal, "insecure")
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"{name}: {value!r} is not true or false")
    return text == "true"


def _headers(value: object, name: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return tuple((str(k).lower(), str(v)) for k, v in value.items())
    headers = []
    for entry in str(value).split(","):
        if not entry.strip():
            continue
        key, sep, val = entry.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: entry {entry.strip()!r} is not key=value (k1=v1,k2=v2)")
        # gRPC metadata keys must be lowercase; HTTP header names are case-insensitive.
        headers.append((unquote(key.strip()).lower(), unquote(val.strip())))
    return tuple(headers)


def _compression(value: object, name: str) -> str:
    text = str(value or "none").strip().lower()
    if text not in COMPRESSIONS:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(COMPRESSIONS)}")
    return text


def _timeout(source: _Source, signal: str) -> float:
    """Variables hold milliseconds (OTel spec); overrides hold seconds."""
    value, name, _ = source.lookup(signal, "timeout")
    if value is None:
        return DEFAULT_TIMEOUT_S
    from_env = name.startswith("OTEL_")
    seconds = _number(name, value, 0.0, integer=False)
    if seconds <= 0:
        unit = "milliseconds" if from_env else "seconds"
        raise ValueError(f"{name}: {value!r} must be a positive number of {unit}")
    return seconds / 1000.0 if from_env else seconds


def _file(value: object, name: str) -> str | None:
    if value is None:
        return None
    path = str(value)
    if not os.path.isfile(path):
        raise ValueError(f"{name}: file {path!r} does not exist or is not a file")
    return path
