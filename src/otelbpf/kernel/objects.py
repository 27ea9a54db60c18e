"""BPF objects, programs, links and maps: a thin, typed layer over libbpf.

Lifecycle: open -> set read-only config and map sizes -> load -> attach -> (use maps) ->
close. Closing an object destroys its links first, so nothing of ours stays attached.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from otelbpf.kernel import btf as btfmod
from otelbpf.kernel import integrity, libbpf
from otelbpf.kernel.errors import AttachError, BpfError, LoadError

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

BPF_ANY = 0
BPF_NOEXIST = 1


def possible_cpus() -> int:
    n = libbpf.libbpf_num_possible_cpus()
    if n <= 0:
        raise BpfError("cannot count the possible CPUs", n)
    return n


class Link:
    """An attachment of a program to a hook; destroy() detaches it."""

    def __init__(self, ptr: int, description: str):
        self._ptr: int | None = ptr  # None once destroyed
        self.description = description

    @property
    def attached(self) -> bool:
        return self._ptr is not None

    def read_iter(self, chunk: int = 1 << 16) -> bytes:
        """Run an iterator link once and return everything its program wrote."""
        fd = libbpf.bpf_iter_create(libbpf.bpf_link__fd(self._ptr))
        if fd < 0:
            raise BpfError(f"creating an iterator from {self.description}", -fd)
        parts = []
        try:
            while data := os.read(fd, chunk):
                parts.append(data)
        finally:
            os.close(fd)
        return b"".join(parts)

    def destroy(self) -> None:
        if self._ptr is not None:
            libbpf.bpf_link__destroy(self._ptr)
            self._ptr = None

    def __repr__(self) -> str:
        return f"Link({self.description}, attached={self.attached})"


class Program:
    def __init__(self, obj: BpfObject, ptr: int):
        self._obj = obj
        self._ptr = ptr
        self.name = libbpf.bpf_program__name(ptr).decode()
        self.section = libbpf.bpf_program__section_name(ptr).decode()

    @property
    def fd(self) -> int:
        return libbpf.bpf_program__fd(self._ptr)

    @property
    def autoload(self) -> bool:
        return bool(libbpf.bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        libbpf.bpf_program__set_autoload(self._ptr, value)

    def _link(self, ptr: int | None, what: str) -> Link:
        if not ptr:
            err = ctypes.get_errno()
            raise AttachError(f"attaching program {self.name!r} ({what})", err or 1)
        link = Link(ptr, f"{self.name}:{what}")
        self._obj.links.append(link)
        return link

    def attach(self) -> Link:
        """Attach by section name (tracepoint/, tp_btf/, raw_tp/, ...)."""
        return self._link(libbpf.bpf_program__attach(self._ptr), self.section)

    def attach_perf_event(self, perf_fd: int) -> Link:
        return self._link(libbpf.bpf_program__attach_perf_event(self._ptr, perf_fd), f"perf_event fd {perf_fd}")

    def attach_cgroup(self, cgroup_path: str) -> Link:
        """Attach a cgroup program (cgroup_skb, cgroup/sock...) to a cgroup v2 directory."""
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._link(libbpf.bpf_program__attach_cgroup(self._ptr, fd), f"cgroup {cgroup_path}")
        finally:
            os.close(fd)

    def attach_iter(self) -> Link:
        """Attach an iterator program (iter/...); read it with Link.read_iter()."""
        return self._link(libbpf.bpf_program__attach_iter(self._ptr, None), self.section)

    def attach_uprobe(self, binary: str, function: str, *, retprobe: bool = False, pid: int = -1) -> Link:
        opts = libbpf.bpf_uprobe_opts(sz=ctypes.sizeof(libbpf.bpf_uprobe_opts), retprobe=retprobe,
                                      func_name=function.encode())
        ptr = libbpf.bpf_program__attach_uprobe_opts(self._ptr, pid, binary.encode(), 0, ctypes.byref(opts))
        kind = "uretprobe" if retprobe else "uprobe"
        return self._link(ptr, f"{kind} {binary}:{function}")

    def test_run(self, ctx: bytes | ctypes.Array | None = None) -> int:
        """Run the program once in the kernel (BPF_PROG_RUN); returns its return value."""
        opts = libbpf.bpf_test_run_opts(sz=ctypes.sizeof(libbpf.bpf_test_run_opts))
        if ctx is not None:
            buf = ctx if isinstance(ctx, ctypes.Array) else ctypes.create_string_buffer(bytes(ctx), len(ctx))
            opts.ctx_in = ctypes.addressof(buf)
            opts.ctx_size_in = len(bytes(buf)) if not isinstance(ctx, ctypes.Array) else ctypes.sizeof(buf)
        ret = libbpf.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        if ret:
            raise BpfError(f"running program {self.name!r}", libbpf.errno_of(ret))
        return opts.retval

    def stats(self) -> tuple[int, int]:
        """(run time ns, run count); both stay 0 unless kernel.bpf_stats_enabled=1."""
        info = libbpf.bpf_prog_info()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        ret = libbpf.bpf_obj_get_info_by_fd(self.fd, ctypes.byref(info), ctypes.byref(size))
        if ret:
            raise BpfError(f"reading info of program {self.name!r}", libbpf.errno_of(ret))
        return info.run_time_ns, info.run_cnt

    @property
    def kernel_id(self) -> int:
        info = libbpf.bpf_prog_info()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        libbpf.bpf_obj_get_info_by_fd(self.fd, ctypes.byref(info), ctypes.byref(size))
        return info.id


class Map:
    def __init__(self, ptr: int):
        self._ptr = ptr
        self.name = libbpf.bpf_map__name(ptr).decode()

    fd = property(lambda self: libbpf.bpf_map__fd(self._ptr))
    type = property(lambda self: libbpf.bpf_map__type(self._ptr))
    key_size = property(lambda self: libbpf.bpf_map__key_size(self._ptr))
    value_size = property(lambda self: libbpf.bpf_map__value_size(self._ptr))
    max_entries = property(lambda self: libbpf.bpf_map__max_entries(self._ptr))

    def set_max_entries(self, n: int) -> None:
        ret = libbpf.bpf_map__set_max_entries(self._ptr, n)
        if ret:
            raise BpfError(f"setting max_entries of map {self.name!r} to {n}", libbpf.errno_of(ret))

    def set_value_size(self, n: int) -> None:
        """Before load: a value size known only at run time (the map must have no BTF value type)."""
        ret = libbpf.bpf_map__set_value_size(self._ptr, n)
        if ret:
            raise BpfError(f"setting the value size of map {self.name!r} to {n}", libbpf.errno_of(ret))

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_MAP_TYPES

    def _value_buffer_size(self) -> int:
        if self.percpu:  # one 8-byte-aligned slot per possible CPU
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def lookup(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self._value_buffer_size())
        ret = libbpf.bpf_map_lookup_elem(self.fd, key, value)
        if ret:
            if libbpf.errno_of(ret) == 2:  # ENOENT
                return None
            raise BpfError(f"lookup in map {self.name!r}", libbpf.errno_of(ret))
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        ret = libbpf.bpf_map_update_elem(self.fd, key, value, flags)
        if ret:
            raise BpfError(f"update of map {self.name!r}", libbpf.errno_of(ret))

    def delete(self, key: bytes) -> bool:
        ret = libbpf.bpf_map_delete_elem(self.fd, key)
        if ret and libbpf.errno_of(ret) != 2:
            raise BpfError(f"delete from map {self.name!r}", libbpf.errno_of(ret))
        return ret == 0

    def percpu_u64(self, key: bytes = b"\0\0\0\0") -> np.ndarray:
        """The per-CPU u64 values of one key of a per-CPU array (counters)."""
        raw = self.lookup(key)
        if raw is None:
            return np.zeros(possible_cpus(), dtype=np.uint64)
        return np.frombuffer(raw, dtype=np.uint64)[:: max(1, (self.value_size + 7) // 8)].copy()

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev = None
        while libbpf.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            out.append(nxt.raw)
            ctypes.memmove(key, nxt, self.key_size)
            prev = key
        return out

    def lookup_and_delete_batch(self, key_dtype: np.dtype, value_dtype: np.dtype,
                                batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Drain a hash map in batches; returns (keys, values) as numpy arrays."""
        cpus = possible_cpus() if self.percpu else 1
        keys_out, values_out = [], []
        in_batch = ctypes.c_uint64(0)
        out_batch = ctypes.c_uint64(0)
        first = True
        opts = libbpf.bpf_map_batch_opts(sz=ctypes.sizeof(libbpf.bpf_map_batch_opts))
        while True:
            keys = np.zeros(batch, dtype=key_dtype)
            values = np.zeros(batch * cpus, dtype=value_dtype)
            count = ctypes.c_uint32(batch)
            ret = libbpf.bpf_map_lookup_and_delete_batch(
                self.fd, None if first else ctypes.byref(in_batch), ctypes.byref(out_batch),
                keys.ctypes.data, values.ctypes.data, ctypes.byref(count), ctypes.byref(opts))
            err = libbpf.errno_of(ret) if ret else 0
            if ret and err != 2:  # ENOENT: the map is now empty
                raise BpfError(f"batch lookup-and-delete in map {self.name!r}", err)
            keys_out.append(keys[: count.value])
            values_out.append(values[: count.value * cpus])
            if err == 2:
                break
            in_batch.value = out_batch.value
            first = False
        k = np.concatenate(keys_out)
        v = np.concatenate(values_out)
        return k, (v.reshape(len(k), cpus) if cpus > 1 else v)


