"""Who a process is, once per process for every sensor: its executable, its container, and
the resource its telemetry carries (the host's, plus the process, with service.name the
executable's name). Read from /proc (enrich.procfs) the first time a pid is met, while it is
there to be read; a process already gone is named by the kernel's command name.

One table is shared by the sensors of an agent, so a process is read once however many
sensors see it, and every sensor names it alike. The container and Kubernetes identity
build on it (issue: identity).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from otelbpf.enrich import procfs
from otelbpf.enrich.containers import container_id_of_pid
from otelbpf.signals.model import Attributes, Resource

MAX_PROCESSES = 16384  # identities kept; the least recently used go first


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    pid: int
    executable_name: str
    executable_path: str | None = None
    container_id: str | None = None

    def attributes(self) -> Attributes:
        attrs: Attributes = {"process.pid": self.pid, "process.executable.name": self.executable_name}
        if self.executable_path:
            attrs["process.executable.path"] = self.executable_path
        if self.container_id:
            attrs["container.id"] = self.container_id
        return attrs


class IdentityTable:
    def __init__(self, host: Resource, max_processes: int = MAX_PROCESSES, proc: str = procfs.PROC) -> None:
        """host: the resource every process's resource extends."""
        self._host = host.as_dict()
        self._max = max_processes
        self._proc = proc
        # pid -> (identity, resource, when it was read: CLOCK_MONOTONIC ns, the kernel's clock)
        self._known: collections.OrderedDict[int, tuple[ProcessIdentity, Resource, int]] = collections.OrderedDict()
        self._lock = threading.Lock()  # sensors drain on threads of their own

    def of(self, pid: int, comm: bytes | str = b"") -> ProcessIdentity:
        """The identity of pid; comm: the kernel's command name, for a process already gone."""
        return self._entry(pid, comm)[0]

    def resource(self, pid: int, comm: bytes | str = b"") -> Resource:
        """The resource of pid's telemetry: the host's, the process's and its service.name."""
        return self._entry(pid, comm)[1]

    def executed(self, pid: int, at_ns: int) -> None:
        """pid ran a new program at at_ns (the process sensor's exec event, kernel monotonic time):
        the next sensor to ask reads it again, from /proc/PID/exe as every other process is read
        (the kernel's resolved path, not execve's possibly symlinked one). An entry read after the
        exec already names the new program and stays: the process sensor drains on its own
        thread, often after another sensor has named a short-lived process that is gone now."""
        with self._lock:
            entry = self._known.get(pid)
            if entry is not None and entry[2] < at_ns:
                del self._known[pid]

    def known(self, pid: int) -> bool:
        with self._lock:
            return pid in self._known

    def _entry(self, pid: int, comm: bytes | str) -> tuple[ProcessIdentity, Resource]:
        if pid == 0:  # no process known (a socket accepted before the agent): not one to remember
            return self._read(0, comm)
        with self._lock:
            entry = self._known.get(pid)
            if entry is not None:
                self._known.move_to_end(pid)
                return entry[0], entry[1]
        read_ns = time.monotonic_ns()  # before the read: an exec after this makes it stale
        identity, resource = self._read(pid, comm)
        with self._lock:
            entry = self._known.setdefault(pid, (identity, resource, read_ns))
            while len(self._known) > self._max:
                self._known.popitem(last=False)
        return entry[0], entry[1]

    def _read(self, pid: int, comm: bytes | str) -> tuple[ProcessIdentity, Resource]:
        path = procfs.executable(pid, self._proc)
        identity = ProcessIdentity(pid, procfs.executable_name(pid, comm, self._proc), path,
                                   container_id_of_pid(pid) if pid else None)
        return identity, Resource.of({**self._host, **identity.attributes(), "service.name": identity.executable_name})
