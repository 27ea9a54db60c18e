"""Network sensor: TCP connections with their bytes, RTT and retransmits, failed connections,
UDP flows and DNS lookups, for every process, aggregated in the kernel.

The BPF side (bpf/network.bpf.c) reports connection lifecycle events and DNS messages on two
ring buffers, keeps per-flow aggregates in a hash map, and offers an iterator over open TCP
sockets. This module is the BPF lifecycle: it loads and attaches the programs, drains the
rings, walks the sockets every sample interval and drains the flow map in one batch
operation, and hands what it read to the jobs that make telemetry of it:
sensors.network_tracker (connections, listeners, the service map, their metrics and log
records), sensors.dns_pairing (lookups) and sensors.socket_adoption (sockets that predate
the agent).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from otelbpf.enrich.containers import find_cgroup2_root
from otelbpf.enrich.identity import IdentityTable
from otelbpf.kernel import BpfObject, Link, Program, loading
from otelbpf.kernel.ringbuf import DRAIN_GAP, RingBufferReader
from otelbpf.sensors import network_events as ne
from otelbpf.sensors.clock import monotonic_to_unix_offset
from otelbpf.sensors.dns_pairing import DnsLookup, DnsPairing
from otelbpf.sensors.network_tracker import Connection, ConnectionTracker
from otelbpf.sensors.socket_adoption import adopt, socket_owners
from otelbpf.signals.counters import CounterDeltas
from otelbpf.signals.model import LogBatch, LogRecord, Resource
from otelbpf.signals.registry import Registry

__all__ = ["Connection", "DnsLookup", "NetworkSensor", "socket_owners"]

BPF_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "network.bpf.o"
SCOPE = "otelbpf.sensors.network"
DROP_KINDS = ("ring_buffer_full", "connection_table_full", "flow_table_full")


class NetworkSensor:
    name = "network"

    def __init__(self, emit: Callable[[LogBatch], None], registry: Registry, resource: Resource, *,
                 sample_interval: float = 10.0, ringbuf_bytes: int = 4 << 20, capture_dns: bool = True,
                 connection_logs: bool = False, bpf_object: Path = BPF_OBJECT,
                 identities: IdentityTable | None = None):
        """identities: the agent's table of process identities (shared with its other
        sensors); by default one of its own."""
        self._emit = emit
        self._resource = resource
        self._sample_interval = sample_interval
        self._ringbuf_bytes = ringbuf_bytes
        self._capture_dns = capture_dns
        self._bpf_object = bpf_object
        clock_offset = monotonic_to_unix_offset()
        self._obj: BpfObject | None = None
        self._conn_reader: RingBufferReader | None = None
        self._dns_reader: RingBufferReader | None = None
        self._iter_link: Link | None = None
        self._next_sample = 0.0
        self._lock = threading.Lock()  # views read what the drain thread writes
        self._started = False  # the first socket walk adopts what predates us; later ones do not
        self._identities = identities or IdentityTable(resource)
        self._deltas = CounterDeltas()
        self.dns = DnsPairing(registry, self._process_name, clock_offset)
        self.tracker = ConnectionTracker(registry, self._process_name, self.dns.names_by_address, clock_offset,
                                         connection_logs)
        self._events = registry.counter("otelbpf.sensor.events", "Events read from the kernel", "{event}")
        self._drops = registry.counter("otelbpf.sensor.dropped", "Events the kernel could not queue or store",
                                       "{event}")

    # What views and tests read.
    @property
    def closed(self) -> collections.deque[Connection]:
        return self.tracker.closed

    @property
    def lookups(self) -> collections.deque[DnsLookup]:
        return self.dns.lookups

    @property
    def listeners(self) -> dict[tuple[int, int], tuple[int, str]]:
        return self.tracker.listeners

    def open_connections(self) -> list[Connection]:
        """The connections open now, for live views."""
        with self._lock:
            return self.tracker.open_connections()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        cgroup_root = find_cgroup2_root()
        if cgroup_root is None:
            raise RuntimeError("no cgroup v2 hierarchy is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) "
                               "or run without the network sensor")
        layouts = {"conn_event": ne.CONN_EVENT, "conn_sample": ne.CONN_SAMPLE, "conn_owner": ne.CONN_OWNER,
                   "listener_key": ne.LISTENER_KEY, "flow_key": ne.FLOW_KEY, "flow_value": ne.FLOW_VALUE,
                   "dns_event": ne.DNS_EVENT}
        with loading(self._bpf_object, layouts=layouts, rodata={"capture_dns": int(self._capture_dns)},
                     max_entries={"conn_events": self._ringbuf_bytes}) as obj:
            obj.load()
            self._conn_reader = RingBufferReader(obj.maps["conn_events"], record_size=ne.CONN_EVENT.itemsize)
            self._dns_reader = RingBufferReader(obj.maps["dns_events"])
            obj.programs["on_tcp_state"].attach()
            obj.programs["on_tcp_retransmit"].attach()
            self._iter_link = obj.programs["sample_tcp"].attach_iter()
            obj.programs["on_sock_create"].attach_cgroup(cgroup_root)
            obj.programs["on_egress"].attach_cgroup(cgroup_root)
            obj.programs["on_ingress"].attach_cgroup(cgroup_root)
        self._obj = obj
        self._started = False
        self.sample()  # adopt the listeners and connections that predate us
        self._started = True
        self._next_sample = time.monotonic() + self._sample_interval

    def programs(self) -> list[Program]:
        return list(self._obj.programs.values()) if self._obj else []

    def poll(self, timeout: float) -> int:
        if self._obj is None:
            return 0
        # Woken by connection events; DNS has its own ring, taken on every turn either way.
        assert self._conn_reader is not None  # start() sets it before _obj
        self._conn_reader.wait(min(timeout, max(self._next_sample - time.monotonic(), 0.0)), DRAIN_GAP)
        n = self._drain_rings()
        if time.monotonic() >= self._next_sample:
            self.sample()
            self._next_sample = time.monotonic() + self._sample_interval
        return n

    def stop(self) -> None:
        if self._obj is None:
            return
        self.sample()  # counters of connections still open, before detaching
        self._obj.detach_all()
        self._drain_rings()
        self._drain_flows()
        self._account_kernel_drops()
        assert self._conn_reader is not None and self._dns_reader is not None  # set before _obj
        self._conn_reader.close()
        self._dns_reader.close()
        self._obj.close()
        self._obj = None

    # -- draining -------------------------------------------------------------------------
    def _drain_rings(self) -> int:
        records: list[LogRecord] = []
        assert self._conn_reader is not None and self._dns_reader is not None  # called while started
        conns = self._conn_reader.read()
        dns_batch = self._dns_reader.read()
        with self._lock:
            if len(conns):
                self.tracker.conn_events(conns.fixed(ne.CONN_EVENT), records)
            if len(dns_batch):
                size = ne.DNS_EVENT.itemsize
                self.dns.messages(dns_batch.fixed(ne.DNS_EVENT),
                                  (bytes(dns_batch.payload(i))[size:] for i in range(len(dns_batch))), records)
        n = len(conns) + len(dns_batch)
        if n:
            self._events.add(n, {"sensor": self.name})
        if records:
            self._emit(LogBatch(self._resource, SCOPE, records))
        return n

    def sample(self) -> None:
        """Counters of open connections (iterator) and the kernel's flow aggregates (batch drain)."""
        if self._obj is None:
            return
        assert self._iter_link is not None  # start() sets it before _obj
        raw = self._iter_link.read_iter()
        samples = np.frombuffer(raw, dtype=ne.CONN_SAMPLE) if raw else np.zeros(0, ne.CONN_SAMPLE)
        conns = self._obj.maps["conns"]

        def owner(sample: np.void) -> np.void | None:  # the kernel's record of a socket met for the first time
            raw = conns.lookup(int(sample["sock"]).to_bytes(8, "little"))
            return None if raw is None else np.frombuffer(raw, dtype=ne.CONN_OWNER)[0]

        with self._lock:
            untracked = samples[samples["tracked"] == 0]
            if len(untracked) and not self._started:
                # Only the first walk adopts: after it every new socket is tracked from its first
                # state change, and an untracked one seen later is one closing during the walk.
                adopt(untracked, self.tracker, self._obj.maps, self._process_name)
            tracked = samples[samples["tracked"] == 1]
            for s in tracked[tracked["state"] == ne.TCP_ESTABLISHED]:
                self.tracker.walked(s, owner)
            self.tracker.forget_vanished({int(sock) for sock in tracked["sock"]} | {int(x) for x in untracked["sock"]})
        self._drain_flows()
        self._account_kernel_drops()
        records: list[LogRecord] = []
        with self._lock:
            self.dns.expire(time.monotonic_ns(), records)
        if records:
            self._emit(LogBatch(self._resource, SCOPE, records))

    def _drain_flows(self) -> None:
        assert self._obj is not None  # called while started
        keys, values = self._obj.maps["flows"].lookup_and_delete_batch(ne.FLOW_KEY, ne.FLOW_VALUE)
        with self._lock:
            self.tracker.flows(keys, values)

    def _account_kernel_drops(self) -> None:
        assert self._obj is not None  # called while started
        raw = self._obj.maps["network_drops"]
        for index, kind in enumerate(DROP_KINDS):
            total = int(raw.percpu_u64(index.to_bytes(4, "little")).sum())
            self._deltas.report(self._drops, total, {"sensor": self.name, "reason": kind})

    # -- helpers --------------------------------------------------------------------------
    def _process_name(self, pid: int, comm) -> str:
        """Executable name of a pid, else the kernel's comm, else "unknown" (enrich.identity)."""
        return self._identities.of(pid, bytes(comm) if comm else b"").executable_name
