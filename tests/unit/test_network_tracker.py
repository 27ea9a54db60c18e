"""The network sensor's connection tracker and DNS pairing without a kernel: records built
with the kernel's layouts (sensors.network_events), known counts and bytes in, metrics,
log records and lookups out."""

from __future__ import annotations

import errno
import socket

import dns.message
import dns.rrset
import numpy as np

from otelbpf.sensors import network_events as ne
from otelbpf.sensors.dns_pairing import DNS_TIMEOUT_NS, DnsPairing
from otelbpf.sensors.network_tracker import ConnectionTracker
from otelbpf.signals.registry import Registry

LOCAL, SERVER = "127.0.0.1", "10.1.2.3"


def v4(address: str) -> bytes:
    return socket.inet_aton(address) + bytes(12)


def conn_event(kind: int, sock: int, pid: int, role: int, local_port: int, peer: str, peer_port: int, *,
               sent: int = 0, received: int = 0, sk_err: int = 0, start_ns: int = 1_000, ktime_ns: int = 5_000,
               comm: bytes = b"client") -> np.ndarray:
    e = np.zeros(1, ne.CONN_EVENT)
    e["type"], e["sock"], e["pid"], e["role"], e["sk_err"] = kind, sock, pid, role, sk_err
    e["start_ns"], e["ktime_ns"], e["comm"] = start_ns, ktime_ns, comm
    flow = e["flow"]
    flow["family"], flow["local_port"], flow["peer_port"], flow["proto"] = ne.AF_INET, local_port, peer_port, 6
    flow["local_addr"], flow["peer_addr"] = np.void(v4(LOCAL)), np.void(v4(peer))
    # The kernel counts sequence space: a client's SYN, and a FIN each way that it flags.
    counters = e["counters"]
    counters["bytes_acked"] = sent + (1 if role == ne.ROLE_CLIENT else 0) + 1
    counters["bytes_received"] = received + 1
    counters["flags"] = ne.TCP_FIN_ACKED | ne.TCP_FIN_RECEIVED
    counters["segs_out"], counters["segs_in"] = 3, 3
    return e


def tracker(registry: Registry, names: dict | None = None, logs: bool = False) -> ConnectionTracker:
    return ConnectionTracker(registry, lambda pid, comm: f"proc{pid}", names or {}, clock_offset=0,
                             connection_logs=logs)


def test_short_connections_are_counted_in_bulk_with_their_bytes():
    registry = Registry()
    t = tracker(registry, names={SERVER: "db.example"})
    closes = np.concatenate([conn_event(ne.CONN_CLOSE, 100 + i, 7, ne.ROLE_CLIENT, 40000 + i, SERVER, 5432,
                                        sent=11, received=13) for i in range(23)])
    records: list = []
    t.conn_events(closes, records)
    attrs = {"process.executable.name": "proc7", "network.transport": "tcp", "network.type": "ipv4",
             "otelbpf.network.role": "client", "server.port": 5432, "network.peer.address": SERVER,
             "server.address": "db.example"}
    assert registry.counter("otelbpf.network.tcp.connections").value(attrs) == 23
    io = registry.counter("otelbpf.network.io")
    assert io.value({**attrs, "network.io.direction": "transmit"}) == 23 * 11
    assert io.value({**attrs, "network.io.direction": "receive"}) == 23 * 13
    assert records == [] and len(t.closed) == 23


def test_a_refused_connection_is_a_failure_record_and_counter():
    registry = Registry()
    t = tracker(registry)
    records: list = []
    t.conn_events(conn_event(ne.CONN_FAILED, 1, 9, ne.ROLE_CLIENT, 40001, SERVER, 81, sk_err=errno.ECONNREFUSED),
                  records)
    [record] = records
    assert record.event_name == "network.connection.failed"
    assert record.attributes["error.type"] == "connection_refused" and record.attributes["network.peer.port"] == 81
    failed = registry.counter("otelbpf.network.tcp.failed_connections").points()
    assert [p.value for p in failed] == [1] and failed[0].attributes["error.type"] == "connection_refused"


def test_a_reset_after_data_keeps_its_bytes():
    registry = Registry()
    t = tracker(registry)
    records: list = []
    t.conn_events(conn_event(ne.CONN_CLOSE, 2, 9, ne.ROLE_CLIENT, 40002, SERVER, 80, sent=5, received=7,
                             sk_err=errno.ECONNRESET), records)
    [record] = records
    assert record.attributes["error.type"] == "connection_reset"
    assert (record.attributes["otelbpf.network.bytes_sent"], record.attributes["otelbpf.network.bytes_received"]) \
        == (5, 7)


def test_listeners_name_the_server_of_an_accepted_connection():
    registry = Registry()
    t = tracker(registry)
    records: list = []
    t.conn_events(conn_event(ne.CONN_LISTEN, 0, 31, ne.ROLE_SERVER, 8080, "0.0.0.0", 0), records)
    assert t.listeners == {(ne.AF_INET, 8080): (31, "proc31")}
    # accepted before the agent knew the process (pid 0): the listener's process is the server
    t.conn_events(conn_event(ne.CONN_CLOSE, 3, 0, ne.ROLE_SERVER, 8080, LOCAL, 40003), records)
    assert t.closed[-1].pid == 31 and t.closed[-1].process == "proc31"
    t.conn_events(conn_event(ne.CONN_UNLISTEN, 0, 31, ne.ROLE_SERVER, 8080, "0.0.0.0", 0), records)
    assert t.listeners == {}


