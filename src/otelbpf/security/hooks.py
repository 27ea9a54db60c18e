"""The hooks a policy can name, mirrored from the enums in bpf/security.bpf.c."""

from __future__ import annotations

from dataclasses import dataclass

MAX_RULES = 64          # rule slots in the kernel; half of them per generation (see loader)
MAX_VALUES = 8          # values per numeric list, uids and cgroups of one rule

ACTIONS = {"post": 1, "sigkill": 2, "signal": 3}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}


@dataclass(frozen=True, slots=True)
class Hook:
    id: int
    programs: tuple[str, ...]        # BPF programs (tracepoints) that implement it
    arguments: tuple[str, ...]       # argument filters a rule may use


HOOKS: dict[str, Hook] = {
    "file_open": Hook(1, ("sec_openat", "sec_openat2", "sec_open", "sec_creat", "sec_open_by_handle_at"), ("paths",)),
    "exec": Hook(2, (), ("paths",)),  # matched in sec_exec (sched_process_exec), always attached
    "connect": Hook(3, ("sec_connect",), ("addresses", "ports")),
    "privilege": Hook(4, ("sec_setuid", "sec_setgid", "sec_setreuid", "sec_setregid", "sec_setresuid",
                          "sec_setresgid", "sec_capset"), ("ids",)),
    "module_load": Hook(5, ("sec_init_module", "sec_finit_module"), ()),
    "ptrace": Hook(6, ("sec_ptrace",), ("requests",)),
    "mount": Hook(7, ("sec_mount",), ("paths",)),
    "bpf": Hook(8, ("sec_bpf", "sec_ioctl"), ()),  # bpf() loads and attaches, perf SET_BPF ioctls
    "namespace": Hook(9, ("sec_setns", "sec_unshare"), ()),
}
HOOK_NAMES = {h.id: name for name, h in HOOKS.items()}

# Programs that keep per-process binary selector state (and match exec rules); always attached.
PROCESS_PROGRAMS = ("sec_exec", "sec_fork", "sec_exit")

# File opens are matched at syscall exit, on the file the kernel opened; bpf() and ioctl() at
# exit too, where the program exists (or the call failed).
_AT_EXIT = ("sec_openat", "sec_openat2", "sec_open", "sec_creat", "sec_open_by_handle_at", "sec_bpf", "sec_ioctl")


def tracepoint_of(program: str) -> str:
    """The syscalls:* tracepoint a hook program attaches to."""
    name = program.removeprefix("sec_")
    return f"sys_exit_{name}" if program in _AT_EXIT else f"sys_enter_{name}"

SYSCALLS = {1: "openat", 2: "openat2", 3: "open", 4: "creat", 5: "execve", 6: "execveat", 7: "connect",
            8: "setuid", 9: "setgid", 10: "setreuid", 11: "setregid", 12: "setresuid", 13: "setresgid",
            14: "capset", 15: "init_module", 16: "finit_module", 17: "ptrace", 18: "mount", 19: "bpf", 20: "ioctl",
            21: "setns", 22: "unshare", 23: "open_by_handle_at"}
