"""Process lifecycle sensor: exec, fork and exit of every process, as OTLP log records.

The BPF side (bpf/process.bpf.c) filters threads out and emits one record per event to a
ring buffer; here records are drained in bulk, folded into the process table (which keeps
ancestry for every event), and turned into process.exec / process.exit log records with
semantic-convention attributes plus counters by executable.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from otelbpf.enrich import procfs
from otelbpf.enrich.containers import CgroupResolver, container_id_from_cgroup
from otelbpf.enrich.identity import IdentityTable
from otelbpf.kernel import BpfObject, Program, loading
from otelbpf.kernel.objects import possible_cpus
from otelbpf.kernel.ringbuf import DRAIN_GAP, RecordBatch, RingBufferReader
from otelbpf.pipeline.redact import redact_args
from otelbpf.sensors import process_events as ev
from otelbpf.sensors.backlog import Backlog
from otelbpf.sensors.clock import monotonic_to_unix_offset
from otelbpf.sensors.proctable import ProcessInfo, ProcessTable
from otelbpf.signals.counters import CounterDeltas
from otelbpf.signals.model import LogBatch, LogRecord, Resource, Severity
from otelbpf.signals.registry import Registry

BPF_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "process.bpf.o"
SCOPE = "otelbpf.sensors.process"
BACKLOG_BYTES = 64 << 20  # exec bursts decoded behind the kernel: ~300k events at ~200 bytes
ANCESTRY_DEPTH = 8
MAX_CHAINS = 4096  # ancestries remembered, by the parent's exec id; forgotten all at once when full


class ProcessSensor:
    name = "process"

    def __init__(self, emit: Callable[[LogBatch], None], registry: Registry, resource: Resource, *,
                 max_args_bytes: int = 4096, keep_secret_args: bool = False, table_size: int = 32768,
                 ringbuf_bytes: int = 4 << 20, bpf_object: Path = BPF_OBJECT,
                 identities: IdentityTable | None = None):
        """identities: the agent's table of process identities, told of every exec."""
        self._emit = emit
        self._identities = identities
        self._resource = resource
        self._max_args_bytes = max_args_bytes
        self._keep_secret_args = keep_secret_args
        self._ringbuf_bytes = ringbuf_bytes
        self._bpf_object = bpf_object
        self.table = ProcessTable(table_size)
        self._chains: dict[str, list[str]] = {}  # parent's exec id -> the ancestry of its children
        self._cgroups = CgroupResolver()
        self._clock_offset = monotonic_to_unix_offset()
        self._obj: BpfObject | None = None
        self._reader: RingBufferReader | None = None
        self._backlog: Backlog | None = None
        self._deltas = CounterDeltas()
        self._events = registry.counter("otelbpf.sensor.events", "Events read from the kernel", "{event}")
        self._drops = registry.counter("otelbpf.sensor.dropped",
                                       "Events the kernel could not queue (ring buffer full)", "{event}")
        self._execs = registry.counter("otelbpf.process.execs", "Programs executed", "{exec}")
        self._forks = registry.counter("otelbpf.process.forks", "Processes created", "{process}")
        self._exits = registry.counter("otelbpf.process.exits", "Processes ended", "{process}")
        registry.gauge("otelbpf.process.table.size", "Processes in the process table", "{process}",
                       lambda: [({}, len(self.table))])

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        with loading(self._bpf_object, layouts={"process_event": ev.PROCESS_EVENT, "exec_event": ev.EXEC_EVENT},
                     rodata={"max_args_bytes": self._max_args_bytes},
                     max_entries={"exec_scratch_map": possible_cpus(), "process_events": self._ringbuf_bytes}) as obj:
            obj.load()
            self._reader = RingBufferReader(obj.maps["process_events"])
            self._backlog = Backlog(self._handle, BACKLOG_BYTES, self.name)
            # Processes already running are known before the first event arrives.
            self.table.seed_from_proc(cgroup_root=self._cgroups.root, container_id_of=container_id_from_cgroup)
            obj.attach_all()
        self._obj = obj

    def programs(self) -> list[Program]:
        return list(self._obj.programs.values()) if self._obj else []

    def poll(self, timeout: float) -> int:
        if self._reader is None:
            return 0
        n = 0
        if self._reader.wait(timeout, DRAIN_GAP):
            batch = self._reader.read()
            n = len(batch)
            assert self._backlog is not None  # start() sets it with the reader
            self._backlog.put(batch)
        if self._deltas.due():
            self._account_kernel_drops()
        return n

    def flush(self, timeout: float = 10.0) -> bool:
        """Decode everything read so far (tests and shutdown use it)."""
        return self._backlog.wait_idle(timeout) if self._backlog else True

    def stop(self) -> None:
        if self._obj is None:
            return
        self._obj.detach_all()  # no new events; then take what is still queued
        assert self._backlog is not None  # start() sets it before _obj
        if self._reader is not None:
            self._backlog.put(self._reader.read())
            self._account_kernel_drops()
            self._reader.close()
            self._reader = None
        self._backlog.close()
        self._obj.close()
        self._obj = None

    # -- decoding -------------------------------------------------------------------------
    def _account_kernel_drops(self) -> None:
        if self._obj is not None:
            total = int(self._obj.maps["process_drops"].percpu_u64().sum())
            self._deltas.report(self._drops, total, {"sensor": self.name, "reason": "ring_buffer_full"})

    def _handle(self, batch: RecordBatch) -> None:
        heads = batch.fixed(ev.PROCESS_EVENT)
        self._events.add(len(heads), {"sensor": self.name})
        records: list[LogRecord] = []
        # Counted per executable once per batch, not once per event (an add sorts its attributes).
        execs: collections.Counter[str] = collections.Counter()
        exits: collections.Counter[str] = collections.Counter()
        forks = 0
        for i in range(len(heads)):
            head = heads[i]
            kind = int(head["type"])
            if kind == ev.FORK:
                self.table.on_fork(int(head["pid"]), int(head["ppid"]), int(head["start_time_ns"]))
                forks += 1
            elif kind == ev.EXEC:
                records.append(self._exec_record(head, ev.exec_details(batch, i), execs))
            elif kind == ev.EXIT:
                records.append(self._exit_record(head, exits))
        if forks:
            self._forks.add(forks)
        for counter, names in ((self._execs, execs), (self._exits, exits)):
            for name, n in names.items():
                counter.add(n, {"process.executable.name": name})
        if records:
            self._emit(LogBatch(self._resource, SCOPE, records))

    def _exec_record(self, head: np.void, details: ev.ExecDetails, execs: collections.Counter[str]) -> LogRecord:
        pid = int(head["pid"])
        cgroup_path = self._cgroups.resolve(int(head["cgroup_id"]))
        exe_path = _resolve_exe_path(pid, details.filename)
        info = self.table.on_exec(
            pid, int(head["ktime_ns"]), ppid=int(head["ppid"]), start_time_ns=int(head["start_time_ns"]),
            exe_path=exe_path,
            args=details.args, uid=int(head["uid"]), gid=int(head["gid"]), cgroup_id=int(head["cgroup_id"]),
            container_id=container_id_from_cgroup(cgroup_path) if cgroup_path else None,
            cwd=procfs.working_directory(pid))
        if self._identities is not None:
            self._identities.executed(pid, int(head["ktime_ns"]))
        execs[info.exe_name] += 1
        args = details.args if self._keep_secret_args else redact_args(details.args)
        attrs = self._process_attributes(info)
        attrs["process.command_args"] = args
        attrs["process.user.id"] = info.uid
        attrs["process.group.id"] = info.gid
        if details.args_truncated:
            attrs["otelbpf.process.args_truncated"] = True
        if info.cwd:
            attrs["process.working_directory"] = info.cwd
        if cgroup_path:
            attrs["process.linux.cgroup"] = cgroup_path
        return LogRecord(int(head["ktime_ns"]) + self._clock_offset, "process.exec", Severity.INFO, None, attrs)

    def _exit_record(self, head: np.void, exits: collections.Counter[str]) -> LogRecord:
        pid = int(head["pid"])
        status = ev.exit_status(int(head["exit_code"]))
        info = self.table.get(pid)
        if info is None:  # never seen (table full or seeded late): what the event itself says
            info = self.table.on_fork(pid, int(head["ppid"]), int(head["start_time_ns"]))
        info = self.table.on_exit(pid, int(head["ktime_ns"])) or info
        exits[info.exe_name or head["comm"].decode("utf-8", "replace")] += 1
        attrs = self._process_attributes(info)
        attrs["process.exit.code"] = status.code
        if status.signal:
            attrs["process.exit.signal"] = status.signal_name
        if status.core_dumped:
            attrs["process.exit.core_dumped"] = True
        lifetime = int(head["ktime_ns"]) - int(head["start_time_ns"])
        attrs["process.lifetime"] = max(lifetime, 0) / 1e9
        severity = Severity.INFO if status.code == 0 else Severity.WARN
        return LogRecord(int(head["ktime_ns"]) + self._clock_offset, "process.exit", severity, None, attrs)

    def _process_attributes(self, info: ProcessInfo) -> dict:
        attrs = {
            "process.pid": info.pid,
            "process.parent_pid": info.ppid,
            "otelbpf.process.exec_id": info.exec_id,
        }
        if info.exe_path:
            attrs["process.executable.path"] = info.exe_path
            attrs["process.executable.name"] = info.exe_name
        if info.container_id:
            attrs["container.id"] = info.container_id
        ancestors = self._ancestors(info)
        if ancestors:
            attrs["otelbpf.process.ancestors"] = ancestors
        return attrs

    def _ancestors(self, info: ProcessInfo) -> list[str]:
        """"pid:name" of the parent, grandparent, ... nearest first: worked out once per
        parent exec (an exec storm's children share one parent) and kept, bounded."""
        parent = self.table.get(info.ppid)
        if parent is None or parent.pid == info.pid or parent.start_time_ns > info.start_time_ns:
            return []
        chain = self._chains.get(parent.exec_id)
        if chain is None:
            if len(self._chains) >= MAX_CHAINS:
                self._chains.clear()
            chain = self._chains[parent.exec_id] = [f"{parent.pid}:{parent.exe_name or '?'}"] + [
                f"{a.pid}:{a.exe_name or '?'}" for a in self.table.ancestry(parent.pid, max_depth=ANCESTRY_DEPTH - 1)]
        return list(chain)


def _resolve_exe_path(pid: int, filename: str) -> str:
    """An absolute executable path: execve's own if absolute, else what /proc says now."""
    if filename.startswith("/"):
        return os.path.normpath(filename)
    return procfs.executable(pid) or filename
