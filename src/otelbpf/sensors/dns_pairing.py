"""DNS lookups from the messages the network sensor captures on port 53: each query is paired
with its answer (by client port, server, id and name), timed, and remembered as
address -> name so that connections to an address can be named by what was looked up.

No kernel access: `messages` takes the DNS payloads with their capture headers
(ne.DNS_EVENT); unit tests hand it messages they build.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from otelbpf.protocols import dns
from otelbpf.sensors import network_events as ne
from otelbpf.signals.model import LogRecord, Severity
from otelbpf.signals.registry import Registry

DNS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
DNS_TIMEOUT_NS = 10 * 10**9
KEEP_RECENT = 4096  # lookups kept for views and tests, and queries waiting for their answer
MAX_NAMES = 4 * KEEP_RECENT  # answered addresses remembered; the oldest go first


@dataclass(slots=True)
class DnsLookup:
    pid: int
    process: str
    name: str
    qtype: str
    server: str
    rcode: str              # "NOERROR", "NXDOMAIN", ..., or "TIMEOUT"
    answers: tuple[str, ...]
    duration_s: float
    time_unix_nano: int


@dataclass(slots=True)
class _PendingQuery:
    ktime_ns: int
    pid: int
    name: str
    qtype: str


class DnsPairing:
    def __init__(self, registry: Registry, process_name: Callable[[int, object], str], clock_offset: int) -> None:
        """process_name(pid, kernel comm): the executable's name; clock_offset: monotonic to
        Unix nanoseconds."""
        self._process_name = process_name
        self._clock_offset = clock_offset
        self._pending: collections.OrderedDict[tuple, _PendingQuery] = collections.OrderedDict()
        self.names_by_address: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.lookups: collections.deque[DnsLookup] = collections.deque(maxlen=KEEP_RECENT)
        self._duration = registry.histogram("dns.lookup.duration", "DNS lookups, query to answer", "s", DNS_BOUNDS)
        self._unparsed = registry.counter("otelbpf.network.dns.unparsed", "Port 53 payloads that were not DNS",
                                          "{message}")

    def messages(self, heads: np.ndarray, payloads: Iterable[bytes], records: list[LogRecord]) -> None:
        """Captured port-53 messages: ne.DNS_EVENT headers and the DNS bytes after each."""
        for head, payload in zip(heads, payloads):
            flow = head["flow"]
            if int(flow["peer_port"]) != 53:
                continue  # the server side of a resolver on this host: its clients report the lookups
            msg = dns.parse(payload)
            if msg is None:
                self._unparsed.add(1)
                continue
            server = ne.address(int(flow["family"]), bytes(flow["peer_addr"]))
            key = (int(flow["local_port"]), server, msg.id, msg.name.lower())
            if head["egress"] and not msg.is_response:
                self._pending[key] = _PendingQuery(int(head["ktime_ns"]), int(head["pid"]), msg.name, msg.qtype)
                while len(self._pending) > KEEP_RECENT:
                    self._pending.popitem(last=False)
            elif not head["egress"] and msg.is_response:
                query = self._pending.pop(key, None)
                if query is not None:
                    self._finish(query, server, msg.rcode, msg.answers, int(head["ktime_ns"]), records)

    def expire(self, now_ns: int, records: list[LogRecord]) -> None:
        """Queries unanswered for DNS_TIMEOUT_NS (monotonic now_ns) end as TIMEOUT."""
        while self._pending:
            key, query = next(iter(self._pending.items()))
            if now_ns - query.ktime_ns < DNS_TIMEOUT_NS:
                break
            self._pending.popitem(last=False)
            self._finish(query, key[1], "TIMEOUT", (), query.ktime_ns + DNS_TIMEOUT_NS, records)

    def _finish(self, query: _PendingQuery, server: str, rcode: str, answers: tuple[str, ...],
                end_ns: int, records: list[LogRecord]) -> None:
        lookup = DnsLookup(query.pid, self._process_name(query.pid, b""), query.name, query.qtype, server, rcode,
                           answers, (end_ns - query.ktime_ns) / 1e9, end_ns + self._clock_offset)
        self.lookups.append(lookup)
        for answer in answers:
            self.names_by_address[answer] = query.name
            while len(self.names_by_address) > MAX_NAMES:
                self.names_by_address.popitem(last=False)
        attrs = {"dns.question.name": query.name}
        if rcode != "NOERROR":
            attrs["error.type"] = rcode
            records.append(LogRecord(lookup.time_unix_nano, "dns.lookup.failed", Severity.WARN, None, {
                "process.pid": query.pid, "process.executable.name": lookup.process,
                "dns.question.name": query.name, "otelbpf.dns.question.type": query.qtype,
                "otelbpf.dns.response_code": rcode, "network.peer.address": server,
                "otelbpf.dns.duration": lookup.duration_s}))
        self._duration.record(lookup.duration_s, attrs)
