"""Shared test set-up: kernel and e2e tests need root; with CI=true they may not skip."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip a test that cannot run here, except in CI where a missing capability is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    return path


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> bool:
    """True once something accepts connections on host:port, False after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture
def root() -> None:
    require(os.geteuid() == 0, "needs root to load BPF programs")


def pytest_collection_modifyitems(items):
    for item in items:
        parts = item.path.parts
        if "kernel" in parts:
            item.add_marker(pytest.mark.kernel)
            item.fixturenames.append("root")
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
