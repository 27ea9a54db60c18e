"""The network sensor on the running kernel, against traffic the tests make: loopback and a
network namespace joined by a veth pair, IPv4 and IPv6, refused and timed-out connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otelbpf.enrich.host import host_resource
from otelbpf.sensors.base import running
from otelbpf.sensors.network import NetworkSensor
from otelbpf.signals.registry import Registry
from tests.netns import make_test_host, remove_test_host

SERVER = str(Path(__file__).resolve().parents[1] / "byte_server.py")
TCP_SYNCNT = 7


class Records:
    def __init__(self):
        self.logs = []

    def __call__(self, batch):
        self.logs.extend(batch.records)


@pytest.fixture
def sensor():
    records, registry = Records(), Registry()
    with running(NetworkSensor(records, registry, host_resource(), sample_interval=0.5)) as s:
        yield s, records, registry


@pytest.fixture
def test_host():
    host = make_test_host()
    yield host
    remove_test_host(host.name)


def start_server(host: str, connections: int, netns=None) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, SERVER, host, str(connections)]
    proc = netns.run(*cmd, stdout=subprocess.PIPE, text=True) if netns else \
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def exchange(host: str, port: int, payload: int, reply: int) -> tuple[int, int]:
    """One connection: send 8 + payload bytes, receive reply bytes; returns our local port and
    the bytes received."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.connect((host, port))
        c.sendall(reply.to_bytes(8, "big"))
        chunk = b"p" * (1 << 20)
        left = payload
        while left:
            left -= c.send(chunk[: min(left, len(chunk))])
        c.shutdown(socket.SHUT_WR)
        got = 0
        while data := c.recv(1 << 20):
            got += len(data)
        return c.getsockname()[1], got


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def closed_by(sensor_obj, role, **match):
    return [c for c in list(sensor_obj.closed)
            if c.role == role and c.failure is None and all(getattr(c, k) == v for k, v in match.items())]


def check_connections(s, server_proc, server_addr, port, truth):
    """Every connection's bytes, both ends, equal what the test sent and received."""
    assert wait_for(lambda: len(closed_by(s, "server", local_port=port)) == len(truth))
    me = os.getpid()
    for local_port, (sent, received) in truth.items():
        client = closed_by(s, "client", local_port=local_port, peer_port=port)
        assert len(client) == 1, f"client connection from port {local_port}: {client}"
        c = client[0]
        assert (c.bytes_sent, c.bytes_received) == (sent, received)
        assert c.pid == me and c.peer_address == server_addr
        server = closed_by(s, "server", local_port=port, peer_port=local_port)
        assert len(server) == 1
        assert (server[0].bytes_sent, server[0].bytes_received) == (received, sent)
        assert server[0].pid == server_proc.pid
        assert server[0].end_ns > server[0].start_ns


def test_23_connections_with_known_bytes_over_loopback(sensor):
    s, _, registry = sensor
    server, port = start_server("127.0.0.1", 23)
    truth = {}
    for i in range(23):
        payload = 104_857_601 if i == 11 else 1000 + 7919 * i  # one over 100 MB
        reply = 13 * i + 5
        local_port, got = exchange("127.0.0.1", port, payload, reply)
        assert got == reply
        truth[local_port] = (8 + payload, reply)
    server.wait(30)
    check_connections(s, server, "127.0.0.1", port, truth)
    # The same bytes show up in the exported counters of the connecting process.
    s.sample()
    sent = registry.counter("otelbpf.network.io").value({
        "process.executable.name": os.path.basename(os.readlink("/proc/self/exe")), "network.transport": "tcp",
        "network.type": "ipv4", "otelbpf.network.role": "client", "server.port": port,
        "network.peer.address": "127.0.0.1", "network.io.direction": "transmit"})
    assert sent == sum(v[0] for v in truth.values())
    assert (2, port) not in s.listeners  # the server closed its listening socket


