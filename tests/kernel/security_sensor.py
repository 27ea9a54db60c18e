"""The security sensor as the kernel tests share it: one sensor per test module (loading and
verifying its programs takes seconds), policies swapped in per test. The `loaded` fixture is
in tests/kernel/conftest.py."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from otelbpf.security.policy import parse_policy
from otelbpf.sensors.security import SecuritySensor
from otelbpf.signals.model import Resource
from otelbpf.signals.registry import Registry

POLICIES = Path(__file__).resolve().parents[2] / "src" / "otelbpf" / "policies"


class Loaded:
    """One sensor for the whole module (loading and verifying its programs takes seconds):
    each test swaps the policies in with reload(), which is itself under test here."""

    def __init__(self) -> None:
        self.records: list = []
        self.registry = Registry()
        self.sensor = SecuritySensor(lambda batch: self.records.extend(batch.records), self.registry, Resource(),
                                     [parse_policy(_IDLE, "idle")])

    @contextmanager
    def policies(self, policies, enforce=False):
        self.sensor.reload(policies, enforce=enforce)
        time.sleep(0.05)
        self.sensor.poll(0)
        self.records.clear()
        try:
            yield self.records
        finally:
            self.sensor.reload([parse_policy(_IDLE, "idle")], enforce=False)


_IDLE = "name: idle\nrules:\n  - hook: ptrace\n    requests: [999999]\n"


def settle(records, want: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while len(records) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and nothing more than expected arrives
