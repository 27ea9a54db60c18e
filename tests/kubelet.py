"""A ConfigMap volume updated the way the kubelet does it (pkg/volume/util/atomic_writer.go):
each version of the files goes into a fresh hidden directory `..<timestamp>`, a `..data_tmp`
symlink to it is renamed over `..data` (one atomic rename), and every file name is a symlink
`NAME -> ..data/NAME` created once; the previous version's directory is then removed."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def project(volume: Path, files: dict[str, str]) -> None:
    """Make `files` (name -> content) the volume's content, as one atomic switch."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    version = volume / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_text(content)
    tmp = volume / "..data_tmp"
    os.symlink(version.name, tmp)
    os.rename(tmp, data)
    for name in files:
        if not (volume / name).is_symlink():
            os.symlink(f"..data/{name}", volume / name)
    for link in volume.iterdir():  # names the new version no longer has
        if link.is_symlink() and not link.name.startswith("..") and link.name not in files:
            link.unlink()
    if old is not None:
        shutil.rmtree(volume / old)
