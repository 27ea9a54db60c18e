from __future__ import annotations

import threading

import pytest

from otelbpf.signals.model import MetricKind, Resource
from otelbpf.signals.registry import Registry


def test_counter_accumulates_per_attribute_set_with_dotted_keys():
    registry = Registry()
    counter = registry.counter("otelbpf.process.execs", "Processes started", "{process}")
    counter.add(1, {"process.executable.name": "bash"})
    counter.add(2, {"process.executable.name": "bash"})
    counter.add(5, {"process.executable.name": "ls"})
    counter.add(7, signal="logs", exporter="otlp")
    counter.add(1, {"signal": "logs"}, exporter="otlp")
    assert counter.value({"process.executable.name": "bash"}) == 3
    assert counter.value(exporter="otlp", signal="logs") == 8
    assert counter.value({"process.executable.name": "sh"}) == 0
    assert registry.counter("otelbpf.process.execs") is counter
    with pytest.raises(ValueError, match="only goes up"):
        counter.add(-1)


def test_name_clash_between_kinds_is_refused():
    registry = Registry()
    registry.counter("x")
    with pytest.raises(ValueError, match="already registered as a Counter"):
        registry.up_down_counter("x")


def test_concurrent_adds_are_not_lost():
    counter = Registry().counter("c")

    def work():
        for _ in range(10_001):
            counter.add(1, k="v")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.value(k="v") == 40_004


def test_snapshot_is_cumulative_from_registry_creation():
    registry = Registry()
    registry.counter("c", "d", "1").add(23, a="b")
    registry.up_down_counter("u").add(-4)
    registry.gauge("g", "d", "By", lambda: [({"q": "logs"}, 11)])
    histogram = registry.histogram("h", "d", "s", [0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.record(value, {"http.request.method": "GET"})
    with pytest.raises(ValueError, match="strictly increasing"):
        registry.histogram("h2", "d", "s", [1.0, 0.5])

    first = registry.snapshot(Resource.of({"host.name": "n"}), "otelbpf")
    second = registry.snapshot(Resource.of({"host.name": "n"}), "otelbpf")
    assert first.start_time_unix_nano == second.start_time_unix_nano == registry.start_time_unix_nano
    assert first.time_unix_nano <= second.time_unix_nano
    metrics = {m.name: m for m in first.metrics}
    assert metrics["c"].kind is MetricKind.SUM and metrics["c"].monotonic
    assert metrics["c"].points[0].attributes == {"a": "b"} and metrics["c"].points[0].value == 23
    assert not metrics["u"].monotonic and metrics["u"].points[0].value == -4
    assert metrics["g"].kind is MetricKind.GAUGE and metrics["g"].points[0].value == 11
    point = metrics["h"].points[0]
    # A value equal to a bound counts in that bound's bucket (OTLP upper-inclusive buckets).
    assert point.bucket_counts == (2, 2, 1) and point.count == 5 and point.sum == pytest.approx(4.65)


def test_record_many_buckets_like_record():
    import numpy as np

    values = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 7.0, 100.0])
    one, many = Registry(), Registry()
    h1 = one.histogram("h", "", "s", [1.0, 2.0, 5.0])
    for v in values:
        h1.record(float(v), {"k": "v"})
    many.histogram("h", "", "s", [1.0, 2.0, 5.0]).record_many(values, {"k": "v"})
    assert h1.points() == many.histogram("h", "", "s", [1.0, 2.0, 5.0]).points()
