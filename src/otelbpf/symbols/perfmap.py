"""perf map files (/tmp/perf-PID.map): the symbols a JIT publishes for code it generates
(python -X perf from 3.12, node --perf-basic-prof, the JVM with perf-map-agent).
Each line: START SIZE NAME, START and SIZE in hex without 0x."""

from __future__ import annotations

import numpy as np


class PerfMap:
    def __init__(self, text: str):
        starts: list[int] = []
        ends: list[int] = []
        names: list[str] = []
        for line in text.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) != 3:
                continue
            try:
                start, size = int(parts[0], 16), int(parts[1], 16)
            except ValueError:
                continue
            starts.append(start)
            ends.append(start + size)
            names.append(parts[2])
        order = np.argsort(np.array(starts, dtype=np.uint64), kind="stable")
        self._starts = np.array(starts, dtype=np.uint64)[order]
        self._ends = np.array(ends, dtype=np.uint64)[order]
        self._names = [names[i] for i in order]

    @classmethod
    def for_pid(cls, pid: int, directory: str = "/tmp") -> PerfMap | None:
        try:
            with open(f"{directory}/perf-{pid}.map", errors="replace") as f:
                return cls(f.read())
        except OSError:
            return None

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, addr: int) -> str | None:
        i = int(np.searchsorted(self._starts, np.uint64(addr), side="right")) - 1
        if i >= 0 and addr < int(self._ends[i]):
            return self._names[i]
        return None
