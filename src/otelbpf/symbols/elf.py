"""Function symbols of an ELF file (.symtab, else .dynsym), its build id and its loadable
segments, read with numpy: no Python per symbol, so a libc of thousands of symbols loads in
milliseconds. 64-bit little-endian ELF only (x86_64, arm64).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
SHT_SYMTAB, SHT_NOTE, SHT_DYNSYM = 2, 7, 11
PT_LOAD = 1
STT_FUNC, STT_GNU_IFUNC = 2, 10
NT_GNU_BUILD_ID = 3

SECTION = np.dtype([("name", "<u4"), ("type", "<u4"), ("flags", "<u8"), ("addr", "<u8"), ("offset", "<u8"),
                    ("size", "<u8"), ("link", "<u4"), ("info", "<u4"), ("addralign", "<u8"), ("entsize", "<u8")])
SEGMENT = np.dtype([("type", "<u4"), ("flags", "<u4"), ("offset", "<u8"), ("vaddr", "<u8"), ("paddr", "<u8"),
                    ("filesz", "<u8"), ("memsz", "<u8"), ("align", "<u8")])
SYMBOL = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"),
                   ("size", "<u8")])


class ElfError(ValueError):
    """Not an ELF file we can read symbols from."""


@dataclass(frozen=True, slots=True)
class Segment:
    offset: int
    vaddr: int
    filesz: int


class ElfSymbols:
    """Sorted function symbols of one ELF file; `lookup` maps ELF virtual addresses to names."""

    def __init__(self, data: bytes | mmap.mmap):
        if data[:4] != ELF_MAGIC or data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
            raise ElfError("not a 64-bit little-endian ELF file")
        phoff, shoff = np.frombuffer(data, "<u8", 2, 0x20)
        phnum, shentsize, shnum, _shstrndx = np.frombuffer(data, "<u2", 4, 0x38)
        if shnum and shentsize != SECTION.itemsize:
            raise ElfError(f"unexpected section header size {shentsize}")
        sections = np.frombuffer(data, SECTION, int(shnum), int(shoff)) if shnum else np.zeros(0, SECTION)
        segments = np.frombuffer(data, SEGMENT, int(phnum), int(phoff)) if phnum else np.zeros(0, SEGMENT)
        self.segments = [Segment(int(s["offset"]), int(s["vaddr"]), int(s["filesz"]))
                         for s in segments if s["type"] == PT_LOAD]
        self.build_id = _build_id(data, sections)
        self._addrs, self._ends, self._names, self._strtab = _function_symbols(data, sections)

    def __len__(self) -> int:
        return len(self._addrs)

    def file_offset_to_vaddr(self, offset: int) -> int:
        """The ELF virtual address that file offset `offset` is loaded at."""
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        return offset  # outside every segment: only a guess, symbols will likely miss

    def lookup(self, vaddrs: np.ndarray) -> list[str | None]:
        """The function containing each address, or None."""
        vaddrs = np.asarray(vaddrs, dtype=np.uint64)
        if not len(self._addrs):
            return [None] * len(vaddrs)
        idx = np.searchsorted(self._addrs, vaddrs, side="right") - 1
        ok = (idx >= 0) & (vaddrs < self._ends[np.maximum(idx, 0)])
        return [self._name(int(self._names[i])) if hit else None for i, hit in zip(idx, ok)]

    def _name(self, offset: int) -> str:
        tab = self._strtab
        end = tab.find(b"\0", offset)
        return tab[offset:end if end >= 0 else len(tab)].decode("utf-8", "replace")


def _section_bytes(data: bytes | mmap.mmap, section: np.void) -> bytes:
    start = int(section["offset"])
    return data[start:start + int(section["size"])]


def _function_symbols(data: bytes | mmap.mmap, sections: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    # A stripped binary keeps only .dynsym; an unstripped one has everything in .symtab.
    for kind in (SHT_SYMTAB, SHT_DYNSYM):
        found = np.flatnonzero(sections["type"] == kind)
        if not len(found):
            continue
        table = sections[found[0]]
        raw = _section_bytes(data, table)
        syms = np.frombuffer(raw, SYMBOL, len(raw) // SYMBOL.itemsize)
        kinds = syms["info"] & 0xF
        keep = ((kinds == STT_FUNC) | (kinds == STT_GNU_IFUNC)) & (syms["value"] != 0) & (syms["shndx"] != 0)
        if not keep.any():
            continue
        syms = syms[keep]
        order = np.argsort(syms["value"], kind="stable")
        syms = syms[order]
        addrs = syms["value"].astype(np.uint64)
        sizes = syms["size"].astype(np.uint64)
        # A symbol without a size (hand-written assembly) reaches to the next symbol.
        nxt = np.append(addrs[1:], np.uint64(np.iinfo(np.uint64).max))
        ends = np.where(sizes > 0, addrs + sizes, nxt)
        strtab = _section_bytes(data, sections[int(table["link"])])
        return addrs, ends, syms["name"].astype(np.int64), strtab
    empty = np.zeros(0, np.uint64)
    return empty, empty, np.zeros(0, np.int64), b""


def _build_id(data: bytes | mmap.mmap, sections: np.ndarray) -> str:
    for section in sections[sections["type"] == SHT_NOTE]:
        note = _section_bytes(data, section)
        pos = 0
        while pos + 12 <= len(note):
            namesz, descsz, kind = np.frombuffer(note, "<u4", 3, pos)
            name_end = pos + 12 + (int(namesz) + 3) // 4 * 4
            desc = note[name_end:name_end + int(descsz)]
            if kind == NT_GNU_BUILD_ID and note[pos + 12:pos + 12 + int(namesz)].rstrip(b"\0") == b"GNU":
                return desc.hex()
            pos = name_end + (int(descsz) + 3) // 4 * 4
    return ""


def read_elf(path: str) -> ElfSymbols:
    """Read an ELF file's symbols; raises OSError or ElfError. The file is mapped, not read:
    only its headers, symbol and string tables are touched."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 64:
            raise ElfError("too small to be an ELF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return ElfSymbols(data)
