"""The container runtimes' sockets as they go wrong: missing, slow, answering garbage. Identity
stays empty and counted, and no lookup waits. Docker's API is served by a stand-in over a unix
socket (no dockerd runs here) for the compose labels and for its failures."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from otelbpf.config import load_config
from otelbpf.enrich.containerd import ContainerdClient
from otelbpf.enrich.crio import CrioClient
from otelbpf.enrich.docker import DockerClient
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.runtime import PENDING, Container, ContainerDirectory, RuntimeClient
from otelbpf.signals.model import Resource
from otelbpf.signals.registry import Registry

HOST = Resource.of({"host.name": "h1", "service.name": "otelbpf"})
CID = "e3" * 32


@contextmanager
def unix_server(path: str, handle: Callable[[socket.socket], None]) -> Iterator[None]:
    """A unix socket server answering each connection with handle, on a thread."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    server.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def silent(conn: socket.socket) -> None:
    """Accepts and never answers: a runtime that hangs."""


def garbage(conn: socket.socket) -> None:
    """Reads what the client says and answers bytes that mean nothing."""
    conn.settimeout(2)
    try:
        conn.recv(65536)
        conn.sendall(b"\x17\x03garbage" + bytes(range(256)) + b"\r\n\r\n")
    except OSError:
        pass
    finally:
        conn.close()


def respond(conn: socket.socket, status: str, body: bytes) -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)


def http_answer(status: str, body: bytes) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            conn.recv(65536)
            respond(conn, status, body)
        finally:
            conn.close()
    return answer


