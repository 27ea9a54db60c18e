"""A containerd of the test's own (its own root, state and socket under a temporary folder,
the CRI plugin off) and pods made the way kubelet's CRI calls leave them: a sandbox container
with the pod's labels and a container beside it, labelled and annotated as containerd's CRI
plugin does, in cgroups of the kubelet layout. Containers run on a busybox-static root
filesystem: nothing is pulled."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from otelbpf.enrich import containerd as cri
from tests.conftest import require, require_tool

BUSYBOX_APPLETS = ("sh", "sleep", "httpd", "wget", "cat", "true")
NAMESPACE = cri.CRI_NAMESPACE


@dataclass
class PodSpec:
    name: str
    namespace: str
    container: str
    command: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    driver: str = "cgroupfs"  # or systemd: the cgroup names each kubelet driver makes
    qos: str = "besteffort"  # guaranteed | burstable | besteffort
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    sandbox_id: str = field(default_factory=lambda: os.urandom(32).hex())
    container_id: str = field(default_factory=lambda: os.urandom(32).hex())
    host_usr: bool = False  # the host's /usr mounted read-only: its python3 runs in the container


class Containerd:
    def __init__(self) -> None:
        for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "busybox"):
            require_tool(tool)
        require(os.geteuid() == 0, "running containers needs root")
        self.dir = tempfile.mkdtemp(prefix="otelbpf-ctrd-", dir="/tmp")  # a socket path must stay short
        self.socket = os.path.join(self.dir, "containerd.sock")
        self.rootfs = os.path.join(self.dir, "rootfs")
        self.cgroup_top = f"otelbpf-test-{os.getpid()}-{os.urandom(3).hex()}"  # like kubelet's --cgroup-root
        self._process: subprocess.Popen | None = None
        self._log = open(os.path.join(self.dir, "containerd.log"), "wb")

    def start(self) -> None:
        self._make_rootfs()
        config = os.path.join(self.dir, "config.toml")
        with open(config, "w") as f:
            f.write(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir}/opt"
""")
        self._process = subprocess.Popen(["containerd", "--config", config], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while self.ctr("version", check=False).returncode != 0:
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"containerd did not start: see {self.dir}/containerd.log:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        with open(os.path.join(self.dir, "containerd.log"), "rb") as f:
            return f.read()[-3000:].decode("utf-8", "replace")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["ctr", "--address", self.socket, "--namespace", NAMESPACE, *args],
                              capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {done.stderr.strip()}\n{self.log_tail()}")
        return done

    def cgroup_path(self, pod: PodSpec, container_id: str) -> str:
        """The cgroup kubelet's driver gives the container, under this test's cgroup root."""
        if pod.driver == "systemd":
            top = f"{self.cgroup_top}-kubepods"
            qos = "" if pod.qos == "guaranteed" else f"-{pod.qos}"
            pod_slice = f"{top}{qos}-pod{pod.uid.replace('-', '_')}.slice"
            parents = [f"{top}.slice"] + ([f"{top}{qos}.slice"] if qos else []) + [pod_slice]
            return "/" + "/".join([*parents, f"cri-containerd-{container_id}.scope"])
        qos_dir = [] if pod.qos == "guaranteed" else [pod.qos]
        return "/" + "/".join([self.cgroup_top, "kubepods", *qos_dir, f"pod{pod.uid}", container_id])

    def run_pod(self, pod: PodSpec) -> tuple[int, int]:
        """Starts the pod's sandbox and its container; returns their pids."""
        pod_labels = {cri.POD_NAME_LABEL: pod.name, cri.POD_NAMESPACE_LABEL: pod.namespace, cri.POD_UID_LABEL: pod.uid}
        common = {cri.SANDBOX_ID_ANNOTATION: pod.sandbox_id, cri.SANDBOX_NAME_ANNOTATION: pod.name,
                  cri.SANDBOX_NAMESPACE_ANNOTATION: pod.namespace, cri.SANDBOX_UID_ANNOTATION: pod.uid}
        self._run(pod.sandbox_id, self.cgroup_path(pod, pod.sandbox_id), ["sleep", "600"],
                  labels={**pod.labels, **pod_labels, cri.KIND_LABEL: "sandbox"},
                  annotations={**common, "io.kubernetes.cri.container-type": "sandbox"})
        self._run(pod.container_id, self.cgroup_path(pod, pod.container_id), pod.command, host_usr=pod.host_usr,
                  labels={**pod_labels, cri.CONTAINER_NAME_LABEL: pod.container, cri.KIND_LABEL: "container"},
                  annotations={**common, "io.kubernetes.cri.container-type": "container",
                               cri.CONTAINER_NAME_ANNOTATION: pod.container,
                               cri.IMAGE_NAME_ANNOTATION: "docker.io/library/busybox:1.36"})
        return self.pid(pod.sandbox_id), self.pid(pod.container_id)

    def pid(self, container_id: str) -> int:
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise AssertionError(f"no task for container {container_id}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            for task in self.ctr("task", "ls", "--quiet", check=False).stdout.split():
                self.ctr("task", "kill", "--signal", "SIGKILL", task, check=False)
            deadline = time.monotonic() + 10
            for task in self.ctr("task", "ls", "--quiet", check=False).stdout.split():
                while self.ctr("task", "delete", task, check=False).returncode != 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
            for container in self.ctr("containers", "ls", "--quiet", check=False).stdout.split():
                self.ctr("containers", "delete", container, check=False)
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        remove_cgroups(self.cgroup_top)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, container_id: str, cgroup: str, command: list[str], labels: dict[str, str],
             annotations: dict[str, str], host_usr: bool = False) -> None:
        args = ["run", "--detach", "--net-host", "--cgroup", cgroup, "--env", "PATH=/bin"]
        if host_usr:
            args += ["--mount", "type=bind,src=/usr,dst=/usr,options=rbind:ro"]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        for key, value in annotations.items():
            args += ["--annotation", f"{key}={value}"]
        self.ctr(*args, "--rootfs", self.rootfs, container_id, *command)

    def _make_rootfs(self) -> None:
        for sub in ("bin", "proc", "dev", "sys", "tmp", "etc", "www", "usr"):
            os.makedirs(os.path.join(self.rootfs, sub), exist_ok=True)
        for lib in ("lib", "lib64"):  # a usr-merged layout, for the host's /usr when it is mounted
            os.symlink(f"usr/{lib}", os.path.join(self.rootfs, lib))
        shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(self.rootfs, "bin", "busybox"))
        for applet in BUSYBOX_APPLETS:
            os.symlink("busybox", os.path.join(self.rootfs, "bin", applet))
        with open(os.path.join(self.rootfs, "etc", "shadow"), "w") as f:
            f.write("root:*:19000:0:99999:7:::\n")
        with open(os.path.join(self.rootfs, "www", "index.html"), "w") as f:
            f.write("hello from a pod\n")


def remove_cgroups(top_prefix: str) -> None:
    """Removes this test's cgroups (runc leaves the parents it made) in every hierarchy."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, fs = line.partition(" - ")
            if fs.split(" ", 1)[0] in ("cgroup", "cgroup2"):
                mounts.append(fields.split(" ")[4])
    for mount in mounts:
        try:
            tops = [e.path for e in os.scandir(mount) if e.is_dir() and e.name.startswith(top_prefix)]
        except OSError:
            continue
        for top in tops:
            for path, _, _ in sorted(os.walk(top), key=lambda walked: -walked[0].count("/")):
                deadline = time.monotonic() + 5
                while os.path.isdir(path):
                    try:
                        os.rmdir(path)
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
