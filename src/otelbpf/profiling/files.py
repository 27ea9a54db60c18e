"""Where the agent's continuous profiles go today: one pprof file per interval."""

from __future__ import annotations

import os
import time
from pathlib import Path

from otelbpf.profiling import pprof
from otelbpf.profiling.model import Profile


class PprofDirectory:
    """Writes each profile to DIR/cpu-<UTC time>.pb.gz (via a temporary name, so a reader
    never sees half a file); keeps the newest `keep` files."""

    def __init__(self, directory: str, keep: int = 360):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def __call__(self, profile: Profile) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(profile.start_unix_ns / 1e9))
        path = self.directory / f"cpu-{stamp}-{profile.start_unix_ns % 1_000_000_000:09d}.pb.gz"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pprof.to_gzip(profile))
        os.replace(tmp, path)
        for old in sorted(self.directory.glob("cpu-*.pb.gz"))[:-self.keep]:
            old.unlink(missing_ok=True)
