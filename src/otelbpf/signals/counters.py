"""Cumulative counts -> metric increments: the one way every sensor reports what it counted
(a helper of the registry: sensors use it, no sensor keeps its own "last seen" totals).

BPF programs count in map slots (per-CPU arrays, summed on read) and trackers count in
plain integers; both are totals since they started. `CounterDeltas.report` turns a total
into the increment since the previous report of the same series, and adds it, once. A
series is the instrument, its attributes and, where several sources add to one attribute
set (two policy rules of one policy), the source. A total that went down (a map made again)
starts a new run: all of it is new. `forget(source)` drops a source whose slot is reused.
Sources are map slots and attribute sets are fixed sets of values (reasons, syscalls,
policies), so the state stays as small as the set of series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Mapping

from otelbpf.signals.model import AttrValue
from otelbpf.signals.registry import Counter


class CounterDeltas:
    def __init__(self, interval: float = 1.0) -> None:
        """interval: how often due() says the totals are worth reading again (a map lookup
        per CPU each time; once a second is what the metrics need)."""
        self._last: dict[tuple, int] = {}
        self._lock = threading.Lock()  # a sensor's drain thread and its stop() both report
        self._interval = interval
        self._next_read = 0.0

    def due(self) -> bool:
        """True at most once per interval; a sensor's stop() reports without asking."""
        now = time.monotonic()
        if now < self._next_read:
            return False
        self._next_read = now + self._interval
        return True

    def report(self, counter: Counter, total: int, attributes: Mapping[str, AttrValue] | None = None,
               source: Hashable = None) -> int:
        """Adds to counter what total grew by since the last report; returns that growth."""
        attrs = dict(attributes or {})
        key = (counter.name, source, *sorted(attrs.items()))
        with self._lock:
            last = self._last.get(key, 0)
            self._last[key] = total
        grown = total - last if total >= last else total
        if grown > 0:
            counter.add(grown, attrs)
        return grown

    def forget(self, source: Hashable) -> None:
        """The next report of source's series counts from zero (its slot holds a new count)."""
        with self._lock:
            for key in [k for k in self._last if k[1] == source]:
                del self._last[key]
