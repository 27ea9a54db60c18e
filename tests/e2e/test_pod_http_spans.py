"""HTTP spans of pods carry their pods: a server and a client, each in a pod made on a real
containerd and runc as kubelet's CRI calls leave it, seen by the real HTTP sensor, named by
the agent's enrichment stage from the identity table that asks containerd's socket. The
server and client are the host's python3 (its /usr mounted read-only in the containers) so
each is one long-lived process; the client sends exactly 23 requests."""

from __future__ import annotations

import os
import socket
import time

import pytest

from otelbpf.agent import span_path
from otelbpf.enrich.containerd import ContainerdClient
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.runtime import ContainerDirectory
from otelbpf.enrich.stage import Enrichment
from otelbpf.pipeline.span_metrics import SpanMetrics
from otelbpf.sensors.base import running
from otelbpf.sensors.http import HttpSensor
from otelbpf.signals.model import Resource, SpanColumns, SpanKind
from otelbpf.signals.registry import Registry
from tests.conftest import wait_for_port
from tests.containerd import Containerd, PodSpec

REQUESTS = 23
HOST = Resource.of({"host.name": "node-a", "service.name": "otelbpf"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLIENT = """
import os, sys, time, urllib.request
port, go, done, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
for _ in range(n):
    urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5).read()
open(done, "w").close()
time.sleep(600)
"""


@pytest.fixture
def runtime():
    engine = Containerd()
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def test_server_and_client_spans_name_their_pods(runtime):
    port, token = _free_port(), os.urandom(4).hex()
    server = PodSpec("web-6c8f9d7b5-k2x9z", "shop", "http", ["/usr/bin/python3", "-m", "http.server", str(port),
                     "--bind", "127.0.0.1", "--directory", "/www"],
                     labels={"app.kubernetes.io/name": "storefront", "pod-template-hash": "6c8f9d7b5"},
                     driver="systemd", qos="burstable", host_usr=True)
    client = PodSpec("client-7b5d4c9f8-p4q7r", "shop", "load", ["/usr/bin/python3", "-c", CLIENT, str(port),
                     f"/tmp/go-{token}", f"/tmp/done-{token}", str(REQUESTS)], labels={"pod-template-hash": "7b5d4c9f8"},
                     host_usr=True)
    directory = ContainerDirectory([ContainerdClient(runtime.socket)])
    table = IdentityTable(HOST, containers=directory, node_name="node-a")
    batches: list = []

    def emit(columns: SpanColumns) -> None:
        batches.extend(columns.to_batches())

    sensor = HttpSensor(span_path(Enrichment(table), SpanMetrics(Registry()), emit), Registry())
    try:
        with running(sensor):
            _, server_pid = runtime.run_pod(server)
            assert wait_for_port(port, timeout=20), runtime.log_tail()
            _, client_pid = runtime.run_pod(client)
            # As the agent does at a container's first event: asked once, named from then on.
            for pid in (server_pid, client_pid):
                table.resource(pid)
            assert directory.wait_idle(10)
            open(os.path.join(runtime.rootfs, "tmp", f"go-{token}"), "w").close()
            done = os.path.join(runtime.rootfs, "tmp", f"done-{token}")
            deadline = time.monotonic() + 30
            while not os.path.exists(done):
                assert time.monotonic() < deadline, "the client did not finish its requests"
                time.sleep(0.05)
            time.sleep(0.5)
    finally:
        directory.close()

    def spans_of(pid: int, kind: SpanKind) -> list[tuple[dict, object]]:
        return [(dict(b.resource.attributes), s) for b in batches for s in b.spans
                if dict(b.resource.attributes).get("process.pid") == pid and s.kind is kind]

    served = [(r, s) for r, s in spans_of(server_pid, SpanKind.SERVER) if s.attributes.get("url.path") == "/index.html"]
    sent = [(r, s) for r, s in spans_of(client_pid, SpanKind.CLIENT) if s.attributes.get("server.port") == port]
    assert len(served) == len(sent) == REQUESTS
    for resource, _ in served:
        assert (resource["k8s.pod.name"], resource["k8s.namespace.name"], resource["k8s.container.name"]) == (
            server.name, "shop", "http")
        assert (resource["service.name"], resource["k8s.deployment.name"]) == ("storefront", "web")
        assert resource["container.id"] == server.container_id
    for resource, _ in sent:
        assert (resource["k8s.pod.name"], resource["k8s.namespace.name"], resource["k8s.container.name"]) == (
            client.name, "shop", "load")
        assert resource["service.name"] == "client"  # its deployment: no label names it
