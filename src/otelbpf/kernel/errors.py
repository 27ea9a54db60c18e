"""Typed errors of the kernel layer; each message says what failed and what to do."""

from __future__ import annotations

import errno
import os


class BpfError(Exception):
    """Something the kernel or libbpf refused."""

    def __init__(self, message: str, err: int = 0):
        self.errno = abs(err)
        if err:
            message = f"{message}: {os.strerror(self.errno)} (errno {self.errno})"
            if self.errno in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
                message += "; run as root (or with CAP_BPF and CAP_PERFMON)"
        super().__init__(message)


class LoadError(BpfError):
    """The verifier (or libbpf) rejected a program; carries the tail of the verifier log."""

    def __init__(self, obj: str, err: int, log: str, program: str | None = None):
        self.object = obj
        self.program = program
        self.log = log
        what = f"program {program!r} in {obj}" if program else obj
        tail = "\n".join(log.strip().splitlines()[-20:])
        super().__init__(f"loading {what} failed", err)
        if tail:
            self.args = (f"{self.args[0]}\n--- libbpf / verifier log (last lines) ---\n{tail}",)


class AttachError(BpfError):
    """A loaded program could not be attached to its hook."""


class LayoutMismatchError(BpfError):
    """The Python mirror of an event struct disagrees with the object's BTF."""


class MissingPrivilegeError(BpfError):
    """The process lacks the capabilities to load BPF programs."""
