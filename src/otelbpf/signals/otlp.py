"""Mapping of the internal model to the official OTLP request messages.

Logs are the hot path: a Python loop that sets fields on protobuf messages tops out near
100k records/s, so `encode_logs_request` writes the protobuf wire format directly and caches
the encoded bytes of repeated attribute key/value pairs (executable names, container ids,
exit codes repeat endlessly). Resource and scope are still built with the official classes,
and `logs_request` parses our bytes with the official class, so both paths yield exactly the
same message (tests compare them with a reference built field by field).
Metrics are low volume and are built with the official classes directly. Spans come as
columns and are encoded with no Python per span (signals.otlp_spans).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain, repeat
from types import MappingProxyType
from typing import TypeVar

import numpy as np
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from otelbpf import __version__
from otelbpf.signals.model import (
    Attributes,
    AttrValue,
    LogBatch,
    LogRecord,
    MetricBatch,
    MetricKind,
    Resource,
    Severity,
    SpanBatch,
    SpanColumns,
)
from otelbpf.signals.otlp_spans import SpanEncoder

__all__ = [
    "encode_logs_request",
    "encode_metrics_request",
    "encode_traces_request",
    "log_item_count",
    "logs_request",
    "metric_item_count",
    "metrics_request",
    "set_any_value",
    "span_item_count",
    "traces_request",
]

SCOPE_VERSION = __version__

# Wire-format tags: (field_number << 3) | wire_type.
_LEN = 2
_TAG_RESOURCE_LOGS = bytes(((1 << 3) | _LEN,))  # ExportLogsServiceRequest.resource_logs
_TAG_RESOURCE = bytes(((1 << 3) | _LEN,))  # ResourceLogs.resource
_TAG_SCOPE_LOGS = bytes(((2 << 3) | _LEN,))  # ResourceLogs.scope_logs
_TAG_SCOPE = bytes(((1 << 3) | _LEN,))  # ScopeLogs.scope
_TAG_LOG_RECORD = bytes(((2 << 3) | _LEN,))  # ScopeLogs.log_records
_TIMES = struct.Struct("<BQBQ")  # time_unix_nano (1) and observed_time_unix_nano (11), fixed64
_TAG_TIME, _TAG_OBSERVED = (1 << 3) | 1, (11 << 3) | 1
_TAG_BODY = bytes(((5 << 3) | _LEN,))
_TAG_ATTRIBUTE = bytes(((6 << 3) | _LEN,))
_TAG_EVENT_NAME = bytes(((12 << 3) | _LEN,))
_DOUBLE = struct.Struct("<d")

# Bounded caches of encoded bytes; cleared when full (values like pids churn forever).
_CACHE_LIMIT = 1 << 16
_T = TypeVar("_T", bound="LogBatch | MetricBatch | _SpanRows")


def _varint(value: int) -> bytes:
    if value < 0:
        value &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement, 10 bytes on the wire
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # pids, ports and lengths: spare the loop
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _encode_any_value(value: AttrValue) -> bytes:
    """AnyValue message body. bool is tested before int because bool is an int subclass."""
    if isinstance(value, str):
        # "replace": a lone surrogate would make invalid UTF-8 and void the whole request
        return _length_delimited(b"\x0a", value.encode("utf-8", "replace"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return _length_delimited(b"\x3a", bytes(value))
    if isinstance(value, list | tuple):
        array = b"".join(_length_delimited(b"\x0a", _encode_any_value(v)) for v in value)
        return _length_delimited(b"\x2a", array)
    raise TypeError(
        f"attribute value {value!r} has type {type(value).__name__}; "
        "use str, int, float, bool, bytes or a list of those"
    )


_SMALL = [bytes((n,)) for n in range(0x80)]
_LENGTHS = [_varint(n) for n in range(1 << 14)]  # varints of record lengths up to 16 KiB


class _AttributeEncoder:
    """Encodes attributes as tagged KeyValue fields, caching whole fields for repeated pairs.

    Only exact str and int values are cached, each type in its own dict: in one dict True, 1
    and 1.0 would be the same key. Keys and list elements have their own small caches.
    Read-only attribute sets (MappingProxyType: a producer shares one among many records,
    as the HTTP tracker does) are encoded once, whole.
    """

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        # (key, value) items whose value is an exact str, or an exact int (see fields())
        self._str: dict[tuple[str, AttrValue], bytes] = {}
        self._int: dict[tuple[str, AttrValue], bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._elements: dict[str, bytes] = {}
        self._columns: dict[tuple[str, type], dict[AttrValue, bytes]] = {}
        # id -> (the set itself, so that its id stays its own while cached; its fields)
        self._shared: dict[int, tuple[MappingProxyType, list[bytes]]] = {}

    def field(self, key: str, value: AttrValue) -> bytes:
        prefix = self._keys.get(key) or self._key_prefix(key)
        if type(value) is int:
            any_value = b"\x18" + (_SMALL[value] if 0 <= value < 0x80 else _varint(value))
        elif type(value) is list:
            any_value = self._array(value)
        else:
            any_value = _encode_any_value(value)
        n = len(any_value)
        kv = prefix + b"\x12" + (_SMALL[n] if n < 0x80 else _varint(n)) + any_value
        n = len(kv)
        return self._tag + (_SMALL[n] if n < 0x80 else _varint(n)) + kv

    def _key_prefix(self, key: str) -> bytes:
        if len(self._keys) >= _CACHE_LIMIT:
            self._keys.clear()
        prefix = self._keys[key] = _length_delimited(b"\x0a", key.encode("utf-8", "replace"))
        return prefix

    def _array(self, values: list) -> bytes:
        """Arrays of strings (command args) are common: encode them from cached elements."""
        get = self._elements.get
        try:
            array = b"".join([get(v) or self._element(v) for v in values])
        except TypeError:  # an unhashable element (nested list): encode without the cache
            array = b"".join([_length_delimited(b"\x0a", _encode_any_value(v)) for v in values])
        n = len(array)
        return b"\x2a" + (_SMALL[n] if n < 0x80 else _varint(n)) + array

    def _element(self, value: AttrValue) -> bytes:
        element = _length_delimited(b"\x0a", _encode_any_value(value))
        if type(value) is str:  # other types may compare equal across types (1 == True)
            if len(self._elements) >= _CACHE_LIMIT:
                self._elements.clear()
            self._elements[value] = element
        return element

    def fields(self, attributes: Attributes) -> list[bytes]:
        """Every attribute as a tagged KeyValue field; str and int pairs come from the caches."""
        if type(attributes) is MappingProxyType:
            shared = self._shared.get(id(attributes))
            if shared is not None and shared[0] is attributes:
                return shared[1]
            if len(self._shared) >= _CACHE_LIMIT:
                self._shared.clear()
            fields = [b"".join(self.fields(dict(attributes)))]
            self._shared[id(attributes)] = (attributes, fields)
            return fields
        str_cache, int_cache, store = self._str, self._int, self._store
        out = []
        for item in attributes.items():
            value_type = type(item[1])
            if value_type is str:
                out.append(str_cache.get(item) or store(str_cache, item))
            elif value_type is int:
                out.append(int_cache.get(item) or store(int_cache, item))
            else:
                out.append(self.field(item[0], item[1]))
        return out

    def _store(self, cache: dict, item: tuple) -> bytes:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        field = cache[item] = self.field(item[0], item[1])
        return field

    def column(self, key: str, values: list) -> list[bytes]:
        """Fields for one key's values across a batch.

        A column of one exact type (the usual case) is served by a list comprehension with no
        per-value type test, from a per-key cache for str and int; ints that miss (pids) and
        lists (command args) are encoded from precomputed heads, without going through field().
        """
        types = set(map(type, values))
        value_type = types.pop() if len(types) == 1 else None
        if value_type is list:
            return self._list_column(key, values)
        if value_type is not str and value_type is not int:
            return [self.field(key, value) for value in values]
        cache = self._columns.get((key, value_type))
        if cache is None or len(cache) >= _CACHE_LIMIT:
            cache = self._columns[(key, value_type)] = {}
        get = cache.get
        store: Callable[[int], bytes] | Callable[[str], bytes]
        if value_type is int:
            heads = self._int_heads(key)
            varint = _varint

            def store_int(value: int) -> bytes:
                encoded = varint(value)
                encoded = cache[value] = heads[len(encoded)] + encoded
                return encoded

            store = store_int
        else:
            field = self.field

            def store_str(value: str) -> bytes:
                encoded = cache[value] = field(key, value)
                return encoded

            store = store_str

        return [get(value) or store(value) for value in values]

    def _int_heads(self, key: str) -> list[bytes]:
        """Everything before the varint of an int field, by varint length (1 to 10)."""
        prefix = self._keys.get(key) or self._key_prefix(key)
        heads = [b""]
        for n in range(1, 11):
            kv_len = len(prefix) + 2 + 1 + n  # value tag, AnyValue length, int tag, varint
            heads.append(self._tag + _varint(kv_len) + prefix + b"\x12" + _SMALL[1 + n] + b"\x18")
        return heads

    def _list_column(self, key: str, values: list[list]) -> list[bytes]:
        """Arrays: join the cached elements, then prepend a head cached by array length."""
        prefix = (self._keys.get(key) or self._key_prefix(key)) + b"\x12"
        heads: dict[int, bytes] = {}
        elements, element = self._elements.get, self._element
        out = []
        for value in values:
            try:
                array = b"".join([elements(v) or element(v) for v in value])
            except TypeError:  # an unhashable element (nested list)
                out.append(self.field(key, value))
                continue
            head = heads.get(len(array))
            if head is None:
                any_head = b"\x2a" + _varint(len(array))
                kv_head = prefix + _varint(len(any_head) + len(array)) + any_head
                head = heads[len(array)] = (
                    self._tag + _varint(len(kv_head) + len(array)) + kv_head
                )
            out.append(head + array)
        return out


_attributes = _AttributeEncoder(_TAG_ATTRIBUTE)
_event_name_fields: dict[str, bytes] = {}


def _severity_field(number: int) -> bytes:
    """severity_number (2) and severity_text (3), the text being the Severity name."""
    try:
        text = Severity(number).name
    except ValueError:
        text = ""
    field = b"\x10" + _varint(number)
    return field + _length_delimited(b"\x1a", text.encode()) if text else field


# Indexed by number: hashing an IntEnum member runs Python code, indexing a list does not.
_SEVERITY_FIELDS = [_severity_field(n) for n in range(25)]


def _event_name_field(name: str) -> bytes:
    if not name:
        return b""  # proto3 leaves an empty string out
    if len(_event_name_fields) >= _CACHE_LIMIT:
        _event_name_fields.clear()
    field = _event_name_fields[name] = _length_delimited(_TAG_EVENT_NAME, name.encode())
    return field


def _append_fields(out: list[bytes], tag: bytes, bodies: list[bytes]) -> None:
    """Appends each body as a length-delimited field with tag (records, spans)."""
    lengths = list(map(len, bodies))
    if lengths and max(lengths) < len(_LENGTHS):  # all C-level: interleave tag, length, body
        out.extend(chain.from_iterable(zip(repeat(tag), map(_LENGTHS.__getitem__, lengths), bodies)))
    else:
        for body, n in zip(bodies, lengths):
            out += (tag, _varint(n), body)


def _encode_log_records(batches: Iterable[LogBatch], out: list[bytes]) -> None:
    """Appends tagged ScopeLogs.log_records fields, one per record, to out."""
    for batch in batches:
        records = batch.records
        if not records:
            continue
        keys = list(records[0].attributes)
        if all([*r.attributes] == keys for r in records):
            rows = _encode_columns(records, keys)
        else:
            rows = _encode_rows(records)
        _append_fields(out, _TAG_LOG_RECORD, rows)


def _encode_columns(records: list[LogRecord], keys: list[str]) -> list[bytes]:
    """LogRecord bodies for records that share their attribute keys (one sensor's batch).

    Column by column, each a comprehension over cached fields; then one join per record.
    This runs about twice as fast as the row-by-row loop below.
    """
    pack_times, tags = _TIMES.pack, (_TAG_TIME, _TAG_OBSERVED)
    severities = _SEVERITY_FIELDS
    columns = [
        [pack_times(tags[0], t, tags[1], t) for t in [r.time_unix_nano for r in records]],
        [severities[r.severity] for r in records],
    ]
    attributes = [r.attributes for r in records]
    for key in keys:
        columns.append(_attributes.column(key, [a[key] for a in attributes]))
    names = _event_name_fields
    columns.append([
        names.get(name) or _event_name_field(name) for name in [r.event_name for r in records]
    ])
    if any(r.body is not None for r in records):
        columns.append([
            b"" if r.body is None else _length_delimited(_TAG_BODY, _encode_any_value(r.body))
            for r in records
        ])
    return [b"".join(row) for row in zip(*columns)]


def _encode_rows(records: list[LogRecord]) -> list[bytes]:
    """LogRecord bodies, record by record, for batches whose attribute keys differ."""
    pack_times = _TIMES.pack
    attribute_fields = _attributes.fields
    event_names = _event_name_fields
    severities = _SEVERITY_FIELDS
    rows = []
    for record in records:
        t = record.time_unix_nano
        parts = [pack_times(_TAG_TIME, t, _TAG_OBSERVED, t), severities[record.severity]]
        parts += attribute_fields(record.attributes)
        if record.event_name:
            parts.append(event_names.get(record.event_name) or _event_name_field(record.event_name))
        if record.body is not None:
            parts.append(_length_delimited(_TAG_BODY, _encode_any_value(record.body)))
        rows.append(b"".join(parts))
    return rows


def _group(batches: Iterable[_T]) -> list[tuple[Resource, dict[str, list[_T]]]]:
    """[(resource, {scope: [batch, ...]})] in first-seen order."""
    groups: dict = {}
    for batch in batches:
        key: object = batch.resource
        try:
            hash(key)
        except TypeError:  # a list-valued resource attribute is not hashable
            key = repr(batch.resource)
        entry = groups.setdefault(key, (batch.resource, {}))
        entry[1].setdefault(batch.scope, []).append(batch)
    return list(groups.values())


def set_any_value(target: common_pb2.AnyValue, value: AttrValue) -> None:
    """Fill an official AnyValue from a Python value (same rules as the fast encoder)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes | bytearray | memoryview):
        target.bytes_value = bytes(value)
    elif isinstance(value, list | tuple):
        array = target.array_value
        array.SetInParent()  # an empty list is still an array value
        for item in value:
            set_any_value(array.values.add(), item)
    else:
        raise TypeError(
            f"attribute value {value!r} has type {type(value).__name__}; "
            "use str, int, float, bool, bytes or a list of those"
        )


