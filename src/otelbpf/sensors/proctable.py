"""A bounded table of the host's processes, kept current from fork/exec/exit events.

Times are kernel nanoseconds since boot, as BPF programs see them (bpf_ktime_get_ns).
Processes seeded from /proc carry /proc's start time, which is boot-time based and tick
(usually 10 ms) precise; it equals the monotonic time unless the host has been suspended.

exec_id names one program image run by one process, unique across processes, execs and
(probably) boots: f"{boot}:{time_ns}:{pid}", where boot is the first 8 hex digits of
/proc/sys/kernel/random/boot_id and time_ns is when the image started: the exec time, or the
fork time for a child still running its parent's image (a new process, so a new id).

Only processes (thread group leaders) belong here: a sensor should not report thread
creation as a fork.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from otelbpf.enrich.procfs import readlink

NS_PER_SEC = 1_000_000_000


@dataclass(slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    start_time_ns: int
    exec_id: str
    exe_path: str = ""
    exe_name: str = ""
    args: list[str] = field(default_factory=list)
    uid: int | None = None
    gid: int | None = None
    cgroup_id: int | None = None
    container_id: str | None = None
    cwd: str | None = None
    exited: bool = False
    exit_code: int | None = None


def read_boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip().replace("-", "")[:8]
    except OSError:
        return "00000000"


class ProcessTable:
    """At most `capacity` processes; O(1) per event.

    An exited process stays for `exit_grace_ns` after its exit (and among at most
    `max_exited` exited entries) so that late events can still name it. When the table is
    full, exited entries go first, then the least recently used; `evictions` counts both.
    """

    def __init__(
        self,
        capacity: int,
        *,
        exit_grace_ns: int = 5 * NS_PER_SEC,
        max_exited: int | None = None,
        boot_id: str | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 (got {capacity})")
        self.capacity = capacity
        self.exit_grace_ns = exit_grace_ns
        self.max_exited = max_exited if max_exited is not None else max(1, capacity // 4)
        self.boot_id = boot_id if boot_id is not None else read_boot_id()
        self.evictions = 0
        self._procs: OrderedDict[int, ProcessInfo] = OrderedDict()  # least recently used first
        # (exit time, entry) in exit order; stale when the pid now names another entry.
        self._exited: deque[tuple[int, ProcessInfo]] = deque()

    def __len__(self) -> int:
        return len(self._procs)

    def __contains__(self, pid: int) -> bool:
        return pid in self._procs

    def exec_id(self, pid: int, time_ns: int) -> str:
        return f"{self.boot_id}:{time_ns}:{pid}"

    def get(self, pid: int) -> ProcessInfo | None:
        info = self._procs.get(pid)
        if info is not None:
            self._procs.move_to_end(pid)
        return info

    def on_fork(
        self,
        pid: int,
        ppid: int,
        time_ns: int,
        *,
        uid: int | None = None,
        gid: int | None = None,
        cgroup_id: int | None = None,
        container_id: str | None = None,
    ) -> ProcessInfo:
        """A new process: it runs its parent's image (exe, args, cwd) until it execs."""
        self._expire(time_ns)
        parent = self.get(ppid)
        child = ProcessInfo(pid=pid, ppid=ppid, start_time_ns=time_ns, exec_id=self.exec_id(pid, time_ns))
        if parent is not None:
            child.exe_path, child.exe_name, child.args = parent.exe_path, parent.exe_name, list(parent.args)
            child.uid, child.gid, child.cwd = parent.uid, parent.gid, parent.cwd
            child.cgroup_id, child.container_id = parent.cgroup_id, parent.container_id
        for name, value in (("uid", uid), ("gid", gid), ("cgroup_id", cgroup_id), ("container_id", container_id)):
            if value is not None:
                setattr(child, name, value)
        return self._put(child)

    def on_exec(
        self,
        pid: int,
        time_ns: int | None = None,
        *,
        exe_path: str,
        args: list[str],
        start_time_ns: int | None = None,
        ppid: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        cgroup_id: int | None = None,
        container_id: str | None = None,
        cwd: str | None = None,
    ) -> ProcessInfo:
        """A process replaced its image at `time_ns`. `start_time_ns`, when the event has
        it, is the process start time the kernel keeps and wins over what the table had.
        Without `time_ns` the start time stands in for it, and exec_id is then unique per
        process rather than per exec. Unknown pids (forked before the agent saw them) are
        added. A new entry object is stored, so entries handed out before stay as they were."""
        exec_time = time_ns if time_ns is not None else start_time_ns
        if exec_time is None:
            raise ValueError("on_exec needs time_ns (the exec time) or start_time_ns")
        self._expire(exec_time)
        old = self._procs.get(pid)
        if old is None:
            old = ProcessInfo(pid=pid, ppid=ppid or 0, start_time_ns=start_time_ns or exec_time, exec_id="")
        info = replace(
            old,
            ppid=ppid if ppid is not None else old.ppid,
            start_time_ns=start_time_ns if start_time_ns is not None else old.start_time_ns,
            exec_id=self.exec_id(pid, exec_time),
            exe_path=exe_path,
            exe_name=os.path.basename(exe_path),
            args=list(args),
            uid=uid if uid is not None else old.uid,
            gid=gid if gid is not None else old.gid,
            cgroup_id=cgroup_id if cgroup_id is not None else old.cgroup_id,
            container_id=container_id if container_id is not None else old.container_id,
            cwd=cwd if cwd is not None else old.cwd,
            exited=False,
            exit_code=None,
        )
        return self._put(info)

    def on_exit(self, pid: int, time_ns: int, exit_code: int | None = None) -> ProcessInfo | None:
        """Mark the process exited; it stays findable for the grace period."""
        self._expire(time_ns)
        info = self._procs.get(pid)
        if info is None or info.exited:
            return info
        info.exited, info.exit_code = True, exit_code
        self._exited.append((time_ns, info))
        while len(self._exited) > self.max_exited:
            self._drop_exited(self._exited.popleft()[1])
        return info

    def ancestry(self, pid: int, max_depth: int = 16) -> list[ProcessInfo]:
        """The parent, grandparent, ... of `pid`, nearest first; stops at an unknown pid, a
        cycle, or a pid reused by a process younger than its supposed child."""
        chain: list[ProcessInfo] = []
        current = self._procs.get(pid)
        seen = {pid}
        while current is not None and len(chain) < max_depth:
            parent = self.get(current.ppid)
            if parent is None or parent.pid in seen or parent.start_time_ns > current.start_time_ns:
                break
            chain.append(parent)
            seen.add(parent.pid)
            current = parent
        return chain

    def seed_from_proc(
        self,
        proc_root: str = "/proc",
        *,
        cgroup_root: str | None = None,
        container_id_of: Callable[[str], str | None] | None = None,
    ) -> int:
        """Add the processes already running; return how many were added. Pids already in
        the table are left alone (events are fresher). With `cgroup_root` (the cgroup v2
        mount) cgroup_id is the inode of the process's cgroup directory; `container_id_of`
        maps its cgroup path to a container id."""
        ticks_per_sec = os.sysconf("SC_CLK_TCK")
        added = 0
        for name in os.listdir(proc_root):
            if not name.isdigit() or int(name) in self._procs:
                continue
            try:
                info = _read_proc(os.path.join(proc_root, name), int(name), ticks_per_sec, self.boot_id)
            except (OSError, ValueError, IndexError):
                continue  # exited while we read it
            cgroup_path = _read_cgroup_v2_path(os.path.join(proc_root, name))
            if cgroup_path is not None:
                if cgroup_root is not None:
                    try:
                        info.cgroup_id = os.stat(cgroup_root + cgroup_path.rstrip("/")).st_ino
                    except OSError:
                        pass  # the cgroup went away, or the process lives in another namespace
                if container_id_of is not None:
                    info.container_id = container_id_of(cgroup_path)
            self._put(info)
            added += 1
        return added

    def _put(self, info: ProcessInfo) -> ProcessInfo:
        if info.pid not in self._procs:
            while len(self._procs) >= self.capacity:
                self._evict_one()
        self._procs[info.pid] = info
        self._procs.move_to_end(info.pid)
        return info

    def _evict_one(self) -> None:
        while self._exited:
            _, info = self._exited.popleft()
            if self._drop_exited(info):
                self.evictions += 1
                return
        self._procs.popitem(last=False)
        self.evictions += 1

    def _drop_exited(self, info: ProcessInfo) -> bool:
        if self._procs.get(info.pid) is info:
            del self._procs[info.pid]
            return True
        return False  # the pid was reused since; that entry is someone else's

    def _expire(self, now_ns: int) -> None:
        while self._exited and now_ns - self._exited[0][0] >= self.exit_grace_ns:
            self._drop_exited(self._exited.popleft()[1])


