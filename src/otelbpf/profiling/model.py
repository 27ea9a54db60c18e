"""An aggregated CPU profile: sample counts by (process, thread name, stack)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from otelbpf.symbols.symbolizer import Frame


@dataclass(frozen=True, slots=True)
class Stack:
    pid: int
    comm: str  # name of the sampled thread
    frames: tuple[Frame, ...]  # leaf first: kernel frames (if any), then user frames


@dataclass(slots=True)
class Profile:
    start_unix_ns: int
    duration_ns: int
    hz: int
    counts: Counter[Stack] = field(default_factory=Counter)

    @property
    def period_ns(self) -> int:
        return 1_000_000_000 // self.hz

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: Profile) -> None:
        """Add a later profile's samples (the same sampling frequency) to this one."""
        if other.hz != self.hz:
            raise ValueError(f"cannot merge profiles sampled at {self.hz} and {other.hz} Hz")
        self.counts.update(other.counts)
        end = max(self.start_unix_ns + self.duration_ns, other.start_unix_ns + other.duration_ns)
        self.start_unix_ns = min(self.start_unix_ns, other.start_unix_ns)
        self.duration_ns = end - self.start_unix_ns

    def for_pid(self, pid: int) -> Profile:
        return Profile(self.start_unix_ns, self.duration_ns, self.hz,
                       Counter({s: n for s, n in self.counts.items() if s.pid == pid}))
