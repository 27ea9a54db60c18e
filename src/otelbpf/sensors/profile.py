"""Continuous CPU profiling as a sensor of the agent: every interval, one symbolized
profile of every process is handed to `emit` (bpf/profile.bpf.c, profiling.profiler)."""

from __future__ import annotations

import time
from collections.abc import Callable

from otelbpf.kernel import Program
from otelbpf.profiling.model import Profile
from otelbpf.profiling.profiler import Profiler
from otelbpf.signals.registry import Registry

SCOPE = "otelbpf.sensors.profile"


class ProfileSensor:
    name = "profile"

    def __init__(self, emit: Callable[[Profile], None], registry: Registry, *, hz: int = 19,
                 interval: float = 10.0, max_stacks: int = 16384):
        self._emit = emit
        self._interval = interval
        self._profiler = Profiler(registry, hz, max_stacks=max_stacks)
        self._next_ns = 0
        self._running = False

    def start(self) -> None:
        self._profiler.start()
        self._running = True
        self._next_ns = time.monotonic_ns() + int(self._interval * 1e9)

    def programs(self) -> list[Program]:
        return self._profiler.programs()

    def poll(self, timeout: float) -> int:
        """Capture newly sampled processes; at the end of each interval emit a profile.
        Returns the samples emitted."""
        if not self._running:
            return 0
        left = max(0.0, (self._next_ns - time.monotonic_ns()) / 1e9)
        self._profiler.poll(min(timeout, left))
        if time.monotonic_ns() < self._next_ns:
            return 0
        self._next_ns += int(self._interval * 1e9)
        return self._flush()

    def _flush(self) -> int:
        profile = self._profiler.collect()
        if profile.total:
            self._emit(profile)
        return profile.total

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            self._flush()  # what the kernel counted since the last interval
        finally:
            self._profiler.stop()
