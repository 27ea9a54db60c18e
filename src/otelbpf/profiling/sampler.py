"""The kernel side of the profiler: cpu-clock perf events on every online CPU running
bpf/profile.bpf.c, which counts samples per (process, thread name, user stack, kernel stack).

`drain()` flips the active generation of maps, waits for samples in flight, then takes the
idle generation's counts in one batch operation and its stacks by id, and empties it.
`new_pids()` reports processes sampled for the first time, so that user space can read their
mappings while they are still alive.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otelbpf.kernel import BpfObject, Program, loading, perf
from otelbpf.kernel.ringbuf import RingBufferReader

BPF_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "profile.bpf.o"

PROFILE_KEY = np.dtype([("pid", "<u4"), ("user_stack_id", "<i4"), ("kernel_stack_id", "<i4"), ("_pad", "<u4"),
                        ("comm", "S16")])
PID_EVENT = np.dtype([("pid", "<u4"), ("_pad", "<u4")])
ERROR_KINDS = ("stack_collision", "stack_map_full", "counts_map_full")  # enum profile_error
MAX_HZ = 1000
# A perf_event program runs in interrupt context for microseconds; after the flip, a sample
# can only still be writing the old generation if it started before it. 2 ms is ample.
FLIP_GRACE_S = 0.002


@dataclass(slots=True)
class RawProfile:
    """One drain: sample counts by key, and the addresses of every stack id they name."""

    keys: np.ndarray  # PROFILE_KEY
    counts: np.ndarray  # uint64, one per key
    stacks: dict[int, list[int]]  # stack id -> instruction addresses, leaf first
    errors: dict[str, int]  # new stack and map errors since the last drain, by kind
    start_ns: int  # CLOCK_MONOTONIC span the counts cover
    end_ns: int


class CpuSampler:
    def __init__(self, hz: int = 19, *, pid: int | None = None, max_stacks: int = 16384,
                 bpf_object: Path = BPF_OBJECT):
        if not 1 <= hz <= MAX_HZ:
            raise ValueError(f"sampling frequency must be 1..{MAX_HZ} Hz (got {hz})")
        self.hz = hz
        self._pid = pid or 0
        self._max_stacks = max_stacks
        self._bpf_object = bpf_object
        self._obj: BpfObject | None = None
        self._pids: RingBufferReader | None = None
        self._active = 0
        self._errors_seen = np.zeros(len(ERROR_KINDS), dtype=np.uint64)
        self._since_ns = 0

    def start(self) -> None:
        sizes = {f"profile_{kind}_{gen}": self._max_stacks for kind in ("counts", "stacks") for gen in (0, 1)}
        try:
            with loading(self._bpf_object, layouts={"profile_key": PROFILE_KEY, "profile_pid_event": PID_EVENT},
                         rodata={"target_pid": self._pid}, max_entries=sizes) as obj:
                obj.load()
                self._pids = RingBufferReader(obj.maps["profile_pids"], PID_EVENT.itemsize)
                obj.programs["profile_exec"].attach()
                obj.programs["profile_exit"].attach()
                program = obj.programs["profile_sample"]
                for cpu in perf.online_cpus():
                    fd = perf.open_cpu_clock(cpu, self.hz)
                    try:
                        program.attach_perf_event(fd)  # the link now owns fd: libbpf closes it on detach
                    except BaseException:
                        perf.close(fd)
                        raise
        except BaseException:
            self.stop()  # the reader; loading() closed the object
            raise
        self._obj = obj
        self._since_ns = time.monotonic_ns()

    def programs(self) -> list[Program]:
        return list(self._obj.programs.values()) if self._obj else []

    def new_pids(self, timeout: float) -> list[int]:
        """Processes sampled for the first time (since start or their last exec)."""
        if self._pids is None or not self._pids.wait(timeout):
            return []
        return [int(p) for p in self._pids.read().fixed(PID_EVENT)["pid"]]

    def drain(self) -> RawProfile:
        obj = self._obj
        if obj is None:
            raise RuntimeError("the sampler is not running")
        gen = self._active
        self._active = 1 - gen
        obj.maps["profile_active"].update(b"\0\0\0\0", struct.pack("<I", self._active))
        end_ns = time.monotonic_ns()
        time.sleep(FLIP_GRACE_S)
        keys, counts = obj.maps[f"profile_counts_{gen}"].lookup_and_delete_batch(PROFILE_KEY, np.dtype(np.uint64))
        stacks = self._take_stacks(gen, keys)
        raw = RawProfile(keys, counts, stacks, self._new_errors(), self._since_ns, end_ns)
        self._since_ns = end_ns
        return raw

    def _take_stacks(self, gen: int, keys: np.ndarray) -> dict[int, list[int]]:
        assert self._obj is not None  # called by drain(), which checked
        stack_map = self._obj.maps[f"profile_stacks_{gen}"]
        ids = np.union1d(keys["user_stack_id"], keys["kernel_stack_id"])
        stacks: dict[int, list[int]] = {}
        for stack_id in ids[ids >= 0].tolist():
            key = struct.pack("<I", stack_id)
            raw = stack_map.lookup(key)
            if raw is not None:
                addrs = np.frombuffer(raw, dtype=np.uint64)
                zeros = np.flatnonzero(addrs == 0)
                stacks[stack_id] = addrs[: zeros[0] if len(zeros) else len(addrs)].tolist()
                stack_map.delete(key)
        # stacks whose sample found no room in the counts map; a Map is not iterable, keys() reads it
        for key in stack_map.keys():  # noqa: SIM118
            stack_map.delete(key)
        return stacks

    def _new_errors(self) -> dict[str, int]:
        assert self._obj is not None  # called by drain(), which checked
        errors = self._obj.maps["profile_errors"]
        now = np.array([int(errors.percpu_u64(struct.pack("<I", i)).sum()) for i in range(len(ERROR_KINDS))],
                       dtype=np.uint64)
        new = now - self._errors_seen
        self._errors_seen = now
        return {kind: int(n) for kind, n in zip(ERROR_KINDS, new)}

    def stop(self) -> None:
        """Detach (which closes the perf events) and close. Drain first to keep the last counts."""
        if self._pids is not None:
            self._pids.close()
            self._pids = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