def _fill_attributes(target, attributes: Iterable[tuple[str, AttrValue]]) -> None:
    for key, value in attributes:
        set_any_value(target.add(key=key).value, value)


def _resource_message(resource: Resource) -> resource_pb2.Resource:
    message = resource_pb2.Resource()
    _fill_attributes(message.attributes, resource.attributes)
    return message


def _scope_message(scope: str) -> common_pb2.InstrumentationScope:
    return common_pb2.InstrumentationScope(name=scope, version=SCOPE_VERSION)


def encode_logs_request(batches: Iterable[LogBatch]) -> bytes:
    """Serialized ExportLogsServiceRequest for the batches, grouped by (resource, scope)."""
    return _encode_export_request(batches, _encode_log_records)


def _encode_export_request(batches: Iterable, encode_items: Callable[[list, list[bytes]], None]) -> bytes:
    """The request -> resource -> scope -> items nesting that logs and spans share (the same
    field numbers): every level's fields go into one list, its length is summed rather than
    built by joining, and the whole request is joined once: one copy of the bytes, not one
    per level."""
    out: list[bytes] = []
    for resource, scopes in _group(batches):
        level = [_length_delimited(_TAG_RESOURCE, _resource_message(resource).SerializeToString())]
        for scope, scope_batches in scopes.items():
            fields = [_length_delimited(_TAG_SCOPE, _scope_message(scope).SerializeToString())]
            encode_items(scope_batches, fields)
            level += (_TAG_SCOPE_LOGS, _varint(sum(map(len, fields))))
            level += fields
        out += (_TAG_RESOURCE_LOGS, _varint(sum(map(len, level))))
        out += level
    return b"".join(out)


