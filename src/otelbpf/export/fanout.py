"""A sink that forwards every batch to several sinks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from otelbpf.export.base import Sink
from otelbpf.signals.model import LogBatch, MetricBatch, ProfileBatch, SpanBatch, SpanColumns

log = logging.getLogger(__name__)


class FanoutSink:
    """One failing sink must not starve the others, so errors are logged and skipped."""

    name = "fanout"

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def _to_each(self, method: str, batch: object, what: str) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(batch)
            except Exception:
                log.exception("sink %s failed to take %s", sink.name, what)

    def export_logs(self, batch: LogBatch) -> None:
        self._to_each("export_logs", batch, "a log batch")

    def export_metrics(self, batch: MetricBatch) -> None:
        self._to_each("export_metrics", batch, "a metric batch")

    def export_spans(self, batch: SpanBatch | SpanColumns) -> None:
        self._to_each("export_spans", batch, "a span batch")

    def export_profiles(self, batch: ProfileBatch) -> None:
        self._to_each("export_profiles", batch, "a profile")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Shuts the sinks down one after the other within one shared deadline."""
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            try:
                sink.shutdown(max(deadline - time.monotonic(), 0.0))
            except Exception:
                log.exception("sink %s failed to shut down", sink.name)
