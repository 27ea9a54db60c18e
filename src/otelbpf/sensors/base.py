"""What every sensor offers the agent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from otelbpf.kernel import Program


class Sensor(Protocol):
    name: str

    def start(self) -> None:
        """Load and attach the BPF programs; raises a kernel-layer error naming the cause."""

    def poll(self, timeout: float) -> int:
        """Wait up to timeout seconds for events, decode and hand them on; returns how many."""

    def stop(self) -> None:
        """Drain what is left, then detach and close everything of ours in the kernel."""

    def programs(self) -> list[Program]:
        """The loaded programs, for run-time statistics."""


@contextmanager
def running(sensor: Sensor, poll_interval: float = 0.05) -> Iterator[Sensor]:
    """Start a sensor and drain it on a thread until the block ends; then stop it, which
    decodes everything the kernel had produced. For tools, tests and benchmarks; the agent
    runs its sensors itself."""
    sensor.start()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            sensor.poll(poll_interval)

    thread = threading.Thread(target=drain, name=f"drain-{sensor.name}", daemon=True)
    thread.start()
    try:
        yield sensor
    finally:
        stop.set()
        thread.join()
        sensor.stop()
