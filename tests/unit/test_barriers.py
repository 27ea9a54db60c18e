"""The ring buffer reader's memory ordering: the built barriers, the x86-64 fallback, and a
clear refusal where neither is right."""

from __future__ import annotations

import ctypes
import platform

import numpy as np
import pytest

from otelbpf.kernel import barriers


@pytest.fixture
def fresh(monkeypatch):
    barriers.ordering.cache_clear()
    yield monkeypatch
    barriers.ordering.cache_clear()


def test_the_built_barriers_load_and_store_the_positions(fresh):
    assert barriers.LIBRARY.exists(), "make bpf builds it"
    order = barriers.ordering()
    assert "barriers" in order.how
    positions = np.zeros(2, dtype=np.uint64)
    order.store_release(positions.ctypes.data, 0x1234_5678_9ABC_DEF1)
    assert int(positions[0]) == 0x1234_5678_9ABC_DEF1 and int(positions[1]) == 0
    assert order.load_acquire(positions.ctypes.data + 0) == 0x1234_5678_9ABC_DEF1
    order.fence_acquire()


def test_without_the_library_x86_64_reads_plainly(fresh, tmp_path):
    fresh.setattr(barriers, "LIBRARY", tmp_path / "missing.so")
    fresh.setattr(platform, "machine", lambda: "x86_64")
    order = barriers.ordering()
    assert order.load_acquire is None and "x86_64 orders them" in order.how


def test_without_the_library_arm64_is_refused_with_what_to_do(fresh, tmp_path):
    fresh.setattr(barriers, "LIBRARY", tmp_path / "missing.so")
    fresh.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(barriers.OrderingUnavailable, match=r"on aarch64 .* run `make bpf`"):
        barriers.ordering()


def test_c_types_are_declared():
    assert barriers.ordering().load_acquire.restype is ctypes.c_uint64
