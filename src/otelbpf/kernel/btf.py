"""Reading struct layouts and data sections from an object's BTF.

Used to check the Python mirror of each event struct against what clang actually laid out,
and to find the offsets of read-only config variables in .rodata.
"""

from __future__ import annotations

import ctypes

import numpy as np

from otelbpf.kernel import libbpf
from otelbpf.kernel.errors import LayoutMismatchError

BTF_KIND_STRUCT = 4
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


def _type(btf: int, type_id: int) -> _BtfType:
    return _BtfType.from_address(libbpf.btf__type_by_id(btf, type_id))


def _name(btf: int, off: int) -> str:
    return (libbpf.btf__name_by_offset(btf, off) or b"").decode()


def _children(btf: int, type_id: int, item: type[ctypes.Structure]) -> list:
    t = _type(btf, type_id)
    vlen = t.info & 0xFFFF
    base = ctypes.addressof(t) + ctypes.sizeof(_BtfType)
    return [item.from_address(base + i * ctypes.sizeof(item)) for i in range(vlen)]


def struct_members(btf: int, type_id: int) -> dict[str, tuple[int, int, int]]:
    """name -> (byte offset, byte size, type id) of a struct's members."""
    kind_flag = _type(btf, type_id).info >> 31
    out = {}
    for m in _children(btf, type_id, _BtfMember):
        bit_off = m.offset & 0xFFFFFF if kind_flag else m.offset
        out[_name(btf, m.name_off)] = (bit_off // 8, libbpf.btf__resolve_size(btf, m.type), m.type)
    return out


def find_struct(btf: int, name: str) -> int:
    type_id = libbpf.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
    return type_id if type_id > 0 else 0


def datasec_vars(btf: int, section: str) -> dict[str, tuple[int, int]]:
    """variable name -> (offset, size) in a data section such as .rodata."""
    sec_id = libbpf.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
    if sec_id <= 0:
        return {}
    return {_name(btf, _type(btf, v.type).name_off): (v.offset, v.size)
            for v in _children(btf, sec_id, _BtfVarSecinfo)}


def check_struct_layout(btf: int, struct_name: str, dtype: np.dtype, where: str) -> None:
    """Raise LayoutMismatchError unless every field of dtype sits where BTF says it does."""
    problems: list[str] = []
    _compare(btf, struct_name, dtype, "", problems)
    if problems:
        raise LayoutMismatchError(
            f"struct {struct_name} in {where} does not match its Python mirror: "
            + "; ".join(problems) + ". Rebuild the BPF objects (make bpf) or update the mirror.")


def _compare(btf: int, struct_name: str, dtype: np.dtype, prefix: str, problems: list[str],
             type_id: int | None = None) -> None:
    type_id = type_id or find_struct(btf, struct_name)
    if not type_id:
        problems.append(f"struct {struct_name} is not in the object's BTF")
        return
    size = libbpf.btf__resolve_size(btf, type_id)
    if size != dtype.itemsize:
        problems.append(f"{prefix or struct_name}: size {dtype.itemsize} in Python, {size} in BPF")
    members = struct_members(btf, type_id)
    assert dtype.fields is not None, f"{struct_name}: the Python mirror is not a structured dtype"
    for field, (fdtype, offset, *_) in dtype.fields.items():
        if field.startswith("_pad"):
            continue
        path = prefix + field
        if field not in members:
            problems.append(f"{path}: no such member in BPF")
            continue
        b_off, b_size, b_type = members[field]
        if b_off != offset:
            problems.append(f"{path}: offset {offset} in Python, {b_off} in BPF")
        if b_size != fdtype.itemsize:
            problems.append(f"{path}: size {fdtype.itemsize} in Python, {b_size} in BPF")
        if fdtype.fields is not None:
            _compare(btf, field, fdtype, path + ".", problems, libbpf.btf__resolve_type(btf, b_type))