def test_a_walked_connection_counts_growth_once_and_its_close_the_rest():
    registry = Registry()
    t = tracker(registry)
    sample = np.zeros(1, ne.CONN_SAMPLE)[0]
    sample["sock"], sample["state"], sample["tracked"] = 4, ne.TCP_ESTABLISHED, 1
    sample["flow"]["family"], sample["flow"]["local_port"], sample["flow"]["peer_port"] = ne.AF_INET, 40004, 443
    sample["flow"]["peer_addr"] = np.void(v4(SERVER))
    sample["counters"]["bytes_acked"], sample["counters"]["bytes_received"] = 1 + 100, 200
    owner = np.zeros(1, ne.CONN_OWNER)[0]
    owner["pid"], owner["role"], owner["local_port"], owner["start_ns"] = 12, ne.ROLE_CLIENT, 40004, 1_000
    t.walked(sample, lambda s: owner)
    t.walked(sample, lambda s: None)  # the same counts again: nothing new, no second lookup needed
    io = registry.counter("otelbpf.network.io")
    transmit = {"process.executable.name": "proc12", "network.transport": "tcp", "network.type": "ipv4",
                "otelbpf.network.role": "client", "server.port": 443, "network.peer.address": SERVER,
                "network.io.direction": "transmit"}
    assert io.value(transmit) == 100
    t.conn_events(conn_event(ne.CONN_CLOSE, 4, 12, ne.ROLE_CLIENT, 40004, SERVER, 443, sent=123, received=0),
                  [])
    assert io.value(transmit) == 123  # the close brings what grew since the walk
    assert registry.counter("otelbpf.network.tcp.connections").points()[0].value == 1
    assert t.open_connections() == []


def test_a_connection_missing_from_two_walks_is_forgotten_and_counted():
    registry = Registry()
    t = tracker(registry)
    sample = np.zeros(1, ne.CONN_SAMPLE)[0]
    sample["sock"], sample["flow"]["local_port"] = 5, 40005
    owner = np.zeros(1, ne.CONN_OWNER)[0]
    owner["pid"], owner["role"], owner["local_port"] = 13, ne.ROLE_CLIENT, 40005
    t.walked(sample, lambda s: owner)
    t.forget_vanished(set())
    assert len(t.open_connections()) == 1  # one walk without it: its close may still be in the ring
    t.forget_vanished(set())
    assert t.open_connections() == []
    assert registry.counter("otelbpf.sensor.dropped").value(sensor="network", reason="close_event_lost") == 1


def dns_event(egress: bool, local_port: int, pid: int, ktime_ns: int) -> np.ndarray:
    e = np.zeros(1, ne.DNS_EVENT)
    e["egress"], e["pid"], e["ktime_ns"] = egress, pid, ktime_ns
    e["flow"]["family"], e["flow"]["local_port"], e["flow"]["peer_port"] = ne.AF_INET, local_port, 53
    e["flow"]["peer_addr"] = np.void(v4("127.0.0.53"))
    return e


def test_dns_queries_pair_with_answers_name_addresses_and_time_out():
    registry = Registry()
    pairing = DnsPairing(registry, lambda pid, comm: f"proc{pid}", clock_offset=0)
    query = dns.message.make_query("db.example", "A", id=4242)
    answer = dns.message.make_response(query)
    answer.answer.append(dns.rrset.from_text("db.example.", 60, "IN", "A", SERVER))
    missing = dns.message.make_query("nope.example", "A", id=77)
    nx = dns.message.make_response(missing)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    lost = dns.message.make_query("slow.example", "AAAA", id=5)
    records: list = []
    pairing.messages(np.concatenate([dns_event(True, 5353, 8, 1_000), dns_event(False, 5353, 8, 3_001_000),
                                     dns_event(True, 5354, 8, 2_000), dns_event(False, 5354, 8, 2_002_000),
                                     dns_event(True, 5355, 8, 3_000), dns_event(False, 5356, 8, 4_000)]),
                     [query.to_wire(), answer.to_wire(), missing.to_wire(), nx.to_wire(), lost.to_wire(),
                      b"\x00not dns"], records)
    assert [(x.name, x.rcode, x.answers, x.duration_s) for x in pairing.lookups] == [
        ("db.example", "NOERROR", (SERVER,), 0.003), ("nope.example", "NXDOMAIN", (), 0.002)]
    assert pairing.names_by_address == {SERVER: "db.example"}
    assert [r.attributes["dns.question.name"] for r in records] == ["nope.example"]
    assert registry.counter("otelbpf.network.dns.unparsed").value() == 1
    pairing.expire(3_000 + DNS_TIMEOUT_NS, records)
    assert pairing.lookups[-1].name == "slow.example" and pairing.lookups[-1].rcode == "TIMEOUT"
