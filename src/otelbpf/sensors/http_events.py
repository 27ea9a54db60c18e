"""Python mirror of struct http_event in bpf/events.h, checked against BTF at load."""

from __future__ import annotations

import numpy as np

HTTP_EGRESS, HTTP_INGRESS, HTTP_CLOSE, HTTP_SERVER_EXCHANGE, HTTP_CLIENT_EXCHANGE = range(5)
HTTP_SOURCE_SYSCALL, HTTP_SOURCE_SSL = 0, 1
MAX_CAPTURE = 8192  # OTELBPF_HTTP_MAX_CAPTURE

HTTP_EVENT = np.dtype([
    ("ktime_ns", "<u8"), ("start_ns", "<u8"), ("sock", "<u8"), ("pid", "<u4"), ("tid", "<u4"), ("fd", "<u4"),
    ("size", "<u4"),
    ("captured", "<u2"), ("direction", "u1"), ("source", "u1"), ("family", "<u2"), ("local_port", "<u2"),
    ("peer_port", "<u2"), ("status", "<u2"), ("local_addr", "V16"), ("peer_addr", "V16"), ("comm", "S16"),
    ("_pad2", "<u4"),
])

# struct pending in http.bpf.c: a request the kernel keeps for its response; its bytes follow.
# Only its size matters here (the map's value size is set from it), the fields are checked
# against BTF so that the size cannot drift from the kernel's.
PENDING = np.dtype([
    ("start_ns", "<u8"), ("tid", "<u4"), ("size", "<u4"), ("captured", "<u2"), ("direction", "u1"),
    ("source", "u1"), ("state", "u1"), ("_pad", "V7"), ("_pad2", "V4"),
])
PENDING_HEADER_SIZE = PENDING.itemsize

# Indexes of the kernel's per-CPU counters (http_counts in http.bpf.c).
COUNT_RING_FULL, COUNT_NOT_HTTP, COUNT_READS_FULL, COUNT_SENDFILE, COUNT_SPLICE, COUNT_SELF = range(6)

# The kernel's struct self_endpoint: the key of self_endpoints (the agent's own connections and
# listeners, whose far ends are left out).
SELF_ENDPOINT = np.dtype([("addr", "V16"), ("peer_addr", "V16"), ("port", "<u2"), ("peer_port", "<u2"),
                          ("_pad", "<u4")])
