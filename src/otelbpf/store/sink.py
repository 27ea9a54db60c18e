"""The embedded default's store sink: the agent's own batches go into the local store in
process, as rows (store.model_rows), with no OTLP round trip through its own receiver."""

from __future__ import annotations

import logging
import time

from otelbpf.signals.model import LogBatch, MetricBatch, ProfileBatch, SpanBatch, SpanColumns
from otelbpf.store.model_rows import RowBuilder
from otelbpf.store.profile_rows import profile_rows
from otelbpf.store.schema import LOGS, PROFILE_SAMPLES, SPANS
from otelbpf.store.writer import StoreFull, StoreWriter

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL = 60.0  # seconds between two warnings that the store's queue is full


class StoreSink:
    """A Sink over a StoreWriter. export_* only builds rows and queues them; the writer's
    thread flushes. When the writer's queue is full the batch is refused, counted there as
    otelbpf.store.rows_refused, and said at most once a minute: no sender is left to retry."""

    name = "store"

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self._rows = RowBuilder()
        self._last_warning = -REFUSAL_LOG_INTERVAL

    def export_spans(self, batch: SpanBatch | SpanColumns) -> None:
        if isinstance(batch, SpanColumns):
            self._queue(lambda: self.writer.append(SPANS, self._rows.span_columns(batch)))
        else:
            self._queue(lambda: self.writer.append(SPANS, self._rows.spans(batch)))

    def export_logs(self, batch: LogBatch) -> None:
        self._queue(lambda: self.writer.append(LOGS, self._rows.logs(batch)))

    def export_metrics(self, batch: MetricBatch) -> None:
        self._queue(lambda: self.writer.add_metric_points(*self._rows.metrics(batch)))

    def export_profiles(self, batch: ProfileBatch) -> None:
        service = str(dict(batch.resource.attributes).get("service.name", ""))
        self._queue(lambda: self.writer.append(PROFILE_SAMPLES, profile_rows(batch.profile, service)))

    def _queue(self, add) -> None:
        try:
            add()
        except StoreFull as refusal:
            now = time.monotonic()
            if now - self._last_warning >= REFUSAL_LOG_INTERVAL:
                self._last_warning = now
                log.warning("local store: %s; rows are dropped (otelbpf.store.rows_refused) until the "
                            "writer catches up: a larger store.flush_interval or a faster disk helps", refusal)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Nothing of its own to flush: the agent closes the writer after the last sensor."""
