"""The only code that talks to libbpf: objects, programs, links, maps, ring buffers,
perf events, feature probes and their typed errors."""

from otelbpf.kernel.errors import (
    AttachError,
    BpfError,
    LayoutMismatchError,
    LoadError,
    MissingPrivilegeError,
)
from otelbpf.kernel.objects import BpfObject, Link, Map, Program, loading

__all__ = [
    "AttachError",
    "BpfError",
    "BpfObject",
    "LayoutMismatchError",
    "Link",
    "LoadError",
    "Map",
    "MissingPrivilegeError",
    "Program",
    "loading",
]
