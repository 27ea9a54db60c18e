"""Protected paths by identity: (device, inode) as the kernel names them.

A rule's path matches the path the kernel built for an opened file; its identity matches the
same file reached by a name the path does not show: a hard link, a bind mount, a mount
namespace that puts it elsewhere. Identities are resolved when a policy loads and again
while it runs (a file replaced by a rename over it, as passwd does, is a new inode).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

ID_FILE = 1  # the inode itself is opened (bpf/security.bpf.c: ID_FILE)
ID_DIR = 2   # something below the directory is opened (ID_DIR)

# struct inode_key: hook, kind, pad, dev (kernel encoding), ino
INODE_KEY = struct.Struct("<BBHIQ")
BLOOM_BITS = 4096  # struct id_bloom
_GOLDEN = 0x9E3779B97F4A7C15


@dataclass(frozen=True, slots=True)
class IdentitySource:
    """A path of a rule, resolved to an identity of one kind."""

    hook: int
    kind: int
    path: str


def kernel_dev(st_dev: int) -> int:
    """The superblock's s_dev as the kernel keeps it (MKDEV: major << 20 | minor), which is not
    the encoding stat() returns."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def sources_of(hook: int, op: str, value: str) -> list[IdentitySource]:
    """What a path value protects by identity: an Equal path the file itself; a Prefix ending in
    '/' what is below the directory; any other Prefix the file and, if a directory, below it.
    Postfix values name no one file."""
    if op == "Equal":
        return [IdentitySource(hook, ID_FILE, value)]
    if op == "Prefix":
        if value.endswith("/"):
            return [IdentitySource(hook, ID_DIR, value)]
        return [IdentitySource(hook, ID_FILE, value), IdentitySource(hook, ID_DIR, value)]
    return []


def resolve(sources: dict[IdentitySource, int]) -> dict[bytes, int]:
    """inode_key bytes -> rule mask for each source that exists now (following symlinks, as an
    open does). A path that does not exist is matched by its path only, until it does."""
    out: dict[bytes, int] = {}
    for source, mask in sources.items():
        try:
            st = os.stat(source.path)
        except OSError:
            continue
        if source.kind == ID_DIR and not stat.S_ISDIR(st.st_mode):
            continue
        key = INODE_KEY.pack(source.hook, source.kind, 0, kernel_dev(st.st_dev), st.st_ino)
        out[key] = out.get(key, 0) | mask
    return out


def bloom_bit(ino: int) -> int:
    """The bit of an inode number in struct id_bloom (as identity_matches computes it)."""
    return ((ino * _GOLDEN) & (2**64 - 1)) >> 52


def bloom(keys) -> bytes:
    """struct id_bloom with the bits of these inode_key keys set."""
    words = [0] * (BLOOM_BITS // 64)
    for key in keys:
        bit = bloom_bit(INODE_KEY.unpack(key)[4])
        words[bit >> 6] |= 1 << (bit & 63)
    return struct.pack(f"<{len(words)}Q", *words)
