"""What this kernel and this process can do, probed rather than assumed.

Each hook kind is tested by loading (and, where cheap, attaching) a trivial program from
probe.bpf.o, so the answer is the kernel's own, not a guess from its version.
"""

from __future__ import annotations

import ctypes
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from otelbpf.kernel import barriers, libbpf
from otelbpf.kernel.errors import BpfError
from otelbpf.kernel.objects import BpfObject
from otelbpf.kernel.perf import open_cpu_clock

TRACEFS = Path("/sys/kernel/tracing")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
BPF_MAP_TYPE_RINGBUF = 27

# Hook kind -> (program in probe.bpf.o, whether the agent needs it).
HOOK_PROGRAMS = {
    "tracepoint": ("probe_tracepoint", True),
    "tp_btf": ("probe_tp_btf", True),
    "raw_tp": ("probe_raw_tp", False),
    "perf_event": ("probe_perf_event", False),
    "uprobe": ("probe_uprobe", False),
    "iter": ("probe_iter", False),
    "cgroup_skb": ("probe_cgroup_skb", False),
    "kprobe": ("probe_kprobe", False),
    "fentry": ("probe_fentry", False),
    "lsm": ("probe_lsm", False),
}


@dataclass(slots=True)
class Feature:
    name: str
    available: bool
    detail: str
    required: bool = False


def effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def ensure_tracefs() -> bool:
    """Mount tracefs if it is not mounted (libbpf finds tracepoint ids there)."""
    if (TRACEFS / "events").is_dir():
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(b"tracefs", str(TRACEFS).encode(), b"tracefs", 0, None) == 0


def has_tracepoint(group: str, name: str) -> bool:
    """Whether this kernel has the classic tracepoint group:name. Mounts tracefs first: on a
    freshly booted host nothing has, and every tracepoint would look missing."""
    ensure_tracefs()
    return (TRACEFS / "events" / group / name).is_dir()


def _probe_hook(obj_path: Path, program: str, cgroup_root: str | None) -> tuple[bool, str]:
    try:
        with BpfObject(obj_path) as obj:
            for p in obj.programs.values():
                p.autoload = p.name == program
            obj.load()
            prog = obj.programs[program]
            if program == "probe_perf_event":
                fd = open_cpu_clock(0, 1)
                try:
                    prog.attach_perf_event(fd)
                finally:
                    os.close(fd)
            elif program == "probe_uprobe":
                prog.attach_uprobe("libc.so.6", "getpid")
            elif program == "probe_iter":
                prog.attach_iter()
            elif program == "probe_cgroup_skb":
                if cgroup_root is None:
                    return False, "no cgroup v2 hierarchy mounted"
                prog.attach_cgroup(cgroup_root)
            else:
                prog.attach()
        return True, "loads and attaches"
    except BpfError as e:
        return False, str(e).splitlines()[0]


def probe(obj_path: Path, cgroup_root: str | None = None) -> list[Feature]:
    """The feature table; cgroup_root (the cgroup v2 mount) lets cgroup programs be tried."""
    caps = effective_capabilities()
    has = lambda cap: bool(caps >> cap & 1)
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    features = [
        Feature("root or CAP_BPF", os.geteuid() == 0 or has(CAP_BPF) or has(CAP_SYS_ADMIN),
                f"euid {os.geteuid()}, CapEff {caps:#x}", required=True),
        Feature("CAP_PERFMON", has(CAP_PERFMON) or has(CAP_SYS_ADMIN), "needed for tracing programs", True),
        Feature("BTF", BTF_VMLINUX.is_file(), str(BTF_VMLINUX) if BTF_VMLINUX.is_file()
                else "kernel built without CONFIG_DEBUG_INFO_BTF", True),
        Feature("tracefs", ensure_tracefs(), str(TRACEFS), True),
        Feature("memlock", True, "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes "
                "(kernels >= 5.11 account BPF memory to the cgroup instead)"),
        Feature("libbpf", libbpf.version() >= libbpf.LIBBPF_MIN_VERSION,
                ".".join(map(str, libbpf.version())), True),
    ]
    ring_ok = libbpf.libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, None) == 1
    features.append(Feature("ring buffer", ring_ok, "BPF_MAP_TYPE_RINGBUF", True))
    try:
        features.append(Feature("ring buffer ordering", True, barriers.ordering().how, True))
    except barriers.OrderingUnavailable as exc:
        features.append(Feature("ring buffer ordering", False, str(exc), True))
    privileged = features[0].available and features[2].available
    for kind, (program, required) in HOOK_PROGRAMS.items():
        if privileged:
            ok, detail = _probe_hook(obj_path, program, cgroup_root)
        else:
            ok, detail = False, "not probed: no privileges or no BTF"
        features.append(Feature(kind, ok, detail, required))
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    enabled = stats.exists() and stats.read_text().strip() == "1"
    features.append(Feature("bpf_stats", enabled, "kernel.bpf_stats_enabled=" + ("1" if enabled else "0")
                            + " (per-program run time and count)"))
    return features


def missing_required(features: list[Feature]) -> list[Feature]:
    return [f for f in features if f.required and not f.available]
