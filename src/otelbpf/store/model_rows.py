"""The agent's own batches -> store rows, in process: no OTLP encoding, no receiver, no decoding.

The rows are the ones store.otlp_rows makes from the OTLP request of the same batches (a
property test holds the two paths to that), with the same rules: bytes become base64, a
string that is not valid UTF-8 gets "?" where the OTLP encoder puts one, a span's HTTP
attributes are promoted to columns. Attribute sets that a producer shares among records
(read-only mappings, as the HTTP tracker makes them) are turned into JSON once.
"""

from __future__ import annotations

import base64
import json
import weakref
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from otelbpf.signals.model import (
    LogBatch,
    MetricBatch,
    MetricKind,
    Resource,
    Severity,
    SpanBatch,
    SpanColumns,
    SpanKind,
    SpanShape,
    StatusCode,
)
from otelbpf.store.otlp_rows import Columns, empty, http_columns, span_kind, status_code
from otelbpf.store.schema import LOGS, METRIC_POINTS, SPANS

MAX_SHARED = 1 << 16  # shared attribute sets remembered; forgotten all at once when full
_SEVERITY_NAMES = {int(s): s.name for s in Severity}
_SPAN_KIND_NAMES = {k: span_kind(int(k)) for k in SpanKind}
_STATUS_CODE_NAMES = {c: status_code(int(c)) for c in StatusCode}
_METRIC_KINDS = {MetricKind.SUM: "sum", MetricKind.GAUGE: "gauge", MetricKind.HISTOGRAM: "histogram"}


