"""Kernel timestamps to wall-clock time."""

import time


def monotonic_to_unix_offset() -> int:
    """Add to a CLOCK_MONOTONIC timestamp (bpf_ktime_get_ns) to get Unix time in ns."""
    return time.time_ns() - time.monotonic_ns()
