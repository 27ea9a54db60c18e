"""Cumulative counts -> metric increments: the one way every sensor reports what it counted.

BPF programs count in map slots (per-CPU arrays, summed on read) and trackers count in
plain integers; both are totals since they started. `CounterDeltas.report` turns a total
into the increment since the previous report of the same counter and attributes, and adds
it, once. A total that went down (a map recreated on restart) starts a new run: all of it
is new. Keys are the instrument and a fixed set of attribute values (reasons, syscalls,
policies), so the state stays as small as the set of series.
"""

from __future__ import annotations

import threading

from otelbpf.signals.model import AttrValue
from otelbpf.signals.registry import Counter


class CounterDeltas:
    def __init__(self) -> None:
        self._last: dict[tuple, int] = {}
        self._lock = threading.Lock()  # a sensor's drain thread and its stop() both report

    def report(self, counter: Counter, total: int, **attributes: AttrValue) -> int:
        """Adds to counter what total grew by since the last report; returns that growth."""
        key = (counter.name, *sorted(attributes.items()))
        with self._lock:
            last = self._last.get(key, 0)
            self._last[key] = total
        grown = total - last if total >= last else total
        if grown > 0:
            counter.add(grown, attributes)
        return grown
