"""The interface every sink implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from otelbpf.signals.model import LogBatch, MetricBatch, ProfileBatch, SpanBatch, SpanColumns


@runtime_checkable
class Sink(Protocol):
    """A destination for batches. export_* must not block on I/O: sinks enqueue and return."""

    name: str

    def export_logs(self, batch: LogBatch) -> None: ...

    def export_metrics(self, batch: MetricBatch) -> None: ...

    def export_spans(self, batch: SpanBatch | SpanColumns) -> None: ...

    def export_profiles(self, batch: ProfileBatch) -> None:
        """A sink that does not keep profiles ignores them."""
        ...

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush what is queued (within timeout), then stop."""
        ...
