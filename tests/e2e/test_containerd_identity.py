"""Pod identity from a real containerd and runc: two namespaces with two pods each, made as
kubelet's CRI calls leave them (labels, annotations, cgroups of both drivers' layouts), and
the identity table naming the processes inside by pod, namespace, container, owner and
service.name, asking containerd's socket off the data path."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from otelbpf.enrich.containerd import ContainerdClient
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.runtime import ContainerDirectory
from otelbpf.signals.model import Resource
from tests.containerd import Containerd, PodSpec

HOST = Resource.of({"host.name": "node-a", "service.name": "otelbpf"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()
PODS = {
    "web": PodSpec("web-6c8f9d7b5-k2x9z", "shop", "httpd", ["httpd", "-f", "-p", f"127.0.0.1:{PORT}", "-h", "/www"],
                   labels={"app.kubernetes.io/name": "storefront", "pod-template-hash": "6c8f9d7b5"},
                   driver="systemd", qos="burstable"),
    "client": PodSpec("client-7b5d4c9f8-p4q7r", "shop", "wget",
                      ["sh", "-c", f"while :; do wget -q -O /dev/null http://127.0.0.1:{PORT}/; sleep 0.2; done"],
                      labels={"pod-template-hash": "7b5d4c9f8"}, driver="cgroupfs", qos="besteffort"),
    "auditor": PodSpec("auditor-0", "ops", "reader",
                       ["sh", "-c", "while :; do cat /etc/shadow >/dev/null; sleep 0.5; done"],
                       labels={"app.kubernetes.io/instance": "auditor-prod", "controller-revision-hash": "auditor-5d8f",
                               "statefulset.kubernetes.io/pod-name": "auditor-0"},
                       driver="cgroupfs", qos="guaranteed"),
    "burner": PodSpec("burner", "ops", "cpu", ["sh", "-c", "while :; do :; done"], driver="systemd", qos="besteffort"),
}
# pod -> (service.name, the owner attributes it must carry)
EXPECTED = {
    "web": ("storefront", {"k8s.deployment.name": "web", "k8s.replicaset.name": "web-6c8f9d7b5"}),
    "client": ("client", {"k8s.deployment.name": "client", "k8s.replicaset.name": "client-7b5d4c9f8"}),
    "auditor": ("auditor-prod", {"k8s.statefulset.name": "auditor"}),
    "burner": ("burner", {}),
}


@pytest.fixture(scope="module")
def pods():
    runtime = Containerd()
    try:
        runtime.start()
        pids = {key: runtime.run_pod(spec) for key, spec in PODS.items()}
        yield runtime, pids
    finally:
        runtime.stop()


def test_every_container_is_named_by_its_pod(pods):
    runtime, pids = pods
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=5) as response:  # the workload is up
        assert response.read() == b"hello from a pod\n"
    directory = ContainerDirectory([ContainerdClient(runtime.socket)])
    table = IdentityTable(HOST, containers=directory, node_name="node-a")
    try:
        first = {key: dict(table.resource(pid).attributes) for key, (_, pid) in pids.items()}
        for key, attrs in first.items():  # the runtime is asked off the data path: not named yet, counted
            assert attrs["container.id"] == PODS[key].container_id and "k8s.pod.name" not in attrs
        assert table.unresolved == len(PODS)
        assert directory.wait_idle(10), directory.counts
        for key, (_, pid) in pids.items():
            spec, (service, owners) = PODS[key], EXPECTED[key]
            attrs = dict(table.resource(pid).attributes)
            assert attrs["k8s.pod.name"] == spec.name
            assert attrs["k8s.namespace.name"] == spec.namespace
            assert attrs["k8s.pod.uid"] == spec.uid
            assert attrs["k8s.container.name"] == attrs["container.name"] == spec.container
            assert attrs["k8s.node.name"] == "node-a"
            assert attrs["container.id"] == spec.container_id and attrs["container.runtime"] == "containerd"
            assert attrs["container.image.name"] == "docker.io/library/busybox:1.36"
            assert attrs["service.name"] == service, key
            assert attrs["service.namespace"] == spec.namespace
            assert attrs["service.instance.id"] == f"{spec.namespace}.{spec.name}.{spec.container}"
            assert {k: v for k, v in attrs.items() if k.endswith(("deployment.name", "replicaset.name",
                                                                   "statefulset.name"))} == owners
        assert directory.counts["found"] == len(PODS)
        assert not [name for name in directory.counts if name.startswith("failed")]
        client = directory.clients[0]
        assert isinstance(client, ContainerdClient) and client.requests == 2 * len(PODS)  # each container, its sandbox
        asked = client.requests
        client.container(PODS["web"].container_id)  # a pod's sandbox is read once, not once per container
        assert client.requests == asked + 1
    finally:
        directory.close()


def test_a_sandbox_process_is_named_by_its_pod_without_a_container(pods):
    _, pids = pods
    directory = ContainerDirectory([ContainerdClient(pods[0].socket)])
    table = IdentityTable(HOST, containers=directory)
    try:
        sandbox_pid = pids["web"][0]
        table.resource(sandbox_pid)
        assert directory.wait_idle(10)
        attrs = dict(table.resource(sandbox_pid).attributes)
        assert (attrs["k8s.pod.name"], attrs["k8s.namespace.name"]) == (PODS["web"].name, "shop")
        assert "k8s.container.name" not in attrs
        assert attrs["service.name"] == "storefront"  # the pod's label, on its sandbox
    finally:
        directory.close()


def test_a_short_lived_container_is_still_named_after_it_exits(pods):
    """Identity is captured when the container is first seen: asked for at once, and kept
    after the container is gone."""
    runtime, _ = pods
    spec = PodSpec("oneshot-5f6b7c8d9-qrst2", "ops", "job", ["sleep", "2"], driver="cgroupfs")
    _, pid = runtime.run_pod(spec)
    directory = ContainerDirectory([ContainerdClient(runtime.socket)])
    table = IdentityTable(HOST, containers=directory)
    try:
        table.resource(pid)  # its first event
        assert directory.wait_idle(10)
        runtime.ctr("task", "kill", "--signal", "SIGKILL", spec.container_id)
        deadline = time.monotonic() + 10
        while runtime.ctr("task", "delete", spec.container_id, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the task did not exit"
            time.sleep(0.1)
        runtime.ctr("containers", "delete", spec.container_id)
        attrs = dict(table.resource(pid).attributes)  # the process is gone; its identity stays
        assert (attrs["k8s.pod.name"], attrs["k8s.deployment.name"], attrs["service.name"]) == (
            spec.name, "oneshot", "oneshot")
    finally:
        directory.close()
