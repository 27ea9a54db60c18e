"""struct security_event (bpf/events.h): its numpy mirror and its OTLP log record.

The kernel copies the process's ancestry (pid, start time, comm) into the event at the match,
so it is right even when the processes are gone by the time user space reads it; a file's
path is the one the kernel built for the opened file. Binaries and arguments are added from
/proc for processes still alive (a killed process is not), and only when /proc's start time
matches the event's, so a reused pid never lends its name.
"""

from __future__ import annotations

import ipaddress
import os
import signal

import numpy as np

from otelbpf.enrich import procfs
from otelbpf.pipeline.redact import redact_args
from otelbpf.security import bpf_audit
from otelbpf.security.compiler import RuleInfo
from otelbpf.security.hooks import HOOK_NAMES, SYSCALLS
from otelbpf.signals.model import LogRecord, Severity

EVENT_NAME = "security.policy.match"
ANCESTORS = 4
NS_PER_SEC = 1_000_000_000

ANCESTOR = np.dtype([("start_time_ns", "<u8"), ("pid", "<u4"), ("_pad", "<u4"), ("comm", "S16")])
SECURITY_EVENT = np.dtype([
    ("ktime_ns", "<u8"), ("start_time_ns", "<u8"), ("cgroup_id", "<u8"), ("args", "<u8", 3),
    ("rule", "<u4"), ("hook", "<u4"), ("syscall", "<u4"), ("action", "<u4"), ("signal", "<u4"),
    ("pid", "<u4"), ("tid", "<u4"), ("ppid", "<u4"), ("uid", "<u4"), ("gid", "<u4"), ("pidns", "<u4"),
    ("str_len", "<u4"), ("addr", "u1", 16), ("bpf", bpf_audit.SEC_BPF), ("comm", "S16"), ("binary", "S256"),
    ("str", "S256"),
    ("ancestors", ANCESTOR, ANCESTORS),
])
SEVERITY = {"debug": Severity.DEBUG, "info": Severity.INFO, "warn": Severity.WARN, "error": Severity.ERROR,
            "fatal": Severity.FATAL}
_TICKS = os.sysconf("SC_CLK_TCK")
_PERF_TARGETS = bpf_audit.PerfTargets()
# CLONE_NEW* bits of unshare's flags and setns's nstype (0: any)
_NAMESPACE_FLAGS = {0x20000: "mnt", 0x2000000: "cgroup", 0x4000000: "uts", 0x8000000: "ipc", 0x10000000: "user",
                    0x20000000: "pid", 0x40000000: "net", 0x80: "time"}


