"""Names for what the bpf hook reports: commands, program types, perf event attach targets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

PERF_EVENT_IOC_SET_BPF = 0x40042408
COMMANDS = {5: "prog_load", 8: "prog_attach", 17: "raw_tracepoint_open", 28: "link_create",
            PERF_EVENT_IOC_SET_BPF: "perf_event_set_bpf"}
# enum bpf_prog_type (include/uapi/linux/bpf.h: a stable ABI)
PROG_TYPES = ("unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp", "perf_event",
              "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops", "sk_skb", "cgroup_device",
              "sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local", "lirc_mode2", "sk_reuseport",
              "flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable", "cgroup_sockopt", "tracing",
              "struct_ops", "ext", "lsm", "sk_lookup", "syscall", "netfilter")
PERF_TYPES = {0: "hardware", 1: "software", 2: "tracepoint", 3: "hw_cache", 4: "raw", 5: "breakpoint"}
TRACEFS = Path("/sys/kernel/tracing")
PMU_DIR = Path("/sys/bus/event_source/devices")
RESCAN_S = 10.0

SEC_BPF = np.dtype([("tag", "u1", 8), ("prog_id", "<u4"), ("prog_type", "<u4"), ("attach_type", "<u4"),
                    ("ret", "<i4"), ("name", "S16")])


def prog_type_name(n: int) -> str:
    return PROG_TYPES[n] if 0 <= n < len(PROG_TYPES) else str(n)


class PerfTargets:
    """A perf event's (type, config) as a probe name: tracepoint ids from tracefs, the dynamic
    PMU types (kprobe, uprobe) from sysfs; read once, again when an unknown one comes."""

    def __init__(self, tracefs: Path = TRACEFS, pmus: Path = PMU_DIR):
        self._tracefs, self._pmus = tracefs, pmus
        self._tracepoints: dict[int, str] = {}
        self._pmu_types: dict[int, str] = {}
        self._scanned = -RESCAN_S

    def name(self, perf_type: int, config: int) -> str:
        unknown_pmu = perf_type not in PERF_TYPES and perf_type not in self._pmu_types
        if unknown_pmu or (perf_type == 2 and config not in self._tracepoints):
            self._scan()
        if perf_type == 2:
            return f"tracepoint:{self._tracepoints.get(config, config)}"
        kind = PERF_TYPES.get(perf_type) or self._pmu_types.get(perf_type) or f"perf_type_{perf_type}"
        return f"{kind}:{config:#x}"

    def _scan(self) -> None:
        now = time.monotonic()
        if now - self._scanned < RESCAN_S:
            return
        self._scanned = now
        for pmu in ("kprobe", "uprobe"):
            try:
                self._pmu_types[int((self._pmus / pmu / "type").read_text())] = pmu
            except (OSError, ValueError):
                continue
        events = self._tracefs / "events"
        try:
            groups = os.listdir(events)
        except OSError:
            return
        for group in groups:
            try:
                names = os.listdir(events / group)
            except OSError:  # a file (enable, header_page ...), or gone
                continue
            for name in names:
                try:
                    self._tracepoints[int((events / group / name / "id").read_text())] = f"{group}:{name}"
                except (OSError, ValueError):
                    continue


def attributes(b: np.void, command: int, target: int, text: str, perf: PerfTargets) -> dict:
    """The bpf hook's attributes from struct sec_bpf and the event's arguments."""
    name = bytes(b["name"]).split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
    cmd = COMMANDS.get(command, str(command))
    out: dict = {
        "otelbpf.security.bpf.command": cmd,
        "otelbpf.security.bpf.prog.type": prog_type_name(int(b["prog_type"])),
        "otelbpf.security.bpf.prog.name": name,
        "otelbpf.security.bpf.return": int(b["ret"]),
    }
    if int(b["prog_id"]):
        out["otelbpf.security.bpf.prog.id"] = int(b["prog_id"])
        out["otelbpf.security.bpf.prog.tag"] = bytes(b["tag"]).hex()
    if command == PERF_EVENT_IOC_SET_BPF:
        if int(b["ret"]) == 0:
            out["otelbpf.security.bpf.target"] = perf.name(int(b["attach_type"]), target)
    else:
        out["otelbpf.security.bpf.attach_type"] = int(b["attach_type"])
        if text:
            out["otelbpf.security.bpf.target"] = text  # a raw tracepoint's or a BTF function's name
        elif command in (8, 28):
            out["otelbpf.security.bpf.target_fd"] = target
    return out
