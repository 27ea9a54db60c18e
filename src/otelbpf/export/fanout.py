"""A sink that forwards every batch to several sinks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from otelbpf.export.base import Sink
from otelbpf.signals.model import LogBatch, MetricBatch, ProfileBatch, SpanBatch

log = logging.getLogger(__name__)


class FanoutSink:
    """One failing sink must not starve the others, so errors are logged and skipped."""

    name = "fanout"

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def export_logs(self, batch: LogBatch) -> None:
        for sink in self.sinks:
            try:
                sink.export_logs(batch)
            except Exception:
                log.exception("sink %s failed to take a log batch", sink.name)

    def export_metrics(self, batch: MetricBatch) -> None:
        for sink in self.sinks:
            try:
                sink.export_metrics(batch)
            except Exception:
                log.exception("sink %s failed to take a metric batch", sink.name)

    def export_spans(self, batch: SpanBatch) -> None:
        for sink in self.sinks:
            try:
                sink.export_spans(batch)
            except Exception:
                log.exception("sink %s failed to take a span batch", sink.name)

    def export_profiles(self, batch: ProfileBatch) -> None:
        for sink in self.sinks:
            try:
                sink.export_profiles(batch)
            except Exception:
                log.exception("sink %s failed to take a profile", sink.name)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Shuts the sinks down one after the other within one shared deadline."""
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            try:
                sink.shutdown(max(deadline - time.monotonic(), 0.0))
            except Exception:
                log.exception("sink %s failed to shut down", sink.name)
