"""Symbolization pieces: the ELF reader against nm, kallsyms, perf maps, /proc maps,
demangling, and the symbolizer on this very process."""

from __future__ import annotations

import ctypes
import os
import subprocess

import numpy as np
import pytest

from otelbpf.symbols.demangle import demangle
from otelbpf.symbols.elf import ElfError, ElfSymbols, read_elf
from otelbpf.symbols.kallsyms import KernelSymbols
from otelbpf.symbols.maps import parse_maps
from otelbpf.symbols.perfmap import PerfMap
from otelbpf.symbols.symbolizer import Symbolizer
from tests.conftest import require_tool

SOURCE = r"""
#include <stdio.h>
__attribute__((noinline)) int alpha_fn(int x) { return x * 3 + 1; }
__attribute__((noinline)) int beta_fn(int x) { return alpha_fn(x) - 2; }
static __attribute__((noinline)) int gamma_static(int x) { return beta_fn(x) * 5; }
int main(int argc, char **argv) { printf("%d\n", gamma_static(argc)); return 0; }
"""


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    gcc = require_tool("gcc")
    d = tmp_path_factory.mktemp("elf")
    (d / "prog.c").write_text(SOURCE)
    subprocess.run([gcc, "-O1", "-Wl,--build-id", "-o", str(d / "prog"), str(d / "prog.c")], check=True)
    return d / "prog"


def nm_functions(path) -> dict[str, int]:
    nm = require_tool("nm")
    out = subprocess.run([nm, "--defined-only", str(path)], check=True, capture_output=True, text=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in out.splitlines())
            if len(parts) == 3 and parts[1] in "tT"}


def test_elf_symbols_agree_with_nm(binary):
    elf = read_elf(str(binary))
    funcs = nm_functions(binary)
    for name in ("alpha_fn", "beta_fn", "gamma_static", "main"):
        addr = funcs[name]
        assert elf.lookup(np.array([addr, addr + 1], dtype=np.uint64)) == [name, name]
    assert len(elf.build_id) == 40
    readelf = require_tool("readelf")
    notes = subprocess.run([readelf, "-n", str(binary)], check=True, capture_output=True, text=True).stdout
    assert elf.build_id in notes


def test_elf_stripped_binary_falls_back_to_dynsym(binary, tmp_path):
    strip = require_tool("strip")
    stripped = tmp_path / "stripped"
    subprocess.run([strip, "-o", str(stripped), str(binary)], check=True)
    elf = read_elf(str(stripped))
    assert "alpha_fn" not in elf.lookup(np.array([nm_functions(binary)["alpha_fn"]], dtype=np.uint64))


def test_elf_rejects_other_files(tmp_path):
    with pytest.raises(ElfError):
        ElfSymbols(b"#!/bin/sh\n" + b"\0" * 64)
    (tmp_path / "tiny").write_bytes(b"\x7fELF")
    with pytest.raises(ElfError):
        read_elf(str(tmp_path / "tiny"))


def test_file_offset_to_vaddr_uses_the_load_segment(binary):
    elf = read_elf(str(binary))
    text = max(elf.segments, key=lambda s: s.filesz)
    assert elf.file_offset_to_vaddr(text.offset + 16) == text.vaddr + 16


def test_kallsyms_nearest_text_symbol():
    ks = KernelSymbols("ffffffff81000000 T _stext\nffffffff81000100 t helper\nffffffff81000200 D data_sym\n"
                       "ffffffffc0000000 t mod_fn\t[mymod]\n0000000000000000 T hidden\n")
    addrs = np.array([0xFFFFFFFF81000050, 0xFFFFFFFF81000150, 0xFFFFFFFF81000250, 0xFFFFFFFFC0000010, 5],
                     dtype=np.uint64)
    assert ks.lookup(addrs) == ["_stext", "helper", "helper", "mod_fn", None]


def test_perf_map_lookup(tmp_path):
    (tmp_path / "perf-123.map").write_text("7f0000001000 40 py::hot_function:/app/x.py\n"
                                           "7f0000000000 100 py::main:/app/x.py\nbad line\n")
    pm = PerfMap.for_pid(123, str(tmp_path))
    assert len(pm) == 2
    assert pm.lookup(0x7F0000001010) == "py::hot_function:/app/x.py"
    assert pm.lookup(0x7F00000000FF) == "py::main:/app/x.py"
    assert pm.lookup(0x7F0000001040) is None
    assert PerfMap.for_pid(124, str(tmp_path)) is None


def test_parse_maps_keeps_executable_mappings():
    text = ("55d000000000-55d000001000 r--p 00000000 08:01 1234 /usr/bin/prog\n"
            "55d000001000-55d000002000 r-xp 00001000 08:01 1234 /usr/bin/prog\n"
            "7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]\n"
            "7f0000000000-7f0000001000 rwxp 00000000 00:00 0 \n")
    maps = parse_maps(text)
    assert [(m.start, m.offset, m.path, m.file_backed) for m in maps] == [
        (0x55D000001000, 0x1000, "/usr/bin/prog", True), (0x7F0000000000, 0, "", False),
        (0x7FFD00000000, 0, "[vdso]", False)]
    assert maps[1].name == "[anon]" and maps[2].name == "[vdso]"


@pytest.mark.parametrize("mangled, readable", [
    ("_ZNSt6vectorIiSaIiEE9push_backERKi", "std::vector<int, std::allocator<int> >::push_back(int const&)"),
    ("_ZN4core3fmt5write17h0123456789abcdefE", "core::fmt::write"),  # Rust legacy, hash dropped
    ("plain_c_name", "plain_c_name"),
    ("_Znot_really_mangled!", "_Znot_really_mangled!"),
])
def test_demangle(mangled, readable):
    assert demangle(mangled) == readable


def test_symbolizer_resolves_libc_functions_in_this_process():
    libc = ctypes.CDLL(None)
    addr = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    sym = Symbolizer()
    assert sym.remember(os.getpid())
    [leaf, _caller] = sym.user_frames(os.getpid(), [addr, addr + 1])
    assert "getpid" in leaf.name and leaf.resolved and leaf.module.endswith(".so.6")
    assert leaf.build_id


def test_symbolizer_keeps_unknown_frames_as_module_offset():
    sym = Symbolizer()
    frames = sym.user_frames(os.getpid(), [0x10])  # nothing is mapped at 0x10
    assert frames[0].name == "0x10" and not frames[0].resolved
    assert sym.misses == 1
