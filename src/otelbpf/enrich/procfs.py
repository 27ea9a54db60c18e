"""The one place the agent reads a process's links in /proc: its executable, working
directory, file descriptors and the sockets among them. A process can be gone (or exec again) between the kernel's
event and this read; every function then says None rather than raising."""

from __future__ import annotations

import os

PROC = "/proc"
DELETED = " (deleted)"  # what the kernel appends to the link of a file removed since


def readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # gone, a kernel thread, or not ours to read
        return None


def executable(pid: int, proc: str = PROC) -> str | None:
    """The path of the file the process runs, as the kernel resolved it at exec."""
    path = readlink(f"{proc}/{pid}/exe") if pid else None
    return path.removesuffix(DELETED) if path else None


def executable_name(pid: int, comm: bytes | str = b"", proc: str = PROC) -> str:
    """The executable's file name; the kernel's command name when the process is gone (or a
    kernel thread); "unknown" when there is neither."""
    path = executable(pid, proc)
    if path:
        return os.path.basename(path)
    if isinstance(comm, bytes | bytearray):
        comm = bytes(comm).rstrip(b"\0").decode("utf-8", "replace")
    return comm or "unknown"


def working_directory(pid: int, proc: str = PROC) -> str | None:
    return readlink(f"{proc}/{pid}/cwd")


def fd_target(pid: int, fd: int, proc: str = PROC) -> str | None:
    return readlink(f"{proc}/{pid}/fd/{fd}")


def socket_inodes(pid: int, proc: str = PROC) -> set[int]:
    """The inodes of the sockets the process holds open (its fds that say socket:[N])."""
    inodes: set[int] = set()
    try:
        entries = os.scandir(f"{proc}/{pid}/fd")
    except OSError:
        return inodes  # gone, or not ours to read
    with entries:
        for fd in entries:
            target = readlink(fd.path)
            if target is not None and target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes
