"""Python mirrors of the network structs in bpf/events.h, checked against BTF at load."""

from __future__ import annotations

import errno
import ipaddress

import numpy as np

CONN_LISTEN, CONN_UNLISTEN, CONN_CLOSE, CONN_FAILED = 1, 2, 5, 6
ROLE_CLIENT, ROLE_SERVER = 1, 2
AF_INET, AF_INET6 = 2, 10
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}

TCP_COUNTERS = np.dtype([
    ("bytes_acked", "<u8"), ("bytes_received", "<u8"), ("bytes_retrans", "<u8"),
    ("segs_out", "<u4"), ("segs_in", "<u4"), ("total_retrans", "<u4"), ("srtt_us", "<u4"),
    ("flags", "<u4"), ("_pad", "<u4"),
])
TCP_FIN_RECEIVED, TCP_FIN_ACKED = 1, 2

FLOW_ENDPOINTS = np.dtype([
    ("local_addr", "V16"), ("peer_addr", "V16"), ("family", "<u2"), ("local_port", "<u2"),
    ("peer_port", "<u2"), ("proto", "u1"), ("_pad", "u1"),
])

CONN_EVENT = np.dtype([
    ("ktime_ns", "<u8"), ("start_ns", "<u8"), ("sock", "<u8"), ("cgroup_id", "<u8"),
    ("counters", TCP_COUNTERS), ("flow", FLOW_ENDPOINTS),
    ("type", "<u4"), ("pid", "<u4"), ("sk_err", "<u4"), ("old_state", "u1"), ("role", "u1"), ("_pad", "<u2"),
    ("comm", "S16"),
])

CONN_SAMPLE = np.dtype([
    ("sock", "<u8"), ("inode", "<u8"), ("counters", TCP_COUNTERS), ("flow", FLOW_ENDPOINTS),
    ("state", "u1"), ("tracked", "u1"), ("_pad", "<u2"), ("_pad2", "<u4"),
])
TCP_ESTABLISHED, TCP_LISTEN = 1, 10

# The kernel's record of who owns a connection or a listening port (network.bpf.c).
CONN_OWNER = np.dtype([
    ("start_ns", "<u8"), ("cgroup_id", "<u8"), ("pid", "<u4"), ("local_port", "<u2"), ("role", "u1"),
    ("_pad", "u1"), ("comm", "S16"),
])
LISTENER_KEY = np.dtype([("family", "<u2"), ("port", "<u2")])

FLOW_KEY = np.dtype([("flow", FLOW_ENDPOINTS), ("pid", "<u4"), ("_pad", "<u4")])

FLOW_VALUE = np.dtype([
    ("tx_bytes", "<u8"), ("rx_bytes", "<u8"), ("tx_packets", "<u8"), ("rx_packets", "<u8"),
    ("retransmits", "<u8"),
])

DNS_EVENT = np.dtype([
    ("ktime_ns", "<u8"), ("cookie", "<u8"), ("flow", FLOW_ENDPOINTS), ("pid", "<u4"),
    ("payload_len", "<u2"), ("egress", "u1"), ("_pad", "u1"),
])


def address(family: int, raw: bytes) -> str:
    if family == AF_INET6:
        addr = ipaddress.IPv6Address(raw)
        return str(addr.ipv4_mapped or addr)
    return str(ipaddress.IPv4Address(raw[:4]))


def network_type(family: int) -> str:
    return "ipv6" if family == AF_INET6 else "ipv4"


FAILURE_REASONS = {
    errno.ECONNREFUSED: "connection_refused",
    errno.ETIMEDOUT: "timed_out",
    errno.EHOSTUNREACH: "host_unreachable",
    errno.ENETUNREACH: "network_unreachable",
    errno.ECONNRESET: "connection_reset",
    errno.EPIPE: "connection_reset",
}


RESET_ERRNOS = np.array([errno.ECONNRESET, errno.EPIPE], dtype=np.uint32)


def failure_reason(sk_err: int) -> str:
    """Why an attempt failed, from the errno the kernel left on the socket."""
    if sk_err == 0:
        return "aborted"  # the application closed it before it connected
    return FAILURE_REASONS.get(sk_err, errno.errorcode.get(sk_err, str(sk_err)).lower())