def logs_request(batches: Iterable[LogBatch]) -> ExportLogsServiceRequest:
    """The official ExportLogsServiceRequest for the batches."""
    return ExportLogsServiceRequest.FromString(encode_logs_request(batches))


def _fill_number_point(point: metrics_pb2.NumberDataPoint, value: int | float) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        point.as_int = value
    else:
        point.as_double = float(value)


def _fill_metric(target: metrics_pb2.Metric, metric, start: int, now: int) -> None:
    target.name, target.description, target.unit = metric.name, metric.description, metric.unit
    if metric.kind is MetricKind.HISTOGRAM:
        data = target.histogram
        data.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        for p in metric.points:
            point = data.data_points.add(
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=p.count,
                sum=p.sum,
                bucket_counts=p.bucket_counts,
                explicit_bounds=p.bounds,
            )
            _fill_attributes(point.attributes, p.attributes.items())
        return
    if metric.kind is MetricKind.SUM:
        data = target.sum
        data.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        data.is_monotonic = metric.monotonic
    else:
        data = target.gauge
        data.SetInParent()  # a gauge with no points is still a gauge
    for p in metric.points:
        point = data.data_points.add(time_unix_nano=now)
        if metric.kind is MetricKind.SUM:
            point.start_time_unix_nano = start
        _fill_number_point(point, p.value)
        _fill_attributes(point.attributes, p.attributes.items())