def _plain(value: object) -> object:
    """What json cannot encode itself, as OTLP decoding would give it back."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be stored")


def utf8(text: str) -> str:
    """text as it arrives through OTLP: a lone surrogate (a non-UTF-8 file name) becomes "?",
    as the OTLP encoder writes it, so the store never holds text DuckDB cannot encode."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def stored(value: object) -> object:
    """One attribute value as otlp_rows decodes it from OTLP."""
    if isinstance(value, str):
        return utf8(value)
    if isinstance(value, list | tuple):
        return [stored(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return _plain(value)
    return value


# The span attributes http_columns reads.
_PROMOTED = ("http.request.method", "http.method", "http.route", "http.response.status_code", "http.status_code")


def promoted(attrs: Mapping) -> tuple:
    return http_columns({key: stored(attrs[key]) for key in _PROMOTED if key in attrs})


def to_json(attrs: Mapping) -> str:
    return utf8(json.dumps(attrs, separators=(",", ":"), ensure_ascii=False, default=_plain))


# Two hex digits of each byte value, for ids as text with numpy.
_HEX = np.array([f"{i:02x}" for i in range(256)], "U2")


def hex_ids(ids: np.ndarray, zero_is_empty: bool = False) -> np.ndarray:
    """(n, width) uint8 ids -> n lowercase hex strings; zero_is_empty: an all-zero id (a
    parent span id of a root span) is ''."""
    n, width = ids.shape
    text = np.ascontiguousarray(_HEX[ids]).view(f"U{2 * width}").reshape(n).astype(object)
    if zero_is_empty:
        text[~ids.any(axis=1)] = ""
    return text


def _with_ints(attributes: np.ndarray, columns: SpanColumns) -> np.ndarray:
    """Each row's attributes JSON (object array) with the batch's per-span integer attributes
    appended, as the row form's dict puts them after the shape's: string concatenation over
    the column, no JSON encoding per span."""
    if not columns.ints:
        return attributes
    out = np.array([a[:-1] for a in attributes.tolist()], object)  # without the closing brace
    bare = out == "{"
    for key, values in columns.ints.items():
        field = json.dumps(key, ensure_ascii=False) + ":"
        text = values.astype(np.int64).astype(str).astype(object)
        out = np.where(bare, "{" + field, out + ("," + field)) + text
        bare[:] = False
    return out + "}"


class RowBuilder:
    """Builds the rows of one sink's batches; its caches are bounded and its own."""

    def __init__(self) -> None:
        self._resources: dict[Resource, tuple[str, str]] = {}  # -> (service, JSON)
        self._shared: dict[int, tuple[Mapping, str, tuple]] = {}  # id -> (set, JSON, promoted columns)
        # shape -> its columns: name, kind, status code and message, method, route, status, attributes JSON
        self._shapes: weakref.WeakKeyDictionary[SpanShape, tuple] = weakref.WeakKeyDictionary()

    def span_columns(self, columns: SpanColumns) -> Columns:
        """Spans as columns straight from column batches: what spans share is made text once per
        shape and resource, then spread over the rows by index (numpy), no Python per span.
        Per-span integer attributes (`ints`) are written into each row's JSON after the shape's,
        where the row form puts them."""
        if columns.resource is None:
            raise ValueError("span columns have no resources yet: the enrichment stage sets them")
        if any(key in shape.attributes for shape in columns.shapes for key in columns.ints):
            return self._span_rows(columns)  # a per-span value replaces a shape's: the row form says where
        n = len(columns)
        shapes = np.array([self._shape(s) for s in columns.shapes] or [("",) * 8], object)[columns.shape]
        resources = np.array([self._resource(r) for r in columns.resources] or [("", "")], object)[columns.resource]
        start, end = columns.start.astype(np.int64), columns.end.astype(np.int64)
        return {  # as lists of their own: the writer merges a flush's batches by extending lists
            "time_unix_nano": start, "end_unix_nano": end, "duration_ns": np.maximum(end - start, 0),
            "trace_id": hex_ids(columns.trace_id), "span_id": hex_ids(columns.span_id),
            "parent_span_id": hex_ids(columns.parent_span_id, zero_is_empty=True), "service": resources[:, 0],
            "name": shapes[:, 0], "kind": shapes[:, 1], "status_code": shapes[:, 2], "status_message": shapes[:, 3],
            "http_method": shapes[:, 4], "http_route": shapes[:, 5], "http_status": shapes[:, 6],
            "scope": np.full(n, columns.scope, object), "attributes": _with_ints(shapes[:, 7], columns),
            "resource": resources[:, 1],
        }

    def _span_rows(self, columns: SpanColumns) -> Columns:
        out = empty(SPANS)
        for batch in columns.to_batches():
            for name, values in self.spans(batch).items():
                out[name].extend(values)
        return out

    def _shape(self, shape: SpanShape) -> tuple:
        known = self._shapes.get(shape)
        if known is None:
            attrs_json, (method, route, status) = self._span_attributes(shape.attributes)
            known = self._shapes[shape] = (
                utf8(shape.name), _SPAN_KIND_NAMES.get(shape.kind) or span_kind(int(shape.kind)),
                _STATUS_CODE_NAMES.get(shape.status_code) or status_code(int(shape.status_code)),
                utf8(shape.status_message) or None, method, route, status, attrs_json)
        return known

    def _resource(self, resource: Resource) -> tuple[str, str]:
        known = self._resources.get(resource)
        if known is None:
            if len(self._resources) >= MAX_SHARED:
                self._resources.clear()
            attrs = dict(resource.attributes)
            known = self._resources[resource] = (utf8(str(attrs.get("service.name", ""))), to_json(attrs))
        return known

    def _span_attributes(self, attrs: Mapping) -> tuple[str, tuple]:
        if type(attrs) is not MappingProxyType:
            return to_json(attrs), promoted(attrs)
        shared = self._shared.get(id(attrs))
        if shared is None or shared[0] is not attrs:
            if len(self._shared) >= MAX_SHARED:
                self._shared.clear()
            shared = self._shared[id(attrs)] = (attrs, to_json(attrs), promoted(attrs))
        return shared[1], shared[2]

    def spans(self, batch: SpanBatch) -> Columns:
        """Column by column, each one comprehension: spans come at request rates."""
        spans = batch.spans
        n = len(spans)
        service, res_json = self._resource(batch.resource)
        described = [self._span_attributes(s.attributes) for s in spans]
        promoted: list[tuple] = list(zip(*[p for _, p in described])) if n else [(), (), ()]
        starts = [s.start_time_unix_nano for s in spans]
        ends = [s.end_time_unix_nano for s in spans]
        kinds, codes = _SPAN_KIND_NAMES, _STATUS_CODE_NAMES
        return {
            "time_unix_nano": starts, "end_unix_nano": ends,
            "duration_ns": [max(end - start, 0) for start, end in zip(starts, ends)],
            "trace_id": [s.trace_id.hex() for s in spans], "span_id": [s.span_id.hex() for s in spans],
            "parent_span_id": [s.parent_span_id.hex() for s in spans], "service": [service] * n,
            "name": [utf8(s.name) for s in spans],
            "kind": [kinds.get(s.kind) or span_kind(int(s.kind)) for s in spans],
            "status_code": [codes.get(s.status_code) or status_code(int(s.status_code)) for s in spans],
            "status_message": [utf8(s.status_message) or None for s in spans],
            "http_method": list(promoted[0]), "http_route": list(promoted[1]), "http_status": list(promoted[2]),
            "scope": [batch.scope] * n, "attributes": [j for j, _ in described], "resource": [res_json] * n,
        }

    def logs(self, batch: LogBatch) -> Columns:
        out = empty(LOGS)
        service, res_json = self._resource(batch.resource)
        columns = list(out.values())
        scope, severity_names = batch.scope, _SEVERITY_NAMES
        for r in batch.records:
            body = r.body
            if body is not None and not isinstance(body, str):  # as otlp_rows gives it: bytes as base64
                body = _plain(body) if isinstance(body, bytes) else json.dumps(body, default=_plain)
            row = (r.time_unix_nano, service, scope, r.event_name or None, int(r.severity),
                   severity_names.get(int(r.severity)), None if body is None else utf8(body), None, None,
                   to_json(r.attributes), res_json)
            for column, value in zip(columns, row):
                column.append(value)
        return out

    def metrics(self, batch: MetricBatch) -> tuple[Columns, list[dict]]:
        """metric_points rows, and each point's attributes as a dict (for the network derivation)."""
        out = empty(METRIC_POINTS)
        service, res_json = self._resource(batch.resource)
        columns = list(out.values())
        attributes: list[dict] = []
        now, scope = batch.time_unix_nano, batch.scope
        for m in batch.metrics:
            kind = _METRIC_KINDS[m.kind]
            start = 0 if m.kind is MetricKind.GAUGE else batch.start_time_unix_nano
            unit = m.unit or None
            for p in m.points:
                if m.kind is MetricKind.HISTOGRAM:
                    value, count, total = None, p.count, float(p.sum)
                    bounds, buckets = list(p.bounds), list(p.bucket_counts)
                else:
                    value, count, total, bounds, buckets = float(p.value), 0, None, None, None
                row = (now, start, service, scope, m.name, unit, kind, value, count, total, bounds, buckets,
                       to_json(p.attributes), res_json)
                for column, v in zip(columns, row):
                    column.append(v)
                attributes.append(p.attributes)
        return out, attributes