def test_connections_across_a_veth_pair(sensor, test_host):
    s, _, _ = sensor
    server, port = start_server(test_host.peer_addr, 23, netns=test_host)
    truth = {}
    for i in range(23):
        local_port, got = exchange(test_host.peer_addr, port, 31 * 1024 * i + 17, 101 * i)
        truth[local_port] = (8 + 31 * 1024 * i + 17, got)
    server.wait(30)
    check_connections(s, server, test_host.peer_addr, port, truth)


def test_ipv6_loopback(sensor):
    s, _, _ = sensor
    server, port = start_server("::1", 5)
    truth = {}
    for i in range(5):
        local_port, got = exchange("::1", port, 4096 * i + 3, 7 * i + 1)
        truth[local_port] = (4096 * i + 3 + 8, got)
    server.wait(30)
    check_connections(s, server, "::1", port, truth)
    assert all(c.network_type == "ipv6" for c in closed_by(s, "client", peer_port=port))


def test_refused_connection_is_reported_with_its_target(sensor):
    _s, records, _registry = sensor
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # a port nobody listens on
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=5)
    assert wait_for(lambda: [r for r in records.logs if r.event_name == "network.connection.failed"
                             and r.attributes["network.peer.port"] == closed_port])
    rec = next(r for r in records.logs if r.attributes.get("network.peer.port") == closed_port)
    assert rec.attributes["error.type"] == "connection_refused"
    assert rec.attributes["network.peer.address"] == "127.0.0.1"
    assert rec.attributes["process.pid"] == os.getpid()


def test_timed_out_connection_is_reported(sensor, test_host):
    _s, records, _ = sensor
    # A firewall rule in the test host drops SYNs to port 9: the connection times out.
    test_host.exec("nft", "add table inet obt; add chain inet obt in { type filter hook input priority 0; }; "
                          "add rule inet obt in tcp dport 9 drop")
    c = socket.socket()
    c.setsockopt(socket.IPPROTO_TCP, TCP_SYNCNT, 1)  # one retry: the kernel gives up after ~3 s
    c.settimeout(30)
    with pytest.raises(OSError):
        c.connect((test_host.peer_addr, 9))
    c.close()
    assert wait_for(lambda: [r for r in records.logs if r.event_name == "network.connection.failed"
                             and r.attributes["network.peer.address"] == test_host.peer_addr])
    rec = next(r for r in records.logs if r.attributes.get("network.peer.address") == test_host.peer_addr)
    assert rec.attributes["error.type"] == "timed_out"
    assert rec.attributes["network.peer.port"] == 9


def test_connections_older_than_the_agent_are_adopted():
    server, port = start_server("127.0.0.1", 1)
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall((77).to_bytes(8, "big") + b"a" * 1000)  # before the agent runs
    records, registry = Records(), Registry()
    with running(NetworkSensor(records, registry, host_resource(), sample_interval=0.2)) as s:
        assert (2, port) in s.listeners and s.listeners[(2, port)][0] == server.pid
        c.sendall(b"b" * 5000)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while data := c.recv(4096):
            got += data
        local_port = c.getsockname()[1]
        c.close()
        server.wait(30)
        assert wait_for(lambda: closed_by(s, "server", local_port=port))
    client = closed_by(s, "client", local_port=local_port, peer_port=port)
    assert len(client) == 1 and client[0].adopted and client[0].pid == os.getpid()
    assert (client[0].bytes_sent, client[0].bytes_received) == (8 + 1000 + 5000, 77)  # the whole connection
    server_side = closed_by(s, "server", local_port=port, peer_port=local_port)[0]
    assert server_side.adopted and server_side.pid == server.pid
    # Exported counters hold only what moved while the agent watched (no double count at start).
    sent = sum(p.value for p in registry.counter("otelbpf.network.io").points()
               if p.attributes.get("server.port") == port and p.attributes["otelbpf.network.role"] == "client"
               and p.attributes["network.io.direction"] == "transmit")
    assert sent == 5000


