"""Identity from real cgroups: a process moved into a cgroup named like a systemd service, and
one moved into a kubelet-layout container cgroup, named by the table as the kernel shows them
in /proc/PID/cgroup (no systemd or kubelet needed to make the cgroups)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from otelbpf.enrich.containers import find_cgroup2_root
from otelbpf.enrich.identity import IdentityTable
from otelbpf.signals.model import Resource
from tests.conftest import require

HOST = Resource.of({"host.name": "h1", "service.name": "otelbpf"})


@pytest.fixture
def cgroup_of_own():
    """Makes cgroups (relative paths under the v2 root), moves a fresh `sleep` into the last
    one, and removes them all after."""
    found = find_cgroup2_root()
    require(found is not None, "no cgroup2 hierarchy mounted")
    root = found or ""
    made: list[str] = []
    procs: list[subprocess.Popen] = []

    def place(relative: str) -> subprocess.Popen:
        parts = relative.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = os.path.join(root, *parts[:depth])
            if not os.path.isdir(path):
                os.mkdir(path)
                made.append(path)
        proc = subprocess.Popen(["sleep", "30"])
        procs.append(proc)
        with open(os.path.join(root, *parts, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        return proc

    try:
        yield place
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for path in reversed(made):
            deadline = time.monotonic() + 5
            while True:
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def kubelet_container_cgroup(pod_uid: str, container_id: str) -> str:
    """The systemd driver's layout for a Burstable pod, under a cgroup root of the test's own."""
    top, slice_uid = f"otelbpf-test-{os.getpid()}-kubepods", pod_uid.replace("-", "_")
    return (f"{top}.slice/{top}-burstable.slice/{top}-burstable-pod{slice_uid}.slice/"
            f"cri-containerd-{container_id}.scope")


def test_a_process_in_a_service_cgroup_is_named_by_the_unit(cgroup_of_own):
    pid = cgroup_of_own(f"otelbpf-test-{os.getpid()}.slice/nginx-test.service").pid
    attrs = dict(IdentityTable(HOST).resource(pid).attributes)
    assert attrs["service.name"] == "nginx-test"
    assert attrs["process.executable.name"] == "sleep"
    assert "container.id" not in attrs


def test_a_process_in_a_kubelet_container_cgroup_names_its_container_and_pod(cgroup_of_own):
    pod_uid = str(uuid.uuid4())
    container_id = os.urandom(32).hex()
    pid = cgroup_of_own(kubelet_container_cgroup(pod_uid, container_id)).pid
    table = IdentityTable(HOST)  # no runtime asked: what the cgroup alone says
    attrs = dict(table.resource(pid).attributes)
    assert (attrs["container.id"], attrs["container.runtime"], attrs["k8s.pod.uid"]) == (container_id, "containerd", pod_uid)
    assert table.of(pid).container_id == container_id
    assert attrs["service.name"] == "sleep"  # no runtime said who the pod is


def test_a_process_gone_before_its_lookup_is_named_by_the_cgroup_the_kernel_saw(cgroup_of_own):
    """A short-lived process (a curl, a forked server child) is often gone when its batch is
    enriched: the cgroup id its events carry (bpf_get_current_cgroup_id) still names its
    container and pod."""
    pod_uid, container_id = str(uuid.uuid4()), os.urandom(32).hex()
    relative = kubelet_container_cgroup(pod_uid, container_id)
    proc = cgroup_of_own(relative)
    cgroup_id = os.stat(os.path.join(find_cgroup2_root() or "", relative)).st_ino
    proc.kill()
    proc.wait()  # reaped: /proc/PID is gone
    assert not os.path.exists(f"/proc/{proc.pid}")
    table = IdentityTable(HOST)
    attrs = dict(table.resource(proc.pid, b"sleep", cgroup_id).attributes)
    assert (attrs["container.id"], attrs["k8s.pod.uid"], attrs["process.executable.name"]) == (
        container_id, pod_uid, "sleep")
    assert dict(table.resource(1 << 22 | 7, b"curl", 1 << 60).attributes).get("container.id") is None  # unknown id