def _text(raw: bytes) -> str:
    """A C string from the kernel: up to its NUL (the buffer behind it is not cleared)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _proc_start_ns(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
        return int(stat[stat.rindex(")") + 2:].split()[19]) * NS_PER_SEC // _TICKS
    except (OSError, ValueError, IndexError):
        return None


def _same_process(pid: int, start_ns: int) -> bool:
    """/proc/pid is the process the kernel saw (start times agree to /proc's tick)."""
    seen = _proc_start_ns(pid)
    return seen is not None and abs(seen - start_ns) < 2 * NS_PER_SEC // _TICKS


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [_text(a) for a in raw.removesuffix(b"\0").split(b"\0")] if raw else None


def exec_id(boot_id: str, pid: int, start_ns: int) -> str:
    return f"{boot_id}:{start_ns}:{pid}"


def to_record(e: np.void, info: RuleInfo, *, boot_id: str, clock_offset: int, host_pidns: int,
              container_id: str | None, keep_secret_args: bool = False) -> LogRecord:
    pid, start = int(e["pid"]), int(e["start_time_ns"])
    hook = HOOK_NAMES.get(int(e["hook"]), str(int(e["hook"])))
    syscall = SYSCALLS.get(int(e["syscall"]), str(int(e["syscall"])))
    sig = int(e["signal"])
    action = info.action
    attrs: dict = {
        "otelbpf.security.policy": info.policy,
        "otelbpf.security.rule": info.index,
        "otelbpf.security.hook": hook,
        "otelbpf.security.syscall": syscall,
        "otelbpf.security.action": action,
        "process.pid": pid,
        "process.parent_pid": int(e["ppid"]),
        "process.user.id": int(e["uid"]),
        "process.group.id": int(e["gid"]),
        "thread.id": int(e["tid"]),
        "otelbpf.process.exec_id": exec_id(boot_id, pid, start),
        "otelbpf.process.comm": _text(e["comm"]),
        "otelbpf.security.in_container": int(e["pidns"]) != host_pidns,
    }
    if info.requested_action != action:
        attrs["otelbpf.security.action.requested"] = info.requested_action
    if sig:
        attrs["otelbpf.security.signal"] = _signal_name(sig)
    binary = _text(e["binary"])
    alive = _same_process(pid, start)
    if not binary and alive:
        binary = procfs.executable(pid) or ""
    if binary:
        attrs["process.executable.path"] = binary
        attrs["process.executable.name"] = os.path.basename(binary)
    args = _cmdline(pid) if alive else None
    if args:
        attrs["process.command_args"] = args if keep_secret_args else redact_args(args)
    if container_id:
        attrs["container.id"] = container_id
    _argument_attributes(e, hook, syscall, attrs)
    ancestors, ancestor_ids = [], []
    for a in e["ancestors"]:
        apid = int(a["pid"])
        if not apid:
            break
        name = _text(a["comm"])
        if _same_process(apid, int(a["start_time_ns"])):
            name = procfs.executable_name(apid, name)
        ancestors.append(f"{apid}:{name}")
        ancestor_ids.append(exec_id(boot_id, apid, int(a["start_time_ns"])))
    if ancestors:
        attrs["otelbpf.process.ancestors"] = ancestors
        attrs["otelbpf.process.ancestor_exec_ids"] = ancestor_ids
    body = f"{info.policy}: {attrs.get('process.executable.name') or attrs['otelbpf.process.comm']} " \
           f"{syscall} {attrs.get('file.path') or attrs.get('otelbpf.security.argument', '')}".rstrip()
    return LogRecord(int(e["ktime_ns"]) + clock_offset, EVENT_NAME, SEVERITY[info.severity], body, attrs)


def _argument_attributes(e: np.void, hook: str, syscall: str, attrs: dict) -> None:
    args = [int(a) for a in e["args"]]
    text = _text(e["str"][: int(e["str_len"])])
    if hook == "file_open":
        attrs["file.path"] = text  # the kernel's path of the opened file, not the string the process gave
        attrs["otelbpf.security.open_flags"] = args[0]
    elif hook in ("exec", "mount"):
        attrs["file.path"] = text
    elif hook == "module_load":
        attrs["otelbpf.security.argument"] = text
    elif hook == "connect":
        raw = bytes(e["addr"])
        addr = ipaddress.IPv6Address(raw)
        peer = addr.ipv4_mapped or addr
        attrs["network.peer.address"] = str(peer)
        attrs["network.peer.port"] = args[0]
        attrs["network.type"] = "ipv4" if addr.ipv4_mapped else "ipv6"
    elif hook == "privilege":
        ids = [a for a in args if a != 0xFFFFFFFF and a < 1 << 32]
        attrs["otelbpf.security.argument"] = ",".join(str(i) for i in (ids if syscall != "capset" else args[1:]))
    elif hook == "ptrace":
        attrs["otelbpf.security.ptrace.request"] = args[0]
        attrs["otelbpf.security.ptrace.target_pid"] = args[1]
    elif hook == "namespace":
        kinds = [name for bit, name in _NAMESPACE_FLAGS.items() if args[0] & bit]
        attrs["otelbpf.security.namespace.types"] = kinds
        if syscall == "setns" and text:
            attrs["otelbpf.security.namespace.target"] = text  # the nsfs file joined, as "mnt:[4026531841]"
        attrs["otelbpf.security.argument"] = " ".join([",".join(kinds), text if syscall == "setns" else ""]).strip()
    elif hook == "bpf":
        attrs.update(bpf_audit.attributes(e["bpf"], args[0], args[1], text, _PERF_TARGETS))
        attrs["otelbpf.security.argument"] = " ".join(
            str(attrs[k]) for k in ("otelbpf.security.bpf.command", "otelbpf.security.bpf.prog.type",
                                    "otelbpf.security.bpf.prog.name", "otelbpf.security.bpf.target") if attrs.get(k))


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"
