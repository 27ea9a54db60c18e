"""Kernel symbols from /proc/kallsyms (real addresses need root: kptr_restrict hides them)."""

from __future__ import annotations

import numpy as np

TEXT_TYPES = frozenset("tTwW")


class KernelSymbols:
    def __init__(self, text: str):
        addrs: list[int] = []
        names: list[str] = []
        for line in text.splitlines():
            parts = line.split(maxsplit=3)
            if len(parts) < 3 or parts[1] not in TEXT_TYPES:
                continue
            addr = int(parts[0], 16)
            if addr == 0:
                continue
            addrs.append(addr)
            names.append(parts[2])
        order = np.argsort(np.array(addrs, dtype=np.uint64), kind="stable")
        self._addrs = np.array(addrs, dtype=np.uint64)[order]
        self._names = [names[i] for i in order]

    @classmethod
    def load(cls, path: str = "/proc/kallsyms") -> KernelSymbols:
        with open(path) as f:
            return cls(f.read())

    def __len__(self) -> int:
        return len(self._addrs)

    def lookup(self, addrs: np.ndarray) -> list[str | None]:
        """The nearest text symbol at or below each address (kallsyms gives no sizes)."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        if not len(self._addrs):
            return [None] * len(addrs)
        idx = np.searchsorted(self._addrs, addrs, side="right") - 1
        return [self._names[i] if i >= 0 else None for i in idx]
