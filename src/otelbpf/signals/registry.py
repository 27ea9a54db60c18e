"""A small thread-safe registry for the agent's own metrics (exporter, queue and sensor counters).

Each instrument keeps a dict keyed by the sorted attribute tuple; `Registry.snapshot` turns
the current values into a cumulative MetricBatch that any sink can export.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np

from otelbpf.signals.model import (
    Attributes,
    AttrValue,
    Metric,
    MetricBatch,
    MetricKind,
    MetricPoint,
    Resource,
)

AttrKey = tuple[tuple[str, AttrValue], ...]
GaugeCallback = Callable[[], list[tuple[Attributes, int | float]]]
# What instruments take: any attribute mapping (a dict[str, str] is one), read and never kept.
AttrsArg = Mapping[str, AttrValue]


def _key(attrs: AttrsArg | None, kwargs: Mapping[str, AttrValue]) -> AttrKey:
    if kwargs:
        attrs = {**attrs, **kwargs} if attrs else kwargs
    return tuple(sorted(attrs.items())) if attrs else ()


class _Instrument:
    def __init__(self, name: str, description: str, unit: str) -> None:
        self.name, self.description, self.unit = name, description, unit
        self._lock = threading.Lock()


class Counter(_Instrument):
    """Monotonic sum. `add(1, {"process.executable.name": "bash"})` or `add(1, signal="logs")`."""

    kind = MetricKind.SUM
    monotonic = True

    def __init__(self, name: str, description: str, unit: str) -> None:
        super().__init__(name, description, unit)
        self._values: dict[AttrKey, int | float] = {}

    def add(self, value: int | float, attrs: AttrsArg | None = None, **attributes: AttrValue) -> None:
        if self.monotonic and value < 0:
            raise ValueError(f"counter {self.name} only goes up; got {value}")
        key = _key(attrs, attributes)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + value

    def value(self, attrs: AttrsArg | None = None, **attributes: AttrValue) -> int | float:
        """Current value for one attribute set (0 when never added); handy in tests."""
        with self._lock:
            return self._values.get(_key(attrs, attributes), 0)

    def points(self) -> list[MetricPoint]:
        with self._lock:
            items = list(self._values.items())
        return [MetricPoint(attributes=dict(key), value=value) for key, value in items]


class UpDownCounter(Counter):
    monotonic = False


class Gauge(_Instrument):
    """Observed on each snapshot through a callback returning [(attributes, value), ...]."""

    kind = MetricKind.GAUGE
    monotonic = True

    def __init__(self, name: str, description: str, unit: str, callback: GaugeCallback) -> None:
        super().__init__(name, description, unit)
        self._callback = callback

    def points(self) -> list[MetricPoint]:
        return [MetricPoint(attributes=dict(attrs), value=value) for attrs, value in self._callback()]


class Histogram(_Instrument):
    """Explicit-bounds histogram; a value equal to a bound falls in that bound's bucket."""

    kind = MetricKind.HISTOGRAM
    monotonic = True

    def __init__(self, name: str, description: str, unit: str, bounds: Sequence[float]) -> None:
        super().__init__(name, description, unit)
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name}: bounds must be strictly increasing, got {bounds}")
        self.bounds = tuple(float(b) for b in bounds)
        # key -> [bucket counts..., count, sum]
        self._values: dict[AttrKey, list] = {}

    def record(self, value: float, attrs: AttrsArg | None = None, **attributes: AttrValue) -> None:
        key = _key(attrs, attributes)
        bucket = bisect_left(self.bounds, value)
        with self._lock:
            state = self._values.get(key)
            if state is None:
                state = self._values[key] = [0] * (len(self.bounds) + 1) + [0, 0.0]
            state[bucket] += 1
            state[-2] += 1
            state[-1] += value

    def record_many(self, values: np.ndarray, attrs: AttrsArg | None = None) -> None:
        """Record a batch of values with the same attributes (one bucketing pass in numpy)."""
        if len(values) == 0:
            return
        key = _key(attrs, {})
        # searchsorted(side="left") puts a value equal to a bound in that bound's bucket, as record() does.
        buckets = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds) + 1)
        with self._lock:
            state = self._values.get(key)
            if state is None:
                state = self._values[key] = [0] * (len(self.bounds) + 1) + [0, 0.0]
            for i, n in enumerate(buckets.tolist()):
                state[i] += n
            state[-2] += len(values)
            state[-1] += float(values.sum())

    def points(self) -> list[MetricPoint]:
        with self._lock:
            items = [(key, list(state)) for key, state in self._values.items()]
        return [
            MetricPoint(
                attributes=dict(key),
                bounds=self.bounds,
                bucket_counts=tuple(state[:-2]),
                count=state[-2],
                sum=state[-1],
            )
            for key, state in items
        ]


Instrument = Counter | UpDownCounter | Gauge | Histogram
_I = TypeVar("_I", bound=Instrument)


class Registry:
    """Instruments by name; asking twice for the same name returns the same instrument."""

    def __init__(self) -> None:
        self.start_time_unix_nano = time.time_ns()
        self._instruments: dict[str, Instrument] = {}
        self._lock = threading.Lock()

    def _get_or_create(self, cls: type[_I], name: str, *args: Any) -> _I:
        with self._lock:
            existing = self._instruments.get(name)
            if existing is None:
                existing = self._instruments[name] = cls(name, *args)
            elif type(existing) is not cls:
                raise ValueError(
                    f"metric {name} is already registered as a {type(existing).__name__}; "
                    f"pick another name for the {cls.__name__}"
                )
            return cast(_I, existing)  # its type is cls, checked above

    def counter(self, name: str, description: str = "", unit: str = "1") -> Counter:
        return self._get_or_create(Counter, name, description, unit)

    def up_down_counter(self, name: str, description: str = "", unit: str = "1") -> UpDownCounter:
        return self._get_or_create(UpDownCounter, name, description, unit)

    def gauge(
        self, name: str, description: str, unit: str, callback: GaugeCallback
    ) -> Gauge:
        return self._get_or_create(Gauge, name, description, unit, callback)

    def histogram(
        self, name: str, description: str, unit: str, bounds: Sequence[float]
    ) -> Histogram:
        return self._get_or_create(Histogram, name, description, unit, bounds)

    def instruments(self) -> list[Instrument]:
        with self._lock:
            return list(self._instruments.values())

    def snapshot(self, resource: Resource, scope: str) -> MetricBatch:
        """Cumulative values since the registry was created."""
        metrics = [
            Metric(
                name=instrument.name,
                description=instrument.description,
                unit=instrument.unit,
                kind=instrument.kind,
                points=instrument.points(),
                monotonic=instrument.monotonic,
            )
            for instrument in self.instruments()
        ]
        return MetricBatch(
            resource=resource,
            scope=scope,
            start_time_unix_nano=self.start_time_unix_nano,
            time_unix_nano=time.time_ns(),
            metrics=metrics,
        )
