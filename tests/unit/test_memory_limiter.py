import logging

import pytest

from otelbpf.config import ConfigError, load_config
from otelbpf.pipeline.memory_limiter import MemoryLimiter, resident_bytes
from otelbpf.signals.model import LogBatch, LogRecord, MetricBatch, Resource, SpanBatch
from otelbpf.signals.registry import Registry

MIB = 1 << 20


class Kept:
    name = "kept"

    def __init__(self):
        self.logs, self.metrics, self.spans = [], [], []

    def export_logs(self, batch):
        self.logs.append(batch)

    def export_metrics(self, batch):
        self.metrics.append(batch)

    def export_spans(self, batch):
        self.spans.append(batch)

    def shutdown(self, timeout=5.0):
        pass


def logs(n: int) -> LogBatch:
    return LogBatch(Resource(), "s", [LogRecord(i, "process.exec") for i in range(n)])


def test_batches_above_the_soft_limit_are_refused_and_counted_until_memory_falls(caplog):
    used = [100 * MIB]
    kept, registry = Kept(), Registry()
    limiter = MemoryLimiter(kept, registry, 200 * MIB, 40 * MIB, check_interval=0, measure=lambda: used[0])
    limiter.export_logs(logs(23))
    used[0] = 170 * MIB  # above the soft limit (160 MiB), below the limit
    with caplog.at_level(logging.WARNING):
        limiter.export_logs(logs(7))
        limiter.export_spans(SpanBatch(Resource(), "s", []))
        limiter.export_metrics(MetricBatch(Resource(), "otelbpf.agent", 0, 1, []))  # self-telemetry passes
    assert [len(b.records) for b in kept.logs] == [23] and len(kept.metrics) == 1
    assert registry.counter("otelbpf.processor.refused").value(processor="memory_limiter", signal="logs") == 7
    assert "soft memory limit of 160 MiB" in caplog.text
    used[0] = 150 * MIB
    limiter.export_logs(logs(5))
    assert [len(b.records) for b in kept.logs] == [23, 5] and not limiter.refusing


def test_memory_is_read_once_per_interval():
    reads = []
    limiter = MemoryLimiter(Kept(), Registry(), 200 * MIB, measure=lambda: reads.append(1) or MIB,
                            check_interval=3600)
    for _ in range(41):
        limiter.export_logs(logs(1))
    assert len(reads) == 1


def test_the_real_measure_is_this_process_resident_memory():
    assert 10 * MIB < resident_bytes() < 4096 * MIB


def test_limits_are_validated():
    with pytest.raises(ValueError, match="below the limit"):
        MemoryLimiter(Kept(), Registry(), 100 * MIB, 100 * MIB)
    with pytest.raises(ConfigError, match=r"memory_spike_mib: .*below memory_limit_mib"):
        load_config(None, {"OTELBPF_MEMORY_LIMIT_MIB": "128", "OTELBPF_MEMORY_SPIKE_MIB": "128"}, {})
