"""Internal signal model: what sensors produce and sinks consume.

Sensors build batches of these plain objects; the OTLP mapping (signals.otlp) and every
sink work from them, so no sink knows which sensor produced a batch.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AttrValue = str | int | float | bool | bytes | list
Attributes = dict[str, AttrValue]


@dataclass(frozen=True, slots=True)
class Resource:
    """The entity that produced telemetry (host, agent); hashable so batches can group by it."""

    attributes: tuple[tuple[str, AttrValue], ...] = ()

    @classmethod
    def of(cls, attrs: Mapping[str, AttrValue]) -> Resource:
        return cls(tuple(sorted(attrs.items())))

    def as_dict(self) -> Attributes:
        return dict(self.attributes)


class Severity(enum.IntEnum):
    """OTLP SeverityNumber values used by the agent."""

    DEBUG = 5
    INFO = 9
    WARN = 13
    ERROR = 17
    FATAL = 21


@dataclass(slots=True)
class LogRecord:
    time_unix_nano: int
    event_name: str
    severity: Severity = Severity.INFO
    body: str | None = None
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class LogBatch:
    resource: Resource
    scope: str
    records: list[LogRecord]


class MetricKind(enum.Enum):
    SUM = "sum"  # cumulative; monotonic unless Metric.monotonic is False
    GAUGE = "gauge"
    HISTOGRAM = "histogram"  # cumulative, explicit bounds


@dataclass(slots=True)
class MetricPoint:
    attributes: Attributes
    value: int | float = 0
    # histogram only
    bounds: tuple[float, ...] = ()
    bucket_counts: tuple[int, ...] = ()
    count: int = 0
    sum: float = 0.0


@dataclass(slots=True)
class Metric:
    name: str
    description: str
    unit: str
    kind: MetricKind
    points: list[MetricPoint]
    monotonic: bool = True


@dataclass(slots=True)
class MetricBatch:
    resource: Resource
    scope: str
    start_time_unix_nano: int
    time_unix_nano: int
    metrics: list[Metric]


class SpanKind(enum.IntEnum):
    """OTLP Span.SpanKind values."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3


class StatusCode(enum.IntEnum):
    """OTLP Status.StatusCode values."""

    UNSET = 0
    OK = 1
    ERROR = 2


@dataclass(slots=True)
class SpanRecord:
    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    name: str
    kind: SpanKind
    start_time_unix_nano: int
    end_time_unix_nano: int
    parent_span_id: bytes = b""  # empty for a root span
    attributes: Attributes = field(default_factory=dict)
    status_code: StatusCode = StatusCode.UNSET
    status_message: str = ""


@dataclass(slots=True)
class SpanBatch:
    resource: Resource
    scope: str
    spans: list[SpanRecord]


@dataclass(slots=True)
class ProfileBatch:
    """One aggregated CPU profile (otelbpf.profiling.model.Profile: sample counts by process,
    thread and stack) of a resource; sinks that know profiles take it, the others skip it."""

    resource: Resource
    scope: str
    profile: Any
