"""Fixtures of the kernel tests."""

from __future__ import annotations

import os

import pytest

from otelbpf.sensors.base import running
from tests.conftest import require
from tests.kernel.security_sensor import Loaded


@pytest.fixture(scope="module")
def loaded():
    """One security sensor for the test module, with an idle policy until a test swaps its own in."""
    require(os.geteuid() == 0, "needs root to load BPF programs")
    state = Loaded()
    with running(state.sensor):
        yield state