def metrics_request(batches: Iterable[MetricBatch]) -> ExportMetricsServiceRequest:
    """The official ExportMetricsServiceRequest for the batches, grouped by (resource, scope)."""
    request = ExportMetricsServiceRequest()
    for resource, scopes in _group(batches):
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.CopyFrom(_resource_message(resource))
        for scope, scope_batches in scopes.items():
            scope_metrics = resource_metrics.scope_metrics.add()
            scope_metrics.scope.CopyFrom(_scope_message(scope))
            for batch in scope_batches:
                for metric in batch.metrics:
                    _fill_metric(
                        scope_metrics.metrics.add(),
                        metric,
                        batch.start_time_unix_nano,
                        batch.time_unix_nano,
                    )
    return request


def encode_metrics_request(batches: Iterable[MetricBatch]) -> bytes:
    return metrics_request(batches).SerializeToString()


def log_item_count(batch: LogBatch) -> int:
    return len(batch.records)


def metric_item_count(batch: MetricBatch) -> int:
    """Items are data points, as the collector counts them."""
    return sum(len(metric.points) for metric in batch.metrics)


# Spans are encoded from columns (signals.otlp_spans); the row form is turned into columns first.
_span_attributes = _AttributeEncoder(bytes(((9 << 3) | _LEN,)))
_spans = SpanEncoder(_span_attributes.fields)


