"""Batched writes: rows are queued in memory and flushed as one transaction per interval.

Two ways in: the agent's own batches, in process (store.sink.StoreSink -> add), and OTLP
requests from programs with an SDK, which the receiver decodes and hands to `handle`. The
queue is bounded: when it is full the rows are refused (StoreFull, counted): the receiver
answers with a retryable error (HTTP 503 / gRPC UNAVAILABLE with a retry delay), so the
sender keeps the data and retries instead of it being lost here.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
from google.protobuf.message import Message

from otelbpf.pipeline.service_map import ServiceMap
from otelbpf.signals.registry import Registry
from otelbpf.store import retention
from otelbpf.store.db import Columns, Store, StoreError
from otelbpf.store.otlp_rows import ROWS_BY_SIGNAL
from otelbpf.store.schema import FLOWS, METRIC_POINTS, SERVICE_EDGES, Table

log = logging.getLogger(__name__)


class StoreFull(StoreError):
    """The writer's queue has no room for these rows now; retry_after: seconds to wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreWriter:
    def __init__(self, store: Store, registry: Registry | None = None, flush_interval: float = 1.0,
                 max_pending_rows: int = 500_000, retention_age_s: float | None = None,
                 retention_bytes: int | None = None, retention_interval: float = 60.0) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.max_pending_rows = max_pending_rows
        self.retention_age_s, self.retention_bytes = retention_age_s, retention_bytes
        self.retention_interval = retention_interval
        self._pending: list[tuple[Table, Columns]] = []
        self._pending_rows = 0
        self._network = ServiceMap()  # flows and service-map edges from the network metrics
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        registry = registry or Registry()
        self._written = registry.counter("otelbpf.store.rows_written", "Rows committed to the local store", "{row}")
        self._refused = registry.counter("otelbpf.store.rows_refused",
                                         "Rows refused because the store's queue was full (the sender retries)",
                                         "{row}")
        self._failed = registry.counter("otelbpf.store.rows_failed", "Rows lost to a failed store write", "{row}")
        registry.gauge("otelbpf.store.queue_rows", "Rows waiting for the next store flush", "{row}",
                       lambda: [({}, self._pending_rows)])

    # -- intake ---------------------------------------------------------------------------
    def handle(self, signal: str, request: Message) -> None:
        """OtlpReceiver handler: decode the request into rows and queue them."""
        table, to_rows = ROWS_BY_SIGNAL[signal]
        columns = to_rows(request)
        if table is METRIC_POINTS:
            self.add_metric_points(columns)
        else:
            self.append(table, columns)

    def add_metric_points(self, columns: Columns, attributes: Sequence[Mapping] | None = None) -> None:
        """Queues metric points with the flows and service-map edges derived from them;
        attributes: each point's attributes, when the caller has them (else parsed from JSON)."""
        self._check_room(len(columns[METRIC_POINTS.column_names[0]]))  # before the derivation moves on
        flows, edges = self._network.derive(columns, attributes)
        self.append_all([(METRIC_POINTS, columns), (FLOWS, flows), (SERVICE_EDGES, edges)])

    def append(self, table: Table, columns: Columns) -> None:
        self.append_all([(table, columns)])

    def append_all(self, batches: list[tuple[Table, Columns]]) -> None:
        """Queues every batch, or none (StoreFull) when the queue would overflow."""
        counted = [(t, c, len(c[t.column_names[0]])) for t, c in batches]
        rows = sum(n for *_, n in counted)
        if not rows:
            return
        with self._mutex:
            if self._pending_rows + rows > self.max_pending_rows:
                for t, _, n in counted:
                    if n:
                        self._refused.add(n, table=t.name)
                raise StoreFull(f"local store queue full ({self._pending_rows} rows); retry later",
                                retry_after=max(self.flush_interval, 1.0))
            self._pending.extend((t, c) for t, c, n in counted if n)
            self._pending_rows += rows

    def _check_room(self, rows: int) -> None:
        with self._mutex:
            if self._pending_rows + rows > self.max_pending_rows:
                self._refused.add(rows, table=METRIC_POINTS.name)
                raise StoreFull(f"local store queue full ({self._pending_rows} rows); retry later",
                                retry_after=max(self.flush_interval, 1.0))

    # -- flushing -------------------------------------------------------------------------
    def flush(self) -> int:
        """Writes what is queued as one transaction; returns the rows written."""
        with self._mutex:
            batches, self._pending, self._pending_rows = self._pending, [], 0
        if not batches:
            return 0
        parts: dict[str, tuple[Table, dict[str, list]]] = {}
        for table, columns in batches:  # one INSERT per table per flush
            _, into = parts.setdefault(table.name, (table, {c: [] for c in table.column_names}))
            for name in table.column_names:
                into[name].append(columns[name])
        merged: list[tuple[Table, Columns]] = [
            (table, {name: _joined(columns, table.numpy_dtype(name)) for name, columns in by_name.items()})
            for table, by_name in parts.values()]
        rows = sum(len(c[t.column_names[0]]) for t, c in merged)
        try:
            written = self.store.write(merged)
        except Exception:
            log.exception("store write of %d rows failed; they are dropped", rows)
            self._failed.add(rows)
            return 0
        self._written.add(written)
        return written

    def start(self) -> StoreWriter:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_retention = time.monotonic()
        while not self._stop.wait(self.flush_interval):
            self.flush()
            if time.monotonic() >= next_retention:
                self._apply_retention()
                next_retention = time.monotonic() + self.retention_interval

    def _apply_retention(self) -> None:
        if not (self.retention_age_s or self.retention_bytes):
            return
        try:
            retention.apply(self.store, self.retention_age_s, self.retention_bytes)
        except Exception:  # retention must not stop the writes
            log.exception("store retention failed")

    def close(self, timeout: float = 5.0) -> None:
        """Stops the flush thread, writes what is left and closes the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        self.store.close()


def _joined(parts: list, dtype) -> list | np.ndarray:
    """One column of a flush from its batches' parts: lists (row builders) are extended, numpy
    columns (from column batches, scalars only) concatenated without a step per row."""
    if all(isinstance(p, list) for p in parts):
        return list(itertools.chain.from_iterable(parts)) if len(parts) > 1 else parts[0]
    return np.concatenate([p if isinstance(p, np.ndarray) else np.asarray(p, dtype) for p in parts]) \
        if len(parts) > 1 else parts[0]
