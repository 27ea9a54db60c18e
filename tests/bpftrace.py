"""bpftrace as an independent witness, started the way a freshly booted host needs it.

bpftrace finds tracepoints under tracefs, which nothing mounts on a fresh boot (the agent
mounts it for itself). The cross-checks start from that state on purpose: `fresh_tracefs()`
takes tracefs away first, `attach()` mounts it again as a user would and waits until
bpftrace's probes are attached.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from otelbpf.kernel.features import TRACEFS, ensure_tracefs

MNT_DETACH = 2


def tracefs_mounted() -> bool:
    return (TRACEFS / "events").is_dir()


def fresh_tracefs() -> None:
    """Unmount tracefs where it is mounted, as on a freshly booted host (lazily: a reader
    that holds a file there keeps its view, new lookups no longer find it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for path in (TRACEFS, Path("/sys/kernel/debug/tracing")):
        if (path / "events").is_dir() and libc.umount2(str(path).encode(), MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), f"cannot unmount {path}")
    assert not tracefs_mounted()


def attach(bpftrace: str, script: str) -> subprocess.Popen:
    """bpftrace running `script`, returned once it has attached its probes."""
    assert ensure_tracefs(), f"cannot mount tracefs at {TRACEFS}"
    trace = subprocess.Popen([bpftrace, "-e", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    banner: list[str] = []  # warnings (RLIMIT_MEMLOCK without CAP_SYS_RESOURCE) may come first
    while len(banner) < 20 and not any("Attaching" in line for line in banner):
        line = trace.stdout.readline()
        if not line:
            break
        banner.append(line)
    if not any("Attaching" in line for line in banner):
        trace.kill()
        trace.wait()
        raise AssertionError("bpftrace did not attach:\n" + "".join(banner))
    return trace


def maps(trace: subprocess.Popen) -> dict[str, int]:
    """Stop bpftrace (SIGINT: it prints its maps and exits) and read its @counters."""
    trace.send_signal(2)
    out, _ = trace.communicate(timeout=30)
    return {line.split(":")[0].strip("@"): int(line.split(":")[1]) for line in out.splitlines()
            if line.startswith("@")}