def _read_proc(pid_dir: str, pid: int, ticks_per_sec: int, boot_id: str) -> ProcessInfo:
    with open(os.path.join(pid_dir, "stat"), "rb") as f:
        stat = f.read().decode("utf-8", "replace")
    # comm may hold spaces and parentheses: split at the last ")".
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    ppid, start_ticks = int(fields[1]), int(fields[19])
    start_ns = start_ticks * NS_PER_SEC // ticks_per_sec
    exe_path = readlink(os.path.join(pid_dir, "exe")) or ""
    exe_path = exe_path.removesuffix(" (deleted)")
    with open(os.path.join(pid_dir, "cmdline"), "rb") as f:
        raw_args = f.read()
    uid, gid = _read_ids(os.path.join(pid_dir, "status"))
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        start_time_ns=start_ns,
        exec_id=f"{boot_id}:{start_ns}:{pid}",
        exe_path=exe_path,
        exe_name=os.path.basename(exe_path) or comm,  # kernel threads have no exe
        args=_split_cmdline(raw_args),
        uid=uid,
        gid=gid,
        cwd=readlink(os.path.join(pid_dir, "cwd")),
    )


def _split_cmdline(raw: bytes) -> list[str]:
    # Programs that rewrite their title (setproctitle) may drop the final NUL.
    parts = raw.removesuffix(b"\0").split(b"\0") if raw else []
    return [p.decode("utf-8", "replace") for p in parts]


def _read_ids(status_path: str) -> tuple[int | None, int | None]:
    """Real uid and gid: the ids bpf_get_current_uid_gid reports, so seeded and live agree."""
    uid = gid = None
    with open(status_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
                break
    return uid, gid


def _read_cgroup_v2_path(pid_dir: str) -> str | None:
    try:
        with open(os.path.join(pid_dir, "cgroup"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None
