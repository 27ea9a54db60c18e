"""The image run as the DaemonSet runs it: `make image`'s OCI archive imported into a real
containerd (Debian's, started by the test with its own state), run with `ctr` using the
rendered chart's pod spec (security context, host namespaces, mounts, environment, args)
translated into ctr flags, so the chart and this test cannot drift apart. A process started
on the host arrives at an OTLP receiver on the host; /healthz and /readyz answer; stopping
the container leaves no BPF program attached.

`make test` builds the image first (`make image`: about 4 minutes the first time, cached after)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tarfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from otelbpf import __version__
from otelbpf.receiver.otlp import OtlpReceiver
from tests.conftest import require, require_tool, wait_for_port
from tests.e2e.test_cli import OUR_PROGRAMS, log_records, wait_until
from tests.kubelet import project

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ARCHIVE = ROOT / "build" / "image" / "otelbpf-image.tar"
NAMESPACE = "otelbpf-test"
# Capability numbers (linux/capability.h) of those the chart may list.
CAP_NUMBERS = {"DAC_READ_SEARCH": 2, "NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "SYS_RESOURCE": 24,
               "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40}


def bounding_set() -> set[str]:
    """The capabilities this process may still hand on: no runtime can grant a container more."""
    status = Path("/proc/self/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:")), 16)
    return {name for name, bit in CAP_NUMBERS.items() if mask >> bit & 1}


def image_config(archive: Path) -> tuple[str, list[str], str]:
    """(image name, entry point, user) from the OCI archive's index, manifest and config."""
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> dict:
            algorithm, value = digest.split(":", 1)
            member = tar.extractfile(f"blobs/{algorithm}/{value}")
            assert member is not None
            return json.load(member)
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        (manifest_ref,) = json.load(index_file)["manifests"]
        config = blob(blob(manifest_ref["digest"])["config"]["digest"])["config"]
        return (manifest_ref["annotations"]["org.opencontainers.image.ref.name"], config["Entrypoint"],
                config.get("User", ""))


