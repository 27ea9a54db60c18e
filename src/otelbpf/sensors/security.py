"""Security sensor: policies matched in the kernel, matches as OTLP log records.

Policies (YAML, otelbpf.security.policy) compile into the maps of bpf/security.bpf.o; only
matches reach the ring buffer. File opens and execs match the file the kernel opened: its
path built in the kernel, and its (device, inode), which poll() resolves again every second.
reload() replaces the policy set while the programs stay attached (see security.loader), so
no event is lost across a reload. Per-policy counters of matches, signals sent, events held
back by a rate limit and events lost to a full ring buffer are read from the kernel's per-rule
counters at every poll.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from otelbpf.enrich.containers import CgroupResolver, container_id_from_cgroup
from otelbpf.kernel import BpfObject, Program, loading
from otelbpf.kernel.features import has_tracepoint
from otelbpf.kernel.ringbuf import RingBufferReader
from otelbpf.security import events as ev
from otelbpf.security.compiler import RuleInfo, compile_policies
from otelbpf.security.hooks import HOOKS, PROCESS_PROGRAMS, tracepoint_of
from otelbpf.security.loader import PolicyMaps
from otelbpf.security.policy import Policy
from otelbpf.sensors.clock import monotonic_to_unix_offset
from otelbpf.sensors.proctable import read_boot_id
from otelbpf.signals.counters import CounterDeltas
from otelbpf.signals.model import LogBatch, Resource
from otelbpf.signals.registry import Registry

BPF_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "security.bpf.o"
SCOPE = "otelbpf.sensors.security"
IDENTITY_REFRESH_S = 1.0  # a protected file replaced (rename over it) is matched by identity again within this
STAT_COUNTERS = {"matches": "otelbpf.security.matches", "actions": "otelbpf.security.actions",
                 "limited": "otelbpf.security.rate_limited", "lost": "otelbpf.security.lost"}


def host_pidns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def unavailable_hooks() -> dict[str, str]:
    """Hooks whose tracepoints this kernel lacks, with the reason."""
    out = {}
    for name, hook in HOOKS.items():
        missing = [tracepoint_of(p) for p in hook.programs if not has_tracepoint("syscalls", tracepoint_of(p))]
        if hook.programs and len(missing) == len(hook.programs):
            out[name] = (f"this kernel has no syscalls:{missing[0]} tracepoint"
                         + (" (built without module support)" if name == "module_load" else ""))
    return out


class SecuritySensor:
    name = "security"

    def __init__(self, emit: Callable[[LogBatch], None], registry: Registry, resource: Resource,
                 policies: list[Policy], *, enforce: bool = False, keep_secret_args: bool = False,
                 ringbuf_bytes: int = 1 << 20, bpf_object: Path = BPF_OBJECT):
        self._emit = emit
        self._resource = resource
        self._policies = policies
        self._enforce = enforce
        self._keep_secret_args = keep_secret_args
        self._ringbuf_bytes = ringbuf_bytes
        self._bpf_object = bpf_object
        self._obj: BpfObject | None = None
        self._maps: PolicyMaps | None = None
        self._reader: RingBufferReader | None = None
        self._infos: dict[int, RuleInfo] = {}
        self._next_refresh = 0.0  # when the protected paths' identities are resolved again
        self._deltas = CounterDeltas()  # per rule slot: rules of one policy add to one series
        self._lock = threading.Lock()  # poll and reload come from different threads
        self._boot_id = read_boot_id()
        self._clock_offset = monotonic_to_unix_offset()
        self._host_pidns = host_pidns()
        self._cgroups = CgroupResolver()
        self._events = registry.counter("otelbpf.sensor.events", "Events read from the kernel", "{event}")
        self._counters = {k: registry.counter(name, f"Security rule {k} per policy", "{event}")
                          for k, name in STAT_COUNTERS.items()}

    @property
    def policies(self) -> list[Policy]:
        return list(self._policies)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        skip = unavailable_hooks()
        compiled = compile_policies(self._policies, enforce=self._enforce, unavailable_hooks=skip)
        with loading(self._bpf_object, layouts={"security_event": ev.SECURITY_EVENT},
                     rodata={"host_pidns": self._host_pidns, "self_pid": os.getpid()},
                     max_entries={"security_events": self._ringbuf_bytes}) as obj:
            for hook in HOOKS.values():
                for prog in hook.programs:
                    obj.programs[prog].autoload = has_tracepoint("syscalls", tracepoint_of(prog))
            obj.load()
            self._maps = PolicyMaps(obj)
            self._maps.apply(compiled)
            self._infos.update(compiled.infos)
            self._reader = RingBufferReader(obj.maps["security_events"], ev.SECURITY_EVENT.itemsize)
            for prog in PROCESS_PROGRAMS:
                obj.programs[prog].attach()
            self._maps.seed_processes()  # after the exec hook is on: no process falls between
            for program in obj.programs.values():
                if program.autoload and program.name not in PROCESS_PROGRAMS:
                    program.attach()
        self._obj = obj

    def reload(self, policies: list[Policy], *, enforce: bool | None = None) -> None:
        """Replace the policy set (and the enforce switch when given); raises PolicyError and
        keeps the old set if the new one is invalid."""
        with self._lock:
            if enforce is not None:
                self._enforce = enforce
            if self._maps is None:
                self._policies = policies
                return
            compiled = compile_policies(policies, first_slot=self._maps.next_first_slot(), enforce=self._enforce,
                                        unavailable_hooks=unavailable_hooks())
            self._infos.update(compiled.infos)
            self._account_stats()
            old_slots = list(self._maps.live.rules) if self._maps.live else []
            self._maps.apply(compiled)
            self._account_stats(old_slots)
            for slot in old_slots:
                self._deltas.forget(slot)
            self._policies = policies

    def programs(self) -> list[Program]:
        return [p for p in self._obj.programs.values() if p.autoload] if self._obj else []

    def poll(self, timeout: float) -> int:
        if self._reader is None:
            return 0
        n = 0
        if self._reader.wait(timeout):
            n = self._decode()
        with self._lock:
            self._account_stats()
            now = time.monotonic()
            if self._maps is not None and now >= self._next_refresh:
                self._next_refresh = now + IDENTITY_REFRESH_S
                self._maps.refresh_identities()
        return n

    def stop(self) -> None:
        if self._obj is None:
            return
        self._obj.detach_all()
        if self._reader is not None:
            self._decode()
            self._account_stats()
            self._reader.close()
            self._reader = None
        self._obj.close()
        self._obj = None

    # -- decoding -------------------------------------------------------------------------
    def _decode(self) -> int:
        assert self._reader is not None  # poll() and stop() check
        batch = self._reader.read()
        records = batch.fixed(ev.SECURITY_EVENT)
        if not len(records):
            return 0
        self._events.add(len(records), {"sensor": self.name})
        out = []
        for e in records:
            info = self._infos.get(int(e["rule"]))
            if info is None:
                continue  # a slot cleared before this event was read: cannot name its policy
            cgroup = self._cgroups.resolve(int(e["cgroup_id"]))
            out.append(ev.to_record(e, info, boot_id=self._boot_id, clock_offset=self._clock_offset,
                                    host_pidns=self._host_pidns,
                                    container_id=container_id_from_cgroup(cgroup) if cgroup else None,
                                    keep_secret_args=self._keep_secret_args))
        if out:
            self._emit(LogBatch(self._resource, SCOPE, out))
        return len(out)

    def _account_stats(self, slots: list[int] | None = None) -> None:
        if self._maps is None:
            return
        for slot in slots if slots is not None else list(self._maps.live.rules if self._maps.live else []):
            info = self._infos.get(slot)
            if info is None:
                continue
            total = self._maps.rule_stats(slot)
            attrs = {"otelbpf.security.policy": info.policy, "otelbpf.security.action": info.action}
            for field, counter in self._counters.items():
                self._deltas.report(counter, int(total[field]), attrs, source=slot)

