"""The HTTP sensor as the agent runs it, for tests that read its spans as row batches: its
column batches go through the agent's span path (enrichment stage, span metrics) and arrive
as one SpanBatch per process."""

from __future__ import annotations

from collections.abc import Callable

from otelbpf.agent import span_path
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.stage import Enrichment
from otelbpf.pipeline.span_metrics import SpanMetrics
from otelbpf.sensors.http import HttpSensor
from otelbpf.signals.model import Resource, SpanBatch, SpanColumns
from otelbpf.signals.registry import Registry


def http_sensor(emit: Callable[[SpanBatch], None], registry: Registry, resource: Resource, **options) -> HttpSensor:
    def batches(columns: SpanColumns) -> None:
        for batch in columns.to_batches():
            emit(batch)
    return HttpSensor(span_path(Enrichment(IdentityTable(resource)), SpanMetrics(registry), batches), registry,
                      **options)
