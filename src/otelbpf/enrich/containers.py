"""Container ids from cgroup paths (the layouts: enrich.cgroups), and cgroup v2 ids back to
their paths."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

from otelbpf.enrich.cgroups import cgroup_identity_of_pid, parse_cgroup_path


def container_id_from_cgroup(path: str) -> str | None:
    """The 64-hex container id in a cgroup path such as /proc/<pid>/cgroup shows, or None."""
    return parse_cgroup_path(path).container_id


def container_id_of_pid(pid: int) -> str | None:
    """The container id of a running process, from /proc/<pid>/cgroup (None: not in a
    container, or gone)."""
    return cgroup_identity_of_pid(pid)[0].container_id


def find_cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup, or /sys/fs/cgroup/unified
    on hybrid hosts; None on cgroup v1-only hosts."""
    mounts = []
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                fields, _, fs = line.partition(" - ")
                if fs.split(" ", 1)[0] == "cgroup2":
                    mounts.append(fields.split(" ")[4])
    except OSError:
        return None
    if "/sys/fs/cgroup" in mounts:
        return "/sys/fs/cgroup"
    return mounts[0] if mounts else None


class CgroupResolver:
    """Maps a cgroup v2 id (the cgroup directory's inode number, what the BPF helper
    bpf_get_current_cgroup_id returns) to its path relative to the cgroup root ("/" for the
    root, "/system.slice/x.scope" otherwise, as /proc/<pid>/cgroup shows it).

    The hierarchy is walked once on the first lookup and again on a miss, but at most once
    every `min_rescan_interval` seconds, so a stream of unknown ids cannot turn into a
    stream of walks. The cache holds at most `max_entries` ids (least recently used go
    first); a rescan drops ids whose cgroups were removed. A cached id never names another
    cgroup later: on 64-bit kernels kernfs puts a generation number in the id's high 32 bits,
    so ids are not reused. Not thread safe: use it from one
    thread.
    """

    def __init__(
        self,
        root: str | None = None,
        max_entries: int = 65536,
        min_rescan_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root or find_cgroup2_root() or "/sys/fs/cgroup"
        self.max_entries = max_entries
        self.min_rescan_interval = min_rescan_interval
        self._clock = clock
        self._paths: OrderedDict[int, str] = OrderedDict()
        self._last_scan: float | None = None
        self.rescans = 0
        self.misses = 0  # lookups that found no cgroup
        self.evictions = 0  # ids dropped because the cache was full

    def resolve(self, cgroup_id: int) -> str | None:
        path = self._paths.get(cgroup_id)
        if path is not None:
            self._paths.move_to_end(cgroup_id)
            return path
        now = self._clock()
        if self._last_scan is None or now - self._last_scan >= self.min_rescan_interval:
            self._last_scan = now
            path = self._rescan(cgroup_id)
        if path is None:
            self.misses += 1
        return path

    def _rescan(self, wanted: int) -> str | None:
        """Rebuild the cache from the hierarchy; return the path of `wanted` if it exists."""
        self.rescans += 1
        paths: OrderedDict[int, str] = OrderedDict()
        found = None
        try:
            pending = [(os.stat(self.root).st_ino, "/", self.root)]
        except OSError:
            pending = []
        while pending:
            ino, rel, abs_path = pending.pop()
            paths[ino] = rel
            if ino == wanted:
                found = rel
            if len(paths) > self.max_entries:
                paths.popitem(last=False)
                self.evictions += 1
            try:
                with os.scandir(abs_path) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            child = rel.rstrip("/") + "/" + entry.name
                            pending.append((entry.inode(), child, entry.path))
            except OSError:  # removed while walking: its children went with it
                continue
        if found is not None:  # keep the id just asked for even when the tree overflowed
            paths[wanted] = found
            paths.move_to_end(wanted)
            while len(paths) > self.max_entries:
                paths.popitem(last=False)
                self.evictions += 1
        self._paths = paths
        return found
