"""What every sensor offers the agent."""

from __future__ import annotations

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
