"""Sockets that predate the agent: the first socket walk of the network sensor finds listeners
and connections it never saw open. Their process is found through the socket's inode in
/proc/PID/fd, and they are entered in the kernel's tables so that their close is reported
like any other; their counts so far are not counted as new.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from otelbpf.enrich import procfs
from otelbpf.kernel import Map
from otelbpf.kernel.errors import BpfError
from otelbpf.kernel.objects import BPF_NOEXIST
from otelbpf.sensors import network_events as ne
from otelbpf.sensors.network_tracker import Connection, ConnectionTracker


def adopt(samples: np.ndarray, tracker: ConnectionTracker, maps: dict[str, Map],
          process_name: Callable[[int, object], str]) -> None:
    """samples: untracked sockets of a walk (ne.CONN_SAMPLE); maps: the network object's
    conns, listeners and listener_socks tables."""
    owners = socket_owners({int(i) for i in samples["inode"] if i})
    now = time.monotonic_ns()

    def owner(pid: int, role: int) -> bytes:
        record = np.zeros(1, dtype=ne.CONN_OWNER)
        record["start_ns"], record["pid"], record["role"] = now, pid, role
        record["comm"] = process_name(pid, b"").encode()[:15]
        return record.tobytes()

    for s in samples[samples["state"] == ne.TCP_LISTEN]:  # listeners first: they give roles
        flow = s["flow"]
        pid = owners.get(int(s["inode"]), 0)
        key = (int(flow["family"]), int(flow["local_port"]))
        if key in tracker.listeners or not pid:
            continue
        tracker.listeners[key] = (pid, process_name(pid, b""))
        listener_key = np.array([key], dtype=ne.LISTENER_KEY).tobytes()
        maps["listeners"].update(listener_key, owner(pid, ne.ROLE_SERVER))
        maps["listener_socks"].update(int(s["sock"]).to_bytes(8, "little"), listener_key)
    for s in samples[samples["state"] == ne.TCP_ESTABLISHED]:
        flow = s["flow"]
        family, local_port = int(flow["family"]), int(flow["local_port"])
        listener = tracker.listeners.get((family, local_port))
        pid = owners.get(int(s["inode"])) or (listener[0] if listener else 0)
        role = ne.ROLE_SERVER if listener else ne.ROLE_CLIENT
        sock = int(s["sock"])
        try:
            maps["conns"].update(sock.to_bytes(8, "little"), owner(pid, role), flags=BPF_NOEXIST)
        except BpfError:
            continue  # it just became tracked, or the table is full (counted by the kernel)
        tracker.adopted(Connection(
            sock=sock, pid=pid, process=process_name(pid, b""),
            role="server" if role == ne.ROLE_SERVER else "client", network_type=ne.network_type(family),
            local_address=ne.address(family, bytes(flow["local_addr"])), local_port=local_port,
            peer_address=ne.address(family, bytes(flow["peer_addr"])), peer_port=int(flow["peer_port"]),
            start_ns=now, adopted=True), s["counters"])


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, int]:
    """socket inode -> pid of a process holding it, from /proc/PID/fd (the first one found)."""
    owners: dict[int, int] = {}
    if not inodes:
        return owners
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        for inode in procfs.socket_inodes(int(entry.name), proc) & inodes:
            owners.setdefault(inode, int(entry.name))
        if len(owners) == len(inodes):
            break
    return owners
