"""CpuSampler + Symbolizer: drains of the kernel counts become symbolized Profiles.

Call `poll` often (it captures the mappings of processes as soon as they are first
sampled, while they are alive) and `collect` once per profile interval.
"""

from __future__ import annotations

import time
from collections import Counter

from otelbpf.kernel import Program
from otelbpf.profiling.model import Profile, Stack
from otelbpf.profiling.sampler import CpuSampler, RawProfile
from otelbpf.signals.registry import Registry
from otelbpf.symbols.symbolizer import KERNEL_MODULE, Frame, Symbolizer

NO_STACK = -1  # a stack id below this is the error bpf_get_stackid returned: the sample stays, its stack is lost
LOST_USER_STACK = Frame("[user stack lost]", "[unknown]", 0, resolved=False)
LOST_KERNEL_STACK = Frame("[kernel stack lost]", KERNEL_MODULE, 0, kernel=True, resolved=False)


class Profiler:
    def __init__(self, registry: Registry, hz: int = 19, *, pid: int | None = None, max_stacks: int = 16384,
                 symbolizer: Symbolizer | None = None):
        self.hz = hz
        self.sampler = CpuSampler(hz, pid=pid, max_stacks=max_stacks)
        self.symbolizer = symbolizer or Symbolizer()
        self._clock_offset = time.time_ns() - time.monotonic_ns()
        self._misses_reported = 0
        self.lost = 0  # samples whose stack or count the kernel could not keep, since start
        self._samples = registry.counter("otelbpf.profile.samples", "CPU samples read from the kernel",
                                         "{sample}")
        self._lost = registry.counter("otelbpf.profile.samples.lost",
                                      "CPU samples whose stack or count the kernel could not keep", "{sample}")
        self._misses = registry.counter("otelbpf.profile.symbolization.misses",
                                        "Frames left without a function name", "{frame}")

    def start(self) -> None:
        self.sampler.start()

    def programs(self) -> list[Program]:
        return self.sampler.programs()

    def poll(self, timeout: float) -> int:
        """Capture the mappings of newly sampled processes; returns how many."""
        pids = self.sampler.new_pids(timeout)
        for pid in pids:
            self.symbolizer.remember(pid)
        return len(pids)

    def collect(self) -> Profile:
        self.poll(0)
        raw = self.sampler.drain()
        profile = self.symbolize(raw)
        self._samples.add(profile.total)
        for kind, n in raw.errors.items():
            if n:
                self._lost.add(n, {"reason": kind})
                self.lost += n
        misses = self.symbolizer.misses - self._misses_reported
        if misses:
            self._misses.add(misses)
            self._misses_reported = self.symbolizer.misses
        return profile

    def symbolize(self, raw: RawProfile) -> Profile:
        counts: Counter[Stack] = Counter()
        user_cache: dict[tuple[int, int], tuple] = {}
        kernel_cache: dict[int, tuple] = {}
        for key, n in zip(raw.keys.tolist(), raw.counts.tolist()):
            pid, user_id, kernel_id, _, comm = key
            frames: tuple = ()
            if kernel_id in raw.stacks:
                if kernel_id not in kernel_cache:
                    kernel_cache[kernel_id] = tuple(self.symbolizer.kernel_frames(raw.stacks[kernel_id]))
                frames = kernel_cache[kernel_id]
            elif kernel_id < NO_STACK:
                frames = (LOST_KERNEL_STACK,)
            if user_id in raw.stacks:
                if (pid, user_id) not in user_cache:
                    user_cache[pid, user_id] = tuple(self.symbolizer.user_frames(pid, raw.stacks[user_id]))
                frames += user_cache[pid, user_id]
            elif user_id < NO_STACK:
                frames += (LOST_USER_STACK,)
            counts[Stack(pid, comm.decode("utf-8", "replace"), frames)] += n
        return Profile(raw.start_ns + self._clock_offset, raw.end_ns - raw.start_ns, self.hz, counts)

    def stop(self) -> None:
        self.sampler.stop()