_Item = TypeVar("_Item", Program, Map)


class BpfObject:
    """One compiled BPF object file (*.bpf.o)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise BpfError(f"BPF object {self.path} not found; build it with: make bpf")
        mark = libbpf.log_mark()
        ptr = libbpf.bpf_object__open_file(str(self.path).encode(), None)
        if not ptr:
            raise LoadError(str(self.path), ctypes.get_errno() or 1, libbpf.log_since(mark))
        self._ptr = ptr
        self.loaded = False
        self.links: list[Link] = []
        self.programs = self._collect(libbpf.bpf_object__next_program, lambda p: Program(self, p))
        self.maps = self._collect(libbpf.bpf_object__next_map, Map)

    def _collect(self, next_fn: Callable[[int, int | None], int | None],
                 make: Callable[[int], _Item]) -> dict[str, _Item]:
        out: dict[str, _Item] = {}
        cur: int | None = None
        while True:
            cur = next_fn(self._ptr, cur)
            if not cur:
                return out
            item = make(cur)
            out[item.name] = item

    @property
    def btf(self) -> int:
        ptr = libbpf.bpf_object__btf(self._ptr)
        if not ptr:
            raise BpfError(f"{self.path.name} has no BTF; build it with clang -g")
        return ptr

    def _rodata_map(self) -> Map:
        for name, m in self.maps.items():
            if name.endswith(".rodata"):
                return m
        raise BpfError(f"{self.path.name} has no .rodata section (no const volatile variables)")

    def set_rodata(self, **values: int) -> None:
        """Set `const volatile` integer variables; only possible before load()."""
        if self.loaded:
            raise BpfError(f"{self.path.name}: read-only config must be set before load")
        rodata = self._rodata_map()
        layout = btfmod.datasec_vars(self.btf, ".rodata")
        size = ctypes.c_size_t()
        base = libbpf.bpf_map__initial_value(rodata._ptr, ctypes.byref(size))
        for name, value in values.items():
            if name not in layout:
                raise BpfError(f"{self.path.name}: no read-only variable {name!r} "
                               f"(known: {', '.join(sorted(layout))})")
            offset, width = layout[name]
            ctypes.memmove(base + offset, int(value).to_bytes(width, "little", signed=value < 0), width)

    def check_layout(self, struct_name: str, dtype: np.dtype) -> None:
        btfmod.check_struct_layout(self.btf, struct_name, dtype, self.path.name)

    def load(self) -> None:
        mark = libbpf.log_mark()
        ret = libbpf.bpf_object__load(self._ptr)
        if ret:
            log = libbpf.log_since(mark)
            raise LoadError(self.path.name, libbpf.errno_of(ret), log, _failed_program(log))
        self.loaded = True

    def attach_all(self) -> list[Link]:
        return [p.attach() for p in self.programs.values() if p.autoload]

    def detach_all(self) -> None:
        for link in self.links:
            link.destroy()
        self.links.clear()

    def close(self) -> None:
        if self._ptr:
            self.detach_all()
            libbpf.bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _failed_program(log: str) -> str | None:
    # libbpf says: "libbpf: prog 'handle_exec': failed to load: -13"
    for line in reversed(log.splitlines()):
        if "prog '" in line:
            return line.split("prog '", 1)[1].split("'", 1)[0]
    return None


@contextmanager
def loading(path: Path, *, layouts: Mapping[str, np.dtype], rodata: Mapping[str, int] | None = None,
            max_entries: Mapping[str, int] | None = None) -> Iterator[BpfObject]:
    """The start every sensor (and the profiler) shares: open its BPF object, check each struct its decoder
    mirrors against the object's BTF (layouts: struct name -> dtype), set its read-only
    config and map sizes, then hand it to the block, which loads it, makes its readers and
    attaches. If anything fails on the way, the object is closed (its programs detached,
    its maps freed) before the error goes on: a sensor never leaves half of itself behind.
    The object's digest is checked against the build's manifest first (kernel.integrity)."""
    integrity.verify(Path(path))
    obj = BpfObject(path)
    try:
        for struct, dtype in layouts.items():
            obj.check_layout(struct, dtype)
        if rodata:
            obj.set_rodata(**rodata)
        for name, entries in (max_entries or {}).items():
            obj.maps[name].set_max_entries(entries)
        yield obj
    except BaseException:
        obj.close()
        raise
