"""Executable memory mappings of a process, from /proc/PID/maps."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    offset: int  # file offset of `start`
    dev: str
    inode: int
    path: str  # a file, or a pseudo name such as [vdso]; "" for anonymous memory

    @property
    def file_backed(self) -> bool:
        return self.inode != 0 and self.path.startswith("/")

    @property
    def name(self) -> str:
        """What a frame in this mapping is shown with when it has no symbol."""
        return os.path.basename(self.path.removesuffix(" (deleted)")) or "[anon]"


def parse_maps(text: str) -> list[Mapping]:
    """The executable mappings in the text of /proc/PID/maps, by address."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or "x" not in parts[1]:
            continue
        lo, _, hi = parts[0].partition("-")
        out.append(Mapping(int(lo, 16), int(hi, 16), int(parts[2], 16), parts[3], int(parts[4]),
                           parts[5].strip() if len(parts) > 5 else ""))
    out.sort(key=lambda m: m.start)
    return out


def read_maps(pid: int, proc: str = "/proc") -> list[Mapping] | None:
    """None when the process is gone (or its maps are empty: a zombie)."""
    try:
        with open(f"{proc}/{pid}/maps") as f:
            maps = parse_maps(f.read())
    except OSError:
        return None
    return maps or None