def agent_program_ids() -> set[int]:
    """Ids of the loaded BPF programs named as the agent's: ids, so that another agent on the
    host (its programs have the same names) does not count."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out) if p.get("name") in OUR_PROGRAMS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def ctr_flags(docs: list[dict], volumes_root: Path, node_name: str) -> tuple[list[str], list[str]]:
    """(ctr run flags, the container's args) for the rendered DaemonSet's pod, as the kubelet
    would set it up: host namespaces, security context, environment (downward API values
    filled in, $(VAR) expanded), hostPath and ConfigMap volumes (ConfigMaps materialised the
    kubelet's way under volumes_root)."""
    config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    (daemonset,) = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    flags: list[str] = []
    if pod.get("hostPID"):
        # The host's pid namespace, named through this test's own process: pid 1's may not be
        # readable where the test host is itself sandboxed.
        flags += ["--with-ns", f"pid:/proc/{os.getpid()}/ns/pid"]
    if pod.get("hostNetwork"):
        flags.append("--net-host")
    security = container.get("securityContext", {})
    if security.get("privileged"):
        flags.append("--privileged")
    else:
        flags += [f"--cap-drop=CAP_{c}" for c in security["capabilities"].get("drop", [])]
        wanted = set(security["capabilities"]["add"])
        # Where the test host itself runs without one (a sandboxed CI machine), it cannot be
        # granted; only SYS_RESOURCE may be missing: kernels since 5.11 do not need it.
        unavailable = wanted - bounding_set()
        assert unavailable <= {"SYS_RESOURCE"}, f"the test host lacks {unavailable}"
        flags += [f"--cap-add=CAP_{c}" for c in sorted(wanted - unavailable)]
        # seccompProfile Unconfined: ctr applies no seccomp profile unless --seccomp is given.
        assert security.get("seccompProfile") == {"type": "Unconfined"}
    downward = {"spec.nodeName": node_name, "metadata.name": "otelbpf-test-pod",
                "metadata.namespace": daemonset["metadata"]["namespace"], "status.podIP": "127.0.0.1"}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            value = var["value"]
            for name, known in env.items():
                value = value.replace(f"$({name})", known)
        else:
            value = downward[var["valueFrom"]["fieldRef"]["fieldPath"]]
        env[var["name"]] = value
    flags += [f"--env={k}={v}" for k, v in env.items()]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            source = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                source.mkdir(parents=True, exist_ok=True)
            assert source.exists(), f"hostPath {source} of volume {mount['name']} is missing on this node"
        else:
            source = volumes_root / mount["name"]
            project(source, config_maps[volume["configMap"]["name"]])
        options = "rbind:ro" if mount.get("readOnly") else "rbind:rw"
        flags.append(f"--mount=type=bind,src={source},dst={mount['mountPath']},options={options}")
    return flags, container["args"]


@pytest.fixture
def containerd(tmp_path):
    require(os.geteuid() == 0, "needs root to run containerd")
    require(IMAGE_ARCHIVE.exists(), f"{IMAGE_ARCHIVE} is missing: run `make image` (or `make test-image`)")
    binary = require_tool("containerd")
    require_tool("ctr")
    require_tool("runc")
    state = tmp_path / "containerd"
    socket_path = state / "containerd.sock"
    state.mkdir()
    (state / "config.toml").write_text(f"""version = 2
root = "{state}/root"
state = "{state}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket_path}"
""")
    log = (state / "containerd.log").open("w")
    daemon = subprocess.Popen([binary, "--config", str(state / "config.toml")], stdout=log, stderr=subprocess.STDOUT)
    assert wait_until(lambda: socket_path.exists() or daemon.poll() is not None, 30), "containerd did not start"
    assert daemon.poll() is None, (state / "containerd.log").read_text()

    def ctr(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["ctr", "--address", str(socket_path), "--namespace", NAMESPACE, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert not check or done.returncode == 0, f"ctr {' '.join(args)}: {done.stderr}"
        return done

    ctr.state = state  # type: ignore[attr-defined]
    yield ctr
    for task in ctr("tasks", "ls", "--quiet", check=False).stdout.split():
        ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        wait_until(lambda t=task: ctr("tasks", "delete", t, check=False).returncode == 0, 10)
    for container in ctr("containers", "ls", "--quiet", check=False).stdout.split():
        ctr("containers", "delete", container, check=False)
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


@pytest.mark.parametrize("privileged", [True, False], ids=["privileged", "capabilities"])
def test_image_runs_as_the_daemonset_specifies(containerd, tmp_path, privileged):
    from tests.deploy.test_chart import render

    name, entrypoint, _ = image_config(IMAGE_ARCHIVE)
    imported = containerd("images", "import", "--no-unpack=false", str(IMAGE_ARCHIVE))
    images = containerd("images", "ls", "--quiet").stdout.split()
    image = next((i for i in images if i.endswith(name)), None)
    assert image is not None, (imported.stdout, images)

    health = free_port()
    with OtlpReceiver("127.0.0.1", 0, 0) as receiver:
        docs = render({"privileged": privileged, "sensors": ["process"], "otlp": {"endpoint": receiver.grpc_endpoint},
                       "health": {"port": health}, "stateDir": str(tmp_path / "state"),
                       "runtimeSocketDirs": [str(containerd.state)], "config": {"metrics_interval": 1}})
        flags, args = ctr_flags(docs, tmp_path / "volumes", socket.gethostname())
        container_id = f"otelbpf-{uuid.uuid4().hex[:8]}"
        before = agent_program_ids()
        agent_log = tmp_path / "agent.log"
        containerd("run", "--detach", f"--log-uri=file://{agent_log}", *flags, image, container_id, *entrypoint, *args)
        try:
            if not wait_until(lambda: get(health, "/readyz")[0] == 200, 90):
                log = agent_log.read_text() if agent_log.exists() else ""
                pytest.fail(f"not ready: {get(health, '/readyz')}; agent's log:\n{log}")
            assert get(health, "/healthz") == (200, "ok\n")
            assert agent_program_ids() - before, "no BPF program of the agent attached"

            tag = uuid.uuid4().hex[:8]
            children = [subprocess.Popen(["/bin/sh", "-c", f"exit {(7 * i + 1) % 256}", f"ctr-{tag}-{i}"])
                        for i in range(23)]
            for child in children:
                child.wait()
            pids = {c.pid: (7 * i + 1) % 256 for i, c in enumerate(children)}

            def exits() -> dict[int, int]:
                return {a["process.pid"]: a["process.exit.code"] for e, a in log_records(receiver)
                        if e == "process.exit" and a["process.pid"] in pids}

            assert wait_until(lambda: len(exits()) == len(pids), 30), exits()
            assert exits() == pids  # host pids: the container shares the host's pid namespace
        finally:
            containerd("tasks", "kill", "--signal", "SIGTERM", container_id, check=False)
            stopped = wait_until(lambda: "STOPPED" in containerd("tasks", "ls", check=False).stdout, 30)
        assert stopped, containerd("tasks", "ls", check=False).stdout
        assert wait_until(lambda: not (agent_program_ids() - before), 5), "programs still attached after stop"
        assert not wait_for_port(health, timeout=0.5)
        deleted = containerd("tasks", "delete", container_id, check=False)  # exits with the task's exit code
        containerd("containers", "delete", container_id)
    assert deleted.returncode == 0, agent_log.read_text()
    assert "otelbpf: stopping: detaching programs and flushing" in agent_log.read_text()


def test_image_is_the_agent_as_root_with_no_compiler(containerd):
    name, entrypoint, user = image_config(IMAGE_ARCHIVE)
    assert entrypoint == ["/opt/otelbpf/bin/otelbpf"] and user in ("", "0", "root")
    containerd("images", "import", str(IMAGE_ARCHIVE))
    image = next(i for i in containerd("images", "ls", "--quiet").stdout.split() if i.endswith(name))
    # The entry point is the agent's Python script itself, not a shell script.
    head = containerd("run", "--rm", image, f"head-{uuid.uuid4().hex[:6]}", "head", "-1", entrypoint[0]).stdout
    assert head == "#!/opt/otelbpf/bin/python3\n"
    found = containerd("run", "--rm", image, f"cc-{uuid.uuid4().hex[:6]}", "/bin/sh", "-c",
                       "ls /usr/bin/clang* /usr/bin/gcc* /usr/bin/cc /usr/bin/llc* 2>/dev/null; true").stdout
    assert found == ""
    version = containerd("run", "--rm", image, f"version-{uuid.uuid4().hex[:6]}", *entrypoint, "version").stdout
    assert version.startswith(f"otelbpf {__version__} (libbpf 1.1")  # Debian 12's libbpf1
