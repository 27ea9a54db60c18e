"""Service identity from a real Docker Engine (Debian's docker.io, started by the test with its
own data root, socket and cgroup parent, no network set-up): a container labelled as docker
compose labels its services is named by the compose service, in the compose project, through
Docker's API on its socket; one without compose labels by its executable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

import pytest

from otelbpf.enrich.docker import DockerClient
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.runtime import ContainerDirectory
from otelbpf.signals.model import Resource
from tests.conftest import require, require_tool
from tests.containerd import remove_cgroups

HOST = Resource.of({"host.name": "h1", "service.name": "otelbpf"})
IMAGE = "otelbpf-busybox:test"


class Docker:
    def __init__(self) -> None:
        require_tool("dockerd")
        self.cli = require_tool("docker")
        require(os.geteuid() == 0, "running dockerd needs root")
        self.dir = tempfile.mkdtemp(prefix="otelbpf-docker-", dir="/tmp")
        self.socket = os.path.join(self.dir, "docker.sock")
        self.cgroup_top = f"otelbpf-test-{os.getpid()}-{os.urandom(3).hex()}"
        self._log = open(os.path.join(self.dir, "dockerd.log"), "wb")
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        config = os.path.join(self.dir, "daemon.json")
        with open(config, "w") as f:  # its key file here too, not in /etc/docker
            json.dump({"deprecated-key-path": os.path.join(self.dir, "key.json")}, f)
        self._process = subprocess.Popen(
            ["dockerd", "--config-file", config, "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec", "--host",
             f"unix://{self.socket}", "--pidfile", f"{self.dir}/dockerd.pid", "--iptables=false", "--ip6tables=false",
             "--ip-masq=false", "--bridge=none", "--storage-driver=vfs", "--cgroup-parent", f"/{self.cgroup_top}/docker"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        rootfs = os.path.join(self.dir, "rootfs")
        os.makedirs(os.path.join(rootfs, "bin"))
        shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
        os.symlink("busybox", os.path.join(rootfs, "bin", "sleep"))
        with tarfile.open(os.path.join(self.dir, "rootfs.tar"), "w") as tar:
            tar.add(rootfs, arcname=".")
        self.docker("import", os.path.join(self.dir, "rootfs.tar"), IMAGE)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([self.cli, "-H", f"unix://{self.socket}", *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DOCKER_CONFIG": os.path.join(self.dir, "cli")})
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}\n{self.log_tail()}")
        return done

    def run(self, name: str, labels: dict[str, str]) -> tuple[str, int]:
        args = ["run", "--detach", "--network", "none", "--name", name]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        container_id = self.docker(*args, IMAGE, "/bin/sleep", "600").stdout.strip()
        return container_id, int(self.docker("inspect", "--format", "{{.State.Pid}}", container_id).stdout)

    def log_tail(self) -> str:
        with open(os.path.join(self.dir, "dockerd.log"), "rb") as f:
            return f.read()[-3000:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            running = self.docker("ps", "--all", "--quiet", check=False).stdout.split()
            if running:
                self.docker("rm", "--force", *running, check=False)
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        remove_cgroups(self.cgroup_top)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def docker():
    engine = Docker()
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def test_compose_labels_name_the_service_through_dockers_socket(docker):
    cart_id, cart_pid = docker.run("shop-cart-1", {"com.docker.compose.project": "shop",
                                                  "com.docker.compose.service": "cart"})
    plain_id, plain_pid = docker.run("plain", {})
    directory = ContainerDirectory([DockerClient(docker.socket)])
    table = IdentityTable(HOST, containers=directory)
    try:
        for pid in (cart_pid, plain_pid):
            table.resource(pid)
        assert directory.wait_idle(10)
        cart, plain = (dict(table.resource(pid).attributes) for pid in (cart_pid, plain_pid))
    finally:
        directory.close()
    assert (cart["service.name"], cart["service.namespace"]) == ("cart", "shop")
    assert (cart["container.id"], cart["container.name"], cart["container.runtime"]) == (cart_id, "shop-cart-1", "docker")
    assert cart["container.image.name"] == IMAGE
    assert (plain["container.id"], plain["container.name"]) == (plain_id, "plain")
    assert plain["service.name"] == "busybox" and "service.namespace" not in plain  # the executable
    assert directory.counts["found"] == 2
