"""Acquire loads, release stores and an acquire fence for the ring buffer reader, from
barriers.c (built by `make`), called once or twice per drained batch, never per record.

Without the built library the reader is still correct on x86-64, whose plain loads and
stores are ordered as it needs (TSO); anywhere else it is not, and `ordering()` says so.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent / "_barriers.so"
ORDERED_ARCHES = ("x86_64", "amd64")  # total store order: plain loads acquire, plain stores release


class OrderingUnavailable(Exception):
    """The reader cannot order its loads and stores on this machine."""


@dataclass(frozen=True)
class Ordering:
    load_acquire: Callable[[int], int] | None  # (address) -> the u64 there
    store_release: Callable[[int, int], None] | None  # (address, value)
    fence_acquire: Callable[[], None] | None
    how: str


@cache
def ordering() -> Ordering:
    """The built barriers, or the plain x86-64 fallback; raises OrderingUnavailable elsewhere."""
    if LIBRARY.exists():
        lib = ctypes.CDLL(str(LIBRARY))
        lib.otelbpf_load_acquire_u64.argtypes = [ctypes.c_void_p]
        lib.otelbpf_load_acquire_u64.restype = ctypes.c_uint64
        lib.otelbpf_store_release_u64.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        lib.otelbpf_store_release_u64.restype = None
        lib.otelbpf_fence_acquire.argtypes = []
        lib.otelbpf_fence_acquire.restype = None
        return Ordering(lib.otelbpf_load_acquire_u64, lib.otelbpf_store_release_u64, lib.otelbpf_fence_acquire,
                        f"acquire/release barriers from {LIBRARY.name}")
    machine = platform.machine()
    if machine in ORDERED_ARCHES:
        return Ordering(None, None, None, f"plain loads and stores ({machine} orders them; {LIBRARY.name} not built)")
    raise OrderingUnavailable(
        f"{LIBRARY} is missing, and on {machine} the ring buffer reader needs its acquire/release "
        "barriers to read records safely: run `make bpf` (it builds the library with clang)")