def test_reset_connection_is_a_failure_with_its_bytes(sensor):
    _s, records, _ = sensor
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.sendall(b"z" * 333)
    a.recv(333)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + (0).to_bytes(4, "little"))
    a.close()  # linger 0: the server resets the connection
    with pytest.raises(ConnectionResetError):
        c.recv(10)
    local_port = c.getsockname()[1]
    c.close()
    srv.close()
    assert wait_for(lambda: [r for r in records.logs if r.attributes.get("network.local.port") == local_port])
    rec = next(r for r in records.logs if r.attributes.get("network.local.port") == local_port)
    assert rec.event_name == "network.connection.failed"
    assert rec.attributes["error.type"] == "connection_reset"
    assert rec.attributes["otelbpf.network.bytes_sent"] == 333


def test_udp_flows_count_payload_bytes_and_packets_per_process(sensor):
    s, _, registry = sensor
    receiver = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys\n"
        "r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 0))\n"
        "print(r.getsockname()[1], flush=True)\n"
        "for _ in range(31): r.recv(65536)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(receiver.stdout.readline())
    sizes = [17 * i for i in range(31)]  # an empty datagram among them
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for size in sizes:
            tx.sendto(b"u" * size, ("127.0.0.1", port))
        tx_port = tx.getsockname()[1]
    s.sample()  # while the receiver still runs, so its name can be read
    receiver.stdin.close()
    receiver.wait(10)
    me = os.path.basename(os.readlink("/proc/self/exe"))
    receiver_name = me  # the same interpreter

    def counter(name, process, direction, peer_port):
        return sum(p.value for p in registry.counter(name).points()
                   if p.attributes["network.transport"] == "udp" and p.attributes["process.executable.name"] == process
                   and p.attributes["network.io.direction"] == direction and p.attributes["network.peer.port"] == peer_port)

    assert counter("otelbpf.network.io", me, "transmit", port) == sum(sizes)
    assert counter("otelbpf.network.packets", me, "transmit", port) == 31
    rx = [p for p in registry.counter("otelbpf.network.io").points()
          if p.attributes["network.transport"] == "udp" and p.attributes["network.io.direction"] == "receive"
          and p.attributes["process.executable.name"] == receiver_name and p.attributes["network.peer.port"] == tx_port]
    assert sum(p.value for p in rx) == sum(sizes)  # named through the socket's creator: it never sent


def _serve_short(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(4096)
        s.settimeout(15)
        try:
            while True:
                c, _ = s.accept()
                c.recv(1)
                c.sendall(b"y")
                c.close()
        except OSError:
            pass  # the test ends us, or nobody came for 15 s


def _connect_short(port: int, n: int) -> None:
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"x")
            c.recv(1)


def test_parallel_short_connections_are_all_counted_once():
    # Many processes opening and closing connections while the sensor walks the sockets every
    # 0.2 s: socket addresses are reused all the time, every connection must count exactly once.
    import multiprocessing

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    registry = Registry()
    with running(NetworkSensor(lambda batch: None, registry, host_resource(), sample_interval=0.2)):
        ctx = multiprocessing.get_context("fork")
        servers = [ctx.Process(target=_serve_short, args=(port,)) for _ in range(2)]
        for p in servers:
            p.start()
        time.sleep(0.3)
        clients = [ctx.Process(target=_connect_short, args=(port, 1501)) for _ in range(4)]
        for p in clients:
            p.start()
        for p in clients:
            p.join(60)
        for p in servers:
            p.terminate()
            p.join(10)
        time.sleep(0.5)
    counts = {role: sum(p.value for p in registry.counter("otelbpf.network.tcp.connections").points()
                        if p.attributes["server.port"] == port and p.attributes["otelbpf.network.role"] == role)
              for role in ("client", "server")}
    assert counts == {"client": 4 * 1501, "server": 4 * 1501}
    assert not registry.counter("otelbpf.sensor.dropped").points()
