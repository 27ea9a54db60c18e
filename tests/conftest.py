"""Shared test set-up: kernel and e2e tests need root; with CI=true they may not skip."""

from __future__ import annotations

import os
import shutil

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
