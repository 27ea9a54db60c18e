"""A memory limiter in front of the sinks, as the OpenTelemetry Collector's memory_limiter
processor does it: when the agent's resident memory reaches the soft limit (the limit less
the spike allowance), batches of events, spans and profiles are refused and counted
(otelbpf.processor.refused{processor, signal}) until it falls below again; at the hard
limit a garbage collection is forced too. The agent's own metrics always pass: they are
small, and they are how a user sees the refusals.

Memory is read from /proc/self/statm at most once per check interval, so the check costs
one clock read per batch.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from otelbpf.signals.model import LogBatch, MetricBatch, ProfileBatch, SpanBatch, SpanColumns
from otelbpf.signals.registry import Registry

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between two reads of the resident memory
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class MemoryLimiter:
    """Wraps the sink (any object with the export_* methods and shutdown)."""

    name = "memory_limiter"

    def __init__(self, sink: Any, registry: Registry, limit_bytes: int, spike_bytes: int | None = None,
                 check_interval: float = CHECK_INTERVAL, measure: Callable[[], int] = resident_bytes) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"memory limit must be positive, got {limit_bytes} bytes")
        spike = limit_bytes // 5 if spike_bytes is None else spike_bytes
        if not 0 <= spike < limit_bytes:
            raise ValueError(f"memory spike allowance {spike} must be below the limit {limit_bytes}")
        self.sink = sink
        self.limit, self.soft_limit = limit_bytes, limit_bytes - spike
        self._check_interval, self._measure = check_interval, measure
        self._next_check = 0.0
        self.refusing = False
        self._last = 0
        self._refused = registry.counter("otelbpf.processor.refused",
                                         "Items refused because the agent's memory was above its soft limit", "{item}")
        registry.gauge("otelbpf.agent.memory.resident", "The agent's resident memory, as the limiter last read it",
                       "By", lambda: [({}, self._last)])

    def _admit(self, signal: str, items: int) -> bool:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            self._check()
        if self.refusing and items:
            self._refused.add(items, {"processor": self.name, "signal": signal})
        return not self.refusing

    def _check(self) -> None:
        used = self._last = self._measure()
        if used >= self.limit:
            gc.collect()
            used = self._last = self._measure()
        if not self.refusing and used >= self.soft_limit:
            self.refusing = True
            log.warning("the agent uses %d MiB, above its soft memory limit of %d MiB: events, spans and profiles "
                        "are refused and counted (otelbpf.processor.refused) until it falls below. Raise "
                        "memory_limit_mib if the host has room, or select fewer processes or sensors.",
                        used >> 20, self.soft_limit >> 20)
        elif self.refusing and used < self.soft_limit:
            self.refusing = False
            log.warning("the agent's memory is below its soft limit again (%d MiB): batches flow again", used >> 20)

    def export_logs(self, batch: LogBatch) -> None:
        if self._admit("logs", len(batch.records)):
            self.sink.export_logs(batch)

    def export_spans(self, batch: SpanBatch | SpanColumns) -> None:
        if self._admit("traces", len(batch) if isinstance(batch, SpanColumns) else len(batch.spans)):
            self.sink.export_spans(batch)

    def export_profiles(self, batch: ProfileBatch) -> None:
        if self._admit("profiles", len(batch.profile.counts)):
            self.sink.export_profiles(batch)

    def export_metrics(self, batch: MetricBatch) -> None:
        self.sink.export_metrics(batch)

    def shutdown(self, timeout: float = 5.0) -> None:
        self.sink.shutdown(timeout)
