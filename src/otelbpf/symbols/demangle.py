"""Readable C++ and Rust names: the Itanium ABI demangler of libstdc++ (through ctypes),
which also reads Rust's legacy mangling; Rust's trailing hash (::h0123456789abcdef) is
dropped. Rust v0 names (_R...) are left as they are."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re

_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")


@functools.cache
def _cxa_demangle():
    name = ctypes.util.find_library("stdc++") or "libstdc++.so.6"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    fn = lib.__cxa_demangle
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    return fn


_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]


@functools.lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The human-readable form of a mangled name; other names come back unchanged."""
    if not name.startswith("_Z"):
        return name
    fn = _cxa_demangle()
    if fn is None:
        return name
    status = ctypes.c_int()
    ptr = fn(name.encode(), None, None, ctypes.byref(status))
    if status.value != 0 or not ptr:
        return name
    try:
        readable = ctypes.string_at(ptr).decode("utf-8", "replace")
    finally:
        _libc.free(ptr)
    return _RUST_HASH.sub("", readable)
