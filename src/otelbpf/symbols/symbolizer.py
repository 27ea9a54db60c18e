"""Addresses -> frames for the profiler: kernel from kallsyms, user code from the ELF symbol
tables of the mapped files and from perf map files.

A process's mappings (and the symbols of its files) are captured when the profiler first
sees it, while it is alive (`remember`), so frames of a process that exited before the drain
still resolve. ELF files are read through /proc/PID/map_files, which also works for files
deleted since, or living in a container's mount namespace, and cached by (device, inode).
A frame that cannot be resolved is kept, named module+offset or by its address.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from otelbpf.symbols.demangle import demangle
from otelbpf.symbols.elf import ElfError, ElfSymbols, read_elf
from otelbpf.symbols.kallsyms import KernelSymbols
from otelbpf.symbols.maps import Mapping, read_maps
from otelbpf.symbols.perfmap import PerfMap

KERNEL_MODULE = "[kernel]"


@dataclass(frozen=True, slots=True)
class Frame:
    name: str
    module: str  # file path of the mapping, [kernel], or a pseudo name ([vdso], [anon])
    address: int
    kernel: bool = False
    resolved: bool = True
    mapping: Mapping | None = None
    build_id: str = ""


@dataclass(slots=True)
class ProcessImage:
    mappings: list[Mapping]
    starts: list[int]
    perf_map: PerfMap | None
    captured_ns: int


class Symbolizer:
    def __init__(self, *, max_processes: int = 4096, max_files: int = 512, proc: str = "/proc",
                 perf_map_dir: str = "/tmp", kernel: KernelSymbols | None = None):
        self._proc = proc
        self._perf_map_dir = perf_map_dir
        self._kernel = kernel
        self._processes: OrderedDict[int, ProcessImage] = OrderedDict()
        self._files: OrderedDict[tuple[str, int], ElfSymbols | None] = OrderedDict()
        self._max_processes = max_processes
        self._max_files = max_files
        self.misses = 0  # frames left without a function name
        self.resolved = 0

    # -- capture --------------------------------------------------------------------------
    def remember(self, pid: int) -> bool:
        """Capture a live process's mappings and load the symbols of its files now."""
        maps = read_maps(pid, self._proc)
        if maps is None:
            return False
        for m in maps:
            if m.file_backed:
                self._elf(pid, m)
        image = ProcessImage(maps, [m.start for m in maps],
                             PerfMap.for_pid(pid, self._perf_map_dir), time.monotonic_ns())
        self._processes[pid] = image
        self._processes.move_to_end(pid)
        while len(self._processes) > self._max_processes:
            self._processes.popitem(last=False)
        return True

    def forget(self, pid: int) -> None:
        self._processes.pop(pid, None)

    def _elf(self, pid: int, m: Mapping) -> ElfSymbols | None:
        key = (m.dev, m.inode)
        if key in self._files:
            self._files.move_to_end(key)
            return self._files[key]
        elf = None
        for path in (f"{self._proc}/{pid}/map_files/{m.start:x}-{m.end:x}", m.path):
            try:
                elf = read_elf(path)
                break
            except (OSError, ElfError):
                continue
        self._files[key] = elf  # None too: do not retry a file that is not ELF
        while len(self._files) > self._max_files:
            self._files.popitem(last=False)
        return elf

    # -- resolution -----------------------------------------------------------------------
    def kernel_frames(self, addrs: list[int]) -> list[Frame]:
        if self._kernel is None:
            self._kernel = KernelSymbols.load(f"{self._proc}/kallsyms")
        names = self._kernel.lookup(np.array(addrs, dtype=np.uint64)) if addrs else []
        out = []
        for addr, name in zip(addrs, names):
            out.append(self._count(Frame(name or f"0x{addr:x}", KERNEL_MODULE, addr, True, name is not None)))
        return out

    def user_frames(self, pid: int, addrs: list[int]) -> list[Frame]:
        """Frames for a user stack, leaf first (return addresses: callers are looked up at
        address - 1, inside the call instruction)."""
        image = self._processes.get(pid)
        # New, or it mapped more code since: read it again.
        if (image is None or self._outside(image, addrs)) and self.remember(pid):
            image = self._processes[pid]
        out = []
        for depth, addr in enumerate(addrs):
            out.append(self._count(self._user_frame(pid, image, addr, addr if depth == 0 else addr - 1)))
        return out

    def _outside(self, image: ProcessImage, addrs: list[int]) -> bool:
        return any(self._mapping_of(image, a) is None for a in addrs)

    @staticmethod
    def _mapping_of(image: ProcessImage, addr: int) -> Mapping | None:
        i = bisect.bisect_right(image.starts, addr) - 1
        if i >= 0 and addr < image.mappings[i].end:
            return image.mappings[i]
        return None

    def _user_frame(self, pid: int, image: ProcessImage | None, addr: int, probe: int) -> Frame:
        m = self._mapping_of(image, probe) if image else None
        if m is None:
            name = image.perf_map.lookup(probe) if image and image.perf_map else None
            return Frame(name or f"0x{addr:x}", "[unknown]", addr, resolved=name is not None)
        assert image is not None  # m is one of its mappings
        file_offset = probe - m.start + m.offset
        elf = self._files.get((m.dev, m.inode)) if m.file_backed else None
        if elf is None:
            name = image.perf_map.lookup(probe) if image.perf_map else None  # JIT code in anonymous memory
            if name:
                return Frame(name, m.name, addr, mapping=m)
            return Frame(f"{m.name}+0x{file_offset:x}", m.path or "[anon]", addr, resolved=False, mapping=m)
        name = elf.lookup(np.array([elf.file_offset_to_vaddr(file_offset)], dtype=np.uint64))[0]
        if name is None:
            return Frame(f"{m.name}+0x{file_offset:x}", m.path, addr, resolved=False, mapping=m,
                         build_id=elf.build_id)
        return Frame(demangle(name), m.path, addr, mapping=m, build_id=elf.build_id)

    def _count(self, frame: Frame) -> Frame:
        if frame.resolved:
            self.resolved += 1
        else:
            self.misses += 1
        return frame
