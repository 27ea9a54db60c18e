"""Sinks for files and terminals: JSON lines for machines, one short line per event for people.

Writes happen on the caller's thread under a lock: a local file or terminal is fast enough
that a queue would only add a place to lose data.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
from typing import IO

from otelbpf.export.lines import clock, compact_attributes, cut, format_line
from otelbpf.signals.model import (
    Attributes,
    AttrValue,
    LogBatch,
    MetricBatch,
    MetricKind,
    ProfileBatch,
    SpanBatch,
    SpanColumns,
)


def _json_value(value: AttrValue) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _text(value: AttrValue) -> str:
    """An attribute value in a compact line: as str() has it, bytes in hex as in JSON lines."""
    return bytes(value).hex() if isinstance(value, bytes | bytearray | memoryview) else str(value)


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

    def export_profiles(self, batch: ProfileBatch) -> None:
        """Profiles are flame graphs, not lines: they go to the store, pprof files and OTLP."""

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

    def export_spans(self, batch: SpanBatch | SpanColumns) -> None:
        if isinstance(batch, SpanColumns):  # debugging sinks read span by span
            for rows in batch.to_batches():
                self.export_spans(rows)
            return
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


NOT_A_TERMINAL_WIDTH = 160
COMPACT_ANCESTORS = 1   # the parent only
COMPACT_ARGS = 8        # the first arguments of an exec


def _width(stream: IO[str]) -> int:
    """The terminal's width, or NOT_A_TERMINAL_WIDTH when the stream is a file or a pipe."""
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        pass
    return NOT_A_TERMINAL_WIDTH


class ConsoleSink(_StreamSink):
    """People reading a terminal. view="compact" (the default), in the spirit of `tetra getevents
    -o compact`: one line per event, `name[pid] <- parent`, the first arguments, the exit code
    or signal, cut to the terminal's width; spans as one line each; no metrics (they are in the
    UI, the store and on /metrics). view="full": every attribute of every event, span and
    metric point, however long."""

    name = "console"

    def __init__(self, path: str | None = None, stream: IO[str] | None = None, view: str = "compact") -> None:
        if view not in ("compact", "full"):
            raise ValueError(f"console view must be compact or full, not {view!r}")
        super().__init__(path, stream)
        self._full = view == "full"

    def export_logs(self, batch: LogBatch) -> None:
        if self._full:
            lines = []
            for r in batch.records:
                body = f" {r.body}" if r.body else ""
                lines.append(f"{clock(r.time_unix_nano)} {r.severity.name:<5} {r.event_name}{body} "
                             f"{compact_attributes(r.attributes)}".rstrip())
        else:
            width = _width(self._stream)
            lines = [format_line(r.time_unix_nano, r.severity.name, r.event_name, r.attributes,
                                 ancestors=COMPACT_ANCESTORS, max_args=COMPACT_ARGS, width=width)
                     for r in batch.records]
        self._write(lines)

    def export_metrics(self, batch: MetricBatch) -> None:
        if not self._full:
            return
        lines = []
        for metric in batch.metrics:
            for p in metric.points:
                value = f"count={p.count} sum={p.sum:g}" if metric.kind is MetricKind.HISTOGRAM else f"{p.value}"
                lines.append(f"metric {metric.name} {value} {compact_attributes(p.attributes)}".rstrip())
        self._write(lines)

    def export_spans(self, batch: SpanBatch | SpanColumns) -> None:
        if isinstance(batch, SpanColumns):  # debugging sinks read span by span
            for rows in batch.to_batches():
                self.export_spans(rows)
            return
        lines = []
        width = None if self._full else _width(self._stream)
        service = batch.resource.as_dict().get("service.name", "?")
        pid = batch.resource.as_dict().get("process.pid", "?")
        for s in batch.spans:
            ms = (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
            if self._full:
                detail = compact_attributes(s.attributes)
            else:
                a = s.attributes
                status = a.get("http.response.status_code", a.get("error.type", ""))
                where = f"{_text(a.get('server.address', ''))}:{_text(a.get('server.port', ''))}"
                detail = f"{_text(service)}[{_text(pid)}]  {_text(status)} {where}"
            lines.append(cut(f"{clock(s.start_time_unix_nano)} SPAN  {s.kind.name.lower():<6} {s.name} "
                             f"{ms:.3f}ms {detail}".rstrip(), width))
        self._write(lines)
