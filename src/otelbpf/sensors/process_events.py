"""Python mirrors of the process event structs in bpf/events.h, and their decoding.

The dtypes are checked against the object's BTF at load (BpfObject.check_layout), so a
change to events.h that is not made here too stops the sensor instead of misreading data.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np

from otelbpf.kernel.ringbuf import RecordBatch

EXEC, FORK, EXIT = 1, 2, 3
COMM_LEN = 16

PROCESS_EVENT = np.dtype([
    ("ktime_ns", "<u8"), ("start_time_ns", "<u8"), ("cgroup_id", "<u8"),
    ("type", "<u4"), ("pid", "<u4"), ("tid", "<u4"), ("ppid", "<u4"),
    ("uid", "<u4"), ("gid", "<u4"), ("exit_code", "<u4"), ("old_pid", "<u4"),
    ("comm", f"S{COMM_LEN}"),
])

EXEC_EVENT = np.dtype([
    ("head", PROCESS_EVENT),
    ("filename_len", "<u4"), ("args_len", "<u4"), ("args_size", "<u4"), ("_pad", "<u4"),
])


def decode_text(raw: bytes) -> str:
    """Kernel bytes to text: UTF-8 where valid, other bytes escaped (\\xNN), never an error."""
    return raw.decode("utf-8", "backslashreplace")


def split_args(raw: bytes) -> list[str]:
    """argv as the kernel keeps it (NUL-separated, NUL-terminated) to a list of strings."""
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [decode_text(a) for a in raw.split(b"\0")] if raw else []


@dataclass(slots=True)
class ExitStatus:
    code: int          # exit code, or 128 + signal like a shell reports it
    signal: int        # 0 when the process exited on its own
    core_dumped: bool

    @property
    def signal_name(self) -> str | None:
        if not self.signal:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"


def exit_status(wait_status: int) -> ExitStatus:
    """Decode a wait(2) status as the kernel stores it in task->exit_code."""
    sig = wait_status & 0x7F
    if sig == 0:
        return ExitStatus((wait_status >> 8) & 0xFF, 0, False)
    return ExitStatus(128 + sig, sig, bool(wait_status & 0x80))


@dataclass(slots=True)
class ExecDetails:
    filename: str
    args: list[str]
    args_truncated: bool


def exec_details(batch: RecordBatch, index: int) -> ExecDetails:
    """The variable part of one exec record: the path given to execve, then argv."""
    payload = bytes(batch.payload(index))
    fixed = np.frombuffer(payload, dtype=EXEC_EVENT, count=1)[0]
    start = EXEC_EVENT.itemsize
    filename_end = min(start + int(fixed["filename_len"]), len(payload))
    args_end = min(filename_end + int(fixed["args_len"]), len(payload))
    args_len = args_end - filename_end
    return ExecDetails(decode_text(payload[start:filename_end]), split_args(payload[filename_end:args_end]),
                       int(fixed["args_size"]) > args_len)