@dataclass(slots=True)
class _SpanRows:
    """One resource's rows of a column batch: the unit the request's nesting groups."""

    resource: Resource
    scope: str
    columns: SpanColumns
    rows: np.ndarray


def as_columns(batch: SpanBatch | SpanColumns) -> SpanColumns:
    return batch if isinstance(batch, SpanColumns) else SpanColumns.from_batch(batch)


def _span_rows(batches: Iterable[SpanBatch | SpanColumns]) -> list[_SpanRows]:
    out = []
    for batch in batches:
        columns = as_columns(batch)
        out += [_SpanRows(resource, columns.scope, columns, rows) for resource, rows in columns.by_resource()]
    return out


def _encode_span_rows(parts: list[_SpanRows], out: list) -> None:
    """Appends tagged ScopeSpans.spans fields, one per span, to out (views of the encoder's
    scratch buffer, valid until the request is joined)."""
    for part in parts:
        out += _spans.encode(part.columns, part.rows)


def encode_traces_request(batches: Iterable[SpanBatch | SpanColumns]) -> bytes:
    """Serialized ExportTraceServiceRequest for the batches, grouped by (resource, scope)."""
    parts = _span_rows(batches)
    _spans.begin()
    return _encode_export_request(parts, _encode_span_rows)


def traces_request(batches: Iterable[SpanBatch | SpanColumns]) -> ExportTraceServiceRequest:
    """The official ExportTraceServiceRequest for the batches."""
    return ExportTraceServiceRequest.FromString(encode_traces_request(batches))


def span_item_count(batch: SpanBatch | SpanColumns) -> int:
    return len(batch) if isinstance(batch, SpanColumns) else len(batch.spans)
