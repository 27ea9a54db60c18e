"""The agent's own listening sockets (UI, embedded receiver, Prometheus endpoint), so that the
sensors can leave out the traffic of their clients: the agent never observes itself.

Read from /proc/<pid>/net/tcp{,6} (every socket of the network namespace, with its inode)
joined with /proc/<pid>/fd (the inodes this process holds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from otelbpf.enrich import procfs

TCP_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class Listener:
    addr: bytes   # 16 bytes: IPv4 in the first 4 (as the kernel's records have it); zeros: any address
    port: int


def _address(hex_addr: str) -> bytes:
    """/proc/net/tcp's address (32-bit words in host order) as 16 network-order bytes."""
    words = [int(hex_addr[i:i + 8], 16).to_bytes(4, "little") for i in range(0, len(hex_addr), 8)]
    return b"".join(words).ljust(16, b"\0")


def own_listeners(pid: int | None = None, proc: str = "/proc") -> set[Listener]:
    """The TCP sockets process pid (default: this one) listens on."""
    pid = os.getpid() if pid is None else pid
    inodes = procfs.socket_inodes(pid, proc)
    found: set[Listener] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != TCP_LISTEN or int(fields[9]) not in inodes:
                continue
            addr, _, port = fields[1].rpartition(":")
            found.add(Listener(_address(addr), int(port, 16)))
    return found
