"""Decoded OTLP export requests -> store rows, as column lists per table.

One function per signal; each walks resource -> scope -> item once and appends to plain
lists (the writer turns them into numpy columns at flush). Attributes become JSON text; the
few that views and queries need are promoted to columns (see schema).
"""

from __future__ import annotations

import base64
import json

from google.protobuf.message import Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otelbpf.store.schema import LOGS, METRIC_POINTS, SPANS, Table

Columns = dict[str, list]

SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUS_CODES = ("unset", "ok", "error")


def any_value(v: AnyValue):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def attributes(kvs) -> dict:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _json(attrs: dict) -> str:
    return json.dumps(attrs, separators=(",", ":"), ensure_ascii=False)


def empty(table: Table) -> Columns:
    return {name: [] for name in table.column_names}


def span_kind(kind: int) -> str:
    return SPAN_KINDS[kind] if 0 <= kind < len(SPAN_KINDS) else "unspecified"


def status_code(code: int) -> str:
    return STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else "unset"


def http_columns(attrs: dict) -> tuple:
    """The span attributes promoted to columns: (http_method, http_route, http_status)."""
    status = attrs.get("http.response.status_code", attrs.get("http.status_code"))
    return (attrs.get("http.request.method", attrs.get("http.method")), attrs.get("http.route"),
            int(status) if isinstance(status, int | str) and str(status).isdigit() else None)


def span_rows(request: Message) -> Columns:
    out = empty(SPANS)
    for rs in request.resource_spans:
        res = attributes(rs.resource.attributes)
        service, res_json = str(res.get("service.name", "")), _json(res)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for span in ss.spans:
                attrs = attributes(span.attributes)
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                row = (
                    start, end, max(end - start, 0), span.trace_id.hex(), span.span_id.hex(),
                    span.parent_span_id.hex(), service, span.name, span_kind(span.kind),
                    status_code(span.status.code), span.status.message or None, *http_columns(attrs),
                    scope, _json(attrs), res_json,
                )
                for column, value in zip(out.values(), row):
                    column.append(value)
    return out


def log_rows(request: Message) -> Columns:
    out = empty(LOGS)
    for rl in request.resource_logs:
        res = attributes(rl.resource.attributes)
        service, res_json = str(res.get("service.name", "")), _json(res)
        for sl in rl.scope_logs:
            scope = sl.scope.name
            for r in sl.log_records:
                body = any_value(r.body) if r.HasField("body") else None
                row = (
                    r.time_unix_nano or r.observed_time_unix_nano, service, scope, r.event_name or None,
                    r.severity_number, r.severity_text or None,
                    body if body is None or isinstance(body, str) else json.dumps(body),
                    r.trace_id.hex() or None, r.span_id.hex() or None,
                    _json(attributes(r.attributes)), res_json,
                )
                for column, value in zip(out.values(), row):
                    column.append(value)
    return out


def metric_rows(request: Message) -> Columns:
    out = empty(METRIC_POINTS)
    for rm in request.resource_metrics:
        res = attributes(rm.resource.attributes)
        service, res_json = str(res.get("service.name", "")), _json(res)
        for sm in rm.scope_metrics:
            scope = sm.scope.name
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                for p in getattr(m, kind).data_points:
                    value = count = total = bounds = buckets = None
                    if kind in ("sum", "gauge"):
                        value = float(getattr(p, p.WhichOneof("value") or "as_double"))
                    else:
                        count, total = p.count, p.sum
                        if kind == "histogram":
                            bounds, buckets = list(p.explicit_bounds), list(p.bucket_counts)
                    row = (
                        p.time_unix_nano, p.start_time_unix_nano, service, scope, m.name, m.unit or None,
                        kind, value, count or 0, total, bounds, buckets,
                        _json(attributes(p.attributes)), res_json,
                    )
                    for column, v in zip(out.values(), row):
                        column.append(v)
    return out


ROWS_BY_SIGNAL = {"traces": (SPANS, span_rows), "logs": (LOGS, log_rows), "metrics": (METRIC_POINTS, metric_rows)}