def proc_with_container(tmp_path) -> str:
    """A /proc with one process (pid 23) in a docker container's cgroup."""
    (tmp_path / "proc" / "23").mkdir(parents=True)
    (tmp_path / "proc" / "23" / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
    return str(tmp_path / "proc")


def lookup_is_prompt(table: IdentityTable) -> dict:
    started = time.monotonic()
    attrs = dict(table.resource(23, b"app").attributes)
    assert time.monotonic() - started < 0.5, "a lookup waited on a runtime (that takes 2 s to time out)"
    return attrs


@pytest.mark.parametrize("kind", ["missing", "slow", "garbage"])
@pytest.mark.parametrize("client", ["containerd", "docker", "cri-o"])
def test_a_bad_socket_leaves_identity_empty_and_counted(tmp_path, kind, client):
    path = str(tmp_path / "runtime.sock")
    runtime: RuntimeClient = {"containerd": ContainerdClient, "docker": DockerClient, "cri-o": CrioClient}[client](
        path, timeout=2.0)
    directory = ContainerDirectory([runtime], retry_after=60)
    table = IdentityTable(HOST, proc=proc_with_container(tmp_path), containers=directory)
    handler = {"slow": silent, "garbage": garbage}.get(kind)
    with unix_server(path, handler) if handler else _nothing():
        try:
            first = lookup_is_prompt(table)
            assert directory.wait_idle(5)
            after = lookup_is_prompt(table)
        finally:
            directory.close()
    for attrs in (first, after):
        assert attrs["container.id"] == CID and attrs["container.runtime"] == "docker"  # what the cgroup says
        assert "container.name" not in attrs and attrs["service.name"] == "app"
    failed = {name: n for name, n in directory.counts.items() if name.startswith("failed:")}
    assert sum(failed.values()) == 1, directory.counts
    # gRPC cannot tell garbage from a connection that broke: both are UNAVAILABLE to it
    expected = {"missing": "missing", "slow": "timeout", "garbage": "unavailable" if client == "containerd" else "garbage"}
    assert failed == {f"failed:{client}:{expected[kind]}": 1}
    assert table.unresolved == 1  # the first lookup; the second got the runtime's (empty) answer


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def test_docker_compose_labels_name_the_service(tmp_path):
    path = str(tmp_path / "docker.sock")
    body = json.dumps({"Id": CID, "Name": "/shop-cart-1", "Config": {
        "Image": "shop/cart:1.4", "Labels": {"com.docker.compose.project": "shop", "com.docker.compose.service": "cart"}}})
    directory = ContainerDirectory([DockerClient(path)])
    table = IdentityTable(HOST, proc=proc_with_container(tmp_path), containers=directory)
    with unix_server(path, http_answer("200 OK", body.encode())):
        try:
            table.resource(23, b"app")
            assert directory.wait_idle(5)
            attrs = dict(table.resource(23, b"app").attributes)
        finally:
            directory.close()
    assert (attrs["service.name"], attrs["service.namespace"]) == ("cart", "shop")
    assert (attrs["container.name"], attrs["container.image.name"]) == ("shop-cart-1", "shop/cart:1.4")


def test_docker_says_not_found_for_a_container_it_does_not_have(tmp_path):
    path = str(tmp_path / "docker.sock")
    with unix_server(path, http_answer("404 Not Found", b'{"message": "No such container"}')):
        assert DockerClient(path).container(CID) is None


class Scripted:
    """A runtime answering from a dict, for the directory's own rules (caching, expiry)."""

    name = "scripted"

    def __init__(self, known: dict[str, Container]) -> None:
        self.known = known
        self.asked: list[str] = []

    def container(self, container_id: str) -> Container | None:
        self.asked.append(container_id)
        return self.known.get(container_id)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_directory_asks_once_caches_bounded_and_expires():
    known = {f"{i:064x}": Container(f"{i:064x}", "containerd", name=f"c{i}") for i in range(41)}
    runtime, clock = Scripted(known), Clock()
    directory = ContainerDirectory([runtime], max_entries=23, ttl=300, retry_after=10, clock=clock)
    try:
        ids = list(known)
        assert all(directory.peek(i) is PENDING for i in ids)
        assert directory.wait_idle(5)
        assert directory.peek(ids[-1]) == known[ids[-1]]
        assert len(directory._cache) == 23 and directory.counts["found"] == 41
        assert runtime.asked == ids  # each asked once, in the order first seen

        unknown = "f" * 64
        assert directory.peek(unknown) is PENDING
        assert directory.wait_idle(5) and directory.peek(unknown) is None
        clock.now += 11  # a container no runtime knew is asked again after retry_after
        assert directory.peek(unknown) is None  # the old answer while it is asked again
        assert directory.wait_idle(5) and runtime.asked.count(unknown) == 2

        clock.now += 301  # a found container not asked for in ttl is asked again
        assert directory.peek(ids[-1]) == known[ids[-1]]
        assert directory.wait_idle(5) and runtime.asked.count(ids[-1]) == 2
    finally:
        directory.close()


def test_a_full_queue_drops_and_counts():
    class Stuck(Scripted):
        def __init__(self) -> None:
            super().__init__({})
            self.release = threading.Event()

        def container(self, container_id: str) -> Container | None:
            self.release.wait(5)
            return None

    runtime = Stuck()
    directory = ContainerDirectory([runtime], max_queued=3)
    try:
        answers = [directory.peek(f"{i:064x}") for i in range(7)]
        assert answers.count(None) >= 3 and directory.counts["dropped"] == answers.count(None)
    finally:
        runtime.release.set()
        directory.close()


def test_the_table_as_the_config_describes_it_counts_in_the_agents_metrics(tmp_path):
    config = load_config(None, {"OTELBPF_IDENTITY__CONTAINERD_SOCKET": str(tmp_path / "none.sock"),
                                "OTELBPF_IDENTITY__CRIO_SOCKET": str(tmp_path / "crio.sock"),
                                "OTELBPF_IDENTITY__DOCKER_SOCKET": str(tmp_path / "docker.sock"),
                                "OTELBPF_IDENTITY__NODE_NAME": "node-7"}, {})
    table = IdentityTable.configured(HOST, **config.identity.model_dump())
    assert table.node_name == "node-7" and table.rules.systemd_unit
    table._proc = proc_with_container(tmp_path)
    registry = Registry()
    table.register_metrics(registry)
    try:
        table.resource(23, b"app")
        assert table.containers is not None and table.containers.wait_idle(5)
    finally:
        table.close()
    points = {i.name: [(dict(p.attributes), p.value) for p in i.points()] for i in registry.instruments()}
    assert points["otelbpf.identity.unresolved"] == [({}, 1)]
    assert points["otelbpf.identity.runtime_lookups"] == [
        ({"result": "failed:containerd:missing"}, 1), ({"result": "failed:cri-o:missing"}, 1),
        ({"result": "failed:docker:missing"}, 1), ({"result": "not_found"}, 1)]


def test_a_container_no_runtime_knew_yet_is_named_once_one_does(tmp_path):
    """A container created an instant before a runtime's index has it (the API's watch lags):
    its processes go unnamed, and are named at the first lookup after a runtime has answered."""
    runtime, clock = Scripted({}), Clock()
    directory = ContainerDirectory([runtime], retry_after=10, clock=clock)
    table = IdentityTable(HOST, proc=proc_with_container(tmp_path), containers=directory)
    try:
        table.resource(23, b"app")
        assert directory.wait_idle(5)
        assert "container.name" not in dict(table.resource(23, b"app").attributes)
        runtime.known[CID] = Container(CID, "docker", name="cart")
        clock.now += 11
        table.resource(23, b"app")  # asks again: the earlier answer is older than retry_after
        assert directory.wait_idle(5)
        assert dict(table.resource(23, b"app").attributes)["container.name"] == "cart"
        assert runtime.asked == [CID, CID] and table.unresolved == 1
    finally:
        directory.close()


def routed(answers: dict[str, bytes]) -> Callable[[socket.socket], None]:
    """An HTTP server answering GET <path> from answers (404 for any other path)."""
    def answer(conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            path = conn.recv(65536).split(b" ", 2)[1].decode()
            body = answers.get(path)
            respond(conn, "200 OK" if body is not None else "404 Not Found", body if body is not None else b"{}")
        finally:
            conn.close()
    return answer


def test_crio_names_the_pod_from_the_container_and_its_sandbox(tmp_path):
    """CRI-O's inspect API (no CRI-O in Debian: a stand-in serves what `crictl inspect`'s
    endpoint answers): kubelet's labels on the container, the pod's on its sandbox."""
    sandbox_id = "5a" * 32
    kube = {"io.kubernetes.pod.name": "cart-7b5d4c9f8-p4q7r", "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.uid": "u-cart"}
    container = {"name": "k8s_cart_cart-7b5d4c9f8-p4q7r_shop_u-cart_0", "pid": 4242, "image": "registry.local/cart:2",
                 "labels": {**kube, "io.kubernetes.container.name": "cart"}, "annotations": {},
                 "crio_annotations": {"io.kubernetes.cri-o.ContainerType": "container"}, "sandbox": sandbox_id}
    sandbox = {"name": "k8s_POD_cart", "labels": {**kube, "app.kubernetes.io/name": "cart-api", "pod-template-hash": "7b5d4c9f8"},
               "annotations": {"resource.opentelemetry.io/service.namespace": "retail"},
               "crio_annotations": {"io.kubernetes.cri-o.ContainerType": "sandbox"}, "sandbox": sandbox_id}
    path = str(tmp_path / "crio.sock")
    with unix_server(path, routed({f"/containers/{CID}": json.dumps(container).encode(),
                                   f"/containers/{sandbox_id}": json.dumps(sandbox).encode()})):
        directory = ContainerDirectory([CrioClient(path)])
        table = IdentityTable(HOST, proc=proc_with_container(tmp_path), containers=directory)
        try:
            table.resource(23, b"cart")
            assert directory.wait_idle(5)
            attrs = dict(table.resource(23, b"cart").attributes)
        finally:
            directory.close()
        assert CrioClient(path).container("0" * 64) is None
    assert (attrs["k8s.pod.name"], attrs["k8s.namespace.name"], attrs["k8s.container.name"]) == (
        "cart-7b5d4c9f8-p4q7r", "shop", "cart")
    assert (attrs["service.name"], attrs["service.namespace"], attrs["k8s.deployment.name"]) == ("cart-api", "retail", "cart")
    assert (attrs["container.runtime"], attrs["container.image.name"]) == ("cri-o", "registry.local/cart:2")
