"""perf_event_open(2) for software CPU-clock sampling (one event per CPU)."""

from __future__ import annotations

import ctypes
import os
import platform

from otelbpf.kernel.errors import BpfError

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 1 << 3
_ATTR_FREQ = 1 << 10  # perf_event_attr bit field: sample_freq instead of sample_period

_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(platform.machine(), 298)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class perf_event_attr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (112 bytes)."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period_or_freq", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64), ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16), ("reserved", ctypes.c_uint16),
    ]


def open_cpu_clock(cpu: int, frequency_hz: int, pid: int = -1) -> int:
    """A cpu-clock sampling event on one CPU (all processes when pid == -1); returns its fd."""
    attr = perf_event_attr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(perf_event_attr),
                           config=PERF_COUNT_SW_CPU_CLOCK, sample_period_or_freq=frequency_hz,
                           flags=_ATTR_FREQ)
    fd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise BpfError(f"perf_event_open(cpu-clock, cpu {cpu})", ctypes.get_errno())
    return fd


def online_cpus() -> list[int]:
    """CPU numbers from /sys/devices/system/cpu/online (e.g. "0-3,6")."""
    with open("/sys/devices/system/cpu/online") as f:
        text = f.read().strip()
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def close(fd: int) -> None:
    os.close(fd)
