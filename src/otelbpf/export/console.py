"""Sinks for files and terminals: JSON lines for machines, one compact line per event for people.

Writes happen on the caller's thread under a lock: a local file or terminal is fast enough
that a queue would only add a place to lose data.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from typing import IO

from otelbpf.signals.model import AttrValue, Attributes, LogBatch, MetricBatch, MetricKind, SpanBatch


def _json_value(value: AttrValue) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _json_attributes(attributes: Attributes) -> dict[str, object]:
    return {key: _json_value(value) for key, value in attributes.items()}


def _iso(time_unix_nano: int) -> str:
    seconds, nanos = divmod(time_unix_nano, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


class _StreamSink:
    def __init__(self, path: str | None = None, stream: IO[str] | None = None) -> None:
        """Writes to path (appending), or to stream, or to stdout."""
        self._owned = path is not None
        self._stream = open(path, "a", encoding="utf-8") if path else (stream or sys.stdout)
        self._lock = threading.Lock()

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        with self._lock:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._owned:
                self._stream.close()
            else:
                self._stream.flush()


class JsonLinesSink(_StreamSink):
    """One JSON object per log record, per metric point and per span."""

    name = "jsonl"

    def export_logs(self, batch: LogBatch) -> None:
        resource = _json_attributes(batch.resource.as_dict())
        self._write([
            json.dumps({
                "time": _iso(r.time_unix_nano),
                "time_unix_nano": r.time_unix_nano,
                "event_name": r.event_name,
                "severity": r.severity.name,
                "severity_number": int(r.severity),
                "body": r.body,
                "attributes": _json_attributes(r.attributes),
                "resource": resource,
                "scope": batch.scope,
            }, separators=(",", ":"))
            for r in batch.records
        ])

    def export_metrics(self, batch: MetricBatch) -> None:
        resource = _json_attributes(batch.resource.as_dict())
        lines = []
        for metric in batch.metrics:
            for p in metric.points:
                entry = {
                    "time": _iso(batch.time_unix_nano),
                    "time_unix_nano": batch.time_unix_nano,
                    "start_time_unix_nano": batch.start_time_unix_nano,
                    "metric": metric.name,
                    "kind": metric.kind.value,
                    "unit": metric.unit,
                    "attributes": _json_attributes(p.attributes),
                    "resource": resource,
                    "scope": batch.scope,
                }
                if metric.kind is MetricKind.HISTOGRAM:
                    entry.update(count=p.count, sum=p.sum, bounds=list(p.bounds),
                                 bucket_counts=list(p.bucket_counts))
                else:
                    entry["value"] = p.value
                lines.append(json.dumps(entry, separators=(",", ":")))
        self._write(lines)

    def export_spans(self, batch: SpanBatch) -> None:
        resource = _json_attributes(batch.resource.as_dict())
        self._write([
            json.dumps({
                "time": _iso(s.start_time_unix_nano),
                "trace_id": s.trace_id.hex(),
                "span_id": s.span_id.hex(),
                "parent_span_id": s.parent_span_id.hex(),
                "name": s.name,
                "kind": s.kind.name,
                "start_time_unix_nano": s.start_time_unix_nano,
                "end_time_unix_nano": s.end_time_unix_nano,
                "status": s.status_code.name,
                "status_message": s.status_message,
                "attributes": _json_attributes(s.attributes),
                "resource": resource,
                "scope": batch.scope,
            }, separators=(",", ":"))
            for s in batch.spans
        ])


def _compact(attributes: Attributes) -> str:
    parts = []
    for key, value in attributes.items():
        # Short but unambiguous: "process.user.id" -> "user.id", "process.pid" -> "pid".
        short = key.removeprefix("otelbpf.").removeprefix("process.")
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        text = str(value)
        parts.append(f"{short}={json.dumps(text) if (' ' in text or not text) else text}")
    return " ".join(parts)


class ConsoleSink(_StreamSink):
    """One line per event: `12:04:05.123 INFO  process.exec pid=42 executable.name=bash ...`."""

    name = "console"

    def export_logs(self, batch: LogBatch) -> None:
        lines = []
        for r in batch.records:
            clock = dt.datetime.fromtimestamp(r.time_unix_nano / 1e9).strftime("%H:%M:%S.%f")[:-3]
            body = f" {r.body}" if r.body else ""
            lines.append(f"{clock} {r.severity.name:<5} {r.event_name}{body} {_compact(r.attributes)}".rstrip())
        self._write(lines)

    def export_metrics(self, batch: MetricBatch) -> None:
        lines = []
        for metric in batch.metrics:
            for p in metric.points:
                value = f"count={p.count} sum={p.sum:g}" if metric.kind is MetricKind.HISTOGRAM else f"{p.value}"
                lines.append(f"metric {metric.name} {value} {_compact(p.attributes)}".rstrip())
        self._write(lines)

    def export_spans(self, batch: SpanBatch) -> None:
        lines = []
        for s in batch.spans:
            clock = dt.datetime.fromtimestamp(s.start_time_unix_nano / 1e9).strftime("%H:%M:%S.%f")[:-3]
            ms = (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
            lines.append(f"{clock} SPAN  {s.kind.name.lower()} {s.name} {ms:.3f}ms {_compact(s.attributes)}".rstrip())
        self._write(lines)
