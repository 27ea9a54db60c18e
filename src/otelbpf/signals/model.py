"""Internal signal model: what sensors produce and sinks consume.

Sensors build batches of these; the OTLP mapping (signals.otlp) and every sink work from
them, so no sink knows which sensor produced a batch. Spans, which come at request rates, travel
as columns (SpanColumns): numpy arrays per field, and the attributes that many spans share
described once per batch (SpanShape).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class SpanShape:
    """What many spans share: their name, kind, attributes and status. A producer describes
    each distinct request once and its spans point at the description (compared by identity:
    the encoders cache what they make of a shape by the object)."""

    name: str
    kind: SpanKind
    attributes: Mapping[str, AttrValue]
    status_code: StatusCode = StatusCode.UNSET
    status_message: str = ""


_NO_IDS = np.zeros((0, 8), np.uint8)


@dataclass(slots=True, eq=False)
class SpanColumns:
    """Spans as columns, one row per span.

    `pid` is the join key of the enrichment stage (enrich.stage), which fills `resources` and
    `resource` (the row's index into it); a batch built for one resource has them from the
    start. `ints` holds per-span integer attributes (network.peer.port), encoded after the
    shape's. `names`: the kernel's command names of processes first seen in this batch, for
    the enrichment of those that exit before /proc is read.
    """

    scope: str
    shapes: list[SpanShape]
    shape: np.ndarray           # int32 (n,): index into shapes
    trace_id: np.ndarray        # uint8 (n, 16)
    span_id: np.ndarray         # uint8 (n, 8)
    parent_span_id: np.ndarray  # uint8 (n, 8); all zero: a root span
    start: np.ndarray           # uint64 (n,): unix ns
    end: np.ndarray             # uint64 (n,): unix ns
    pid: np.ndarray             # uint32 (n,)
    ints: dict[str, np.ndarray] = field(default_factory=dict)  # int64 (n,) each
    resources: list[Resource] = field(default_factory=list)
    resource: np.ndarray | None = None  # int32 (n,): index into resources, once enriched
    names: dict[int, bytes] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.shape)

    @classmethod
    def from_batch(cls, batch: SpanBatch) -> SpanColumns:
        """The row form's spans as columns: spans that share one attribute set (as the HTTP
        tracker's do) and their name, kind and status share a shape."""
        columns = cls.of_spans(batch.scope, batch.spans, np.zeros(len(batch.spans), np.uint32))
        columns.resources, columns.resource = [batch.resource], np.zeros(len(batch.spans), np.int32)
        return columns

    @classmethod
    def of_spans(cls, scope: str, spans: list[SpanRecord], pid: np.ndarray,
                 names: dict[int, bytes] | None = None) -> SpanColumns:
        """Spans of the row form with the pid of each, for the enrichment stage to join."""
        n = len(spans)
        shapes: list[SpanShape] = []
        index: dict[tuple, int] = {}
        rows = []
        for s in spans:
            # int(): an IntEnum hashes in Python code, an int does not
            key = (id(s.attributes), s.name, int(s.kind), int(s.status_code), s.status_message)
            at = index.get(key)
            if at is None:  # the spans hold their attributes: an id stays theirs during the loop
                at = index[key] = len(shapes)
                shapes.append(SpanShape(s.name, s.kind, s.attributes, s.status_code, s.status_message))
            rows.append(at)
        return cls(
            scope, shapes, np.array(rows, np.int32).reshape(n),
            _ids([s.trace_id for s in spans], 16, "trace_id"), _ids([s.span_id for s in spans], 8, "span_id"),
            _ids([s.parent_span_id or bytes(8) for s in spans], 8, "parent_span_id"),
            np.array([s.start_time_unix_nano for s in spans], np.uint64).reshape(n),
            np.array([s.end_time_unix_nano for s in spans], np.uint64).reshape(n),
            np.asarray(pid, np.uint32), names=names or {})

    def durations_s(self) -> np.ndarray:
        """Each span's duration in seconds (0 where the end is before the start)."""
        return np.maximum(self.end.astype(np.int64) - self.start.astype(np.int64), 0) / 1e9

    def take(self, rows: np.ndarray | slice) -> SpanColumns:
        """The rows selected (an index array, a mask or a slice), sharing shapes and resources."""
        return SpanColumns(
            self.scope, self.shapes, self.shape[rows], self.trace_id[rows], self.span_id[rows],
            self.parent_span_id[rows], self.start[rows], self.end[rows], self.pid[rows],
            {key: values[rows] for key, values in self.ints.items()}, self.resources,
            None if self.resource is None else self.resource[rows], self.names)

    def by_resource(self) -> list[tuple[Resource, np.ndarray]]:
        """(resource, its rows in order) for each resource the batch holds; needs enrichment."""
        if self.resource is None:
            raise ValueError("span columns have no resources yet: the enrichment stage sets them")
        if not len(self):
            return []
        if len(self.resources) == 1:
            return [(self.resources[0], np.arange(len(self)))]
        order = np.argsort(self.resource, kind="stable")
        cuts = np.flatnonzero(np.diff(self.resource[order])) + 1
        return [(self.resources[int(self.resource[rows[0]])], rows) for rows in np.split(order, cuts)]

    def to_batches(self) -> list[SpanBatch]:
        """The row form, one batch per resource: for sinks and views that read span by span."""
        out = []
        for resource, rows in self.by_resource():
            spans = []
            ints = [(key, values[rows].tolist()) for key, values in self.ints.items()]
            for j, i in enumerate(rows.tolist()):
                shape = self.shapes[self.shape[i]]
                attributes = dict(shape.attributes)
                for key, values in ints:
                    attributes[key] = values[j]
                parent = self.parent_span_id[i].tobytes()
                spans.append(SpanRecord(
                    self.trace_id[i].tobytes(), self.span_id[i].tobytes(), shape.name, shape.kind,
                    int(self.start[i]), int(self.end[i]), parent if any(parent) else b"", attributes,
                    shape.status_code, shape.status_message))
            out.append(SpanBatch(resource, self.scope, spans))
        return out


def _ids(values: list[bytes], width: int, what: str) -> np.ndarray:
    if any(len(v) != width for v in values):
        bad = next(v for v in values if len(v) != width)
        raise ValueError(f"a span's {what} must be {width} bytes, got {len(bad)}")
    if not values:
        return _NO_IDS if width == 8 else np.zeros((0, width), np.uint8)
    return np.frombuffer(b"".join(values), np.uint8).reshape(len(values), width).copy()
