"""The agent as a DaemonSet pod runs it: config and policies in ConfigMap volumes that the
test updates the way the kubelet does (tests/kubelet.py), /healthz and /readyz answering
the probes. A new policy applies live; a broken one is refused, said (event, counter,
readiness message naming file, line and field) and the old one keeps matching; a changed
config says it needs a restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import require, wait_for_port
from tests.e2e.test_store_agent import wait_until
from tests.kubelet import project

POLICY = """name: {name}
severity: warn
rules:
  - hook: file_open
    paths:
      - {{op: Prefix, values: ["{prefix}/"]}}
    action: post
"""
# A relative path under an Equal match: refused at line 6, field rules.0.paths.0.
BROKEN_POLICY = POLICY.replace('["{prefix}/"]', '["relative/{prefix}"]')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pod:
    process: subprocess.Popen
    base: Path
    health_port: int

    @property
    def log(self) -> str:
        return (self.base / "agent.log").read_text()

    def probe(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def records(self) -> list[dict]:
        path = self.base / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]

    def events(self, name: str) -> list[dict]:
        return [r for r in self.records() if r.get("event_name") == name]

    def matches(self, directory: Path) -> list[tuple[str, str]]:
        """(file name, policy) of the security matches under directory."""
        return [(Path(r["attributes"]["file.path"]).name, r["attributes"]["otelbpf.security.policy"])
                for r in self.events("security.policy.match")
                if r["attributes"].get("file.path", "").startswith(f"{directory}/")]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def pod_config(base: Path, health_port: int, sensors: list[str], **extra) -> dict:
    return {"sensors": sensors, "console": False, "jsonl_path": str(base / "events.jsonl"),
            "store": {"path": str(base / "store.duckdb"), "flush_interval": 0.5}, "ui": "127.0.0.1:0",
            "health": f"127.0.0.1:{health_port}", "metrics_interval": 1,
            "security": {"shipped_policies": False, "policy_dir": str(base / "policies")}, **extra}


@pytest.fixture
def start_pod(tmp_path):
    require(os.geteuid() == 0, "needs root to load BPF programs")
    pods: list[Pod] = []

    def start(sensors: list[str], policies: dict[str, str] | None = None) -> Pod:
        port = free_port()
        project(tmp_path / "config", {"config.yaml": yaml.safe_dump(pod_config(tmp_path, port, sensors))})
        project(tmp_path / "policies", policies or {})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELBPF_"))}
        process = subprocess.Popen([sys.executable, "-m", "otelbpf", "run", "--config",
                                    str(tmp_path / "config" / "config.yaml")],
                                   env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "agent.log").open("w"))
        pod = Pod(process, tmp_path, port)
        pods.append(pod)
        if not wait_until(lambda: "running:" in pod.log or process.poll() is not None, 60):
            pytest.fail(f"agent did not start:\n{pod.log}")
        assert process.poll() is None, pod.log
        return pod

    yield start
    for pod in pods:
        pod.stop()


def test_probes_answer_and_go_with_the_agent(start_pod):
    pod = start_pod(["process"])
    assert pod.probe("/healthz") == (200, "ok\n")
    assert wait_until(lambda: pod.probe("/readyz") == (200, "ok\n"), 10), pod.probe("/readyz")
    assert pod.probe("/nothing-here")[0] == 404
    assert pod.stop() == 0
    assert not wait_for_port(pod.health_port, timeout=0.5)  # stopped with the agent


def test_configmap_policy_swap_applies_live_and_a_broken_one_is_refused(start_pod, tmp_path):
    tag = uuid.uuid4().hex[:8]
    first, second = tmp_path / f"first-{tag}", tmp_path / f"second-{tag}"
    for d in (first, second):
        d.mkdir()
        for i in range(5):
            (d / f"f{i}").write_text("x")
    pod = start_pod(["process", "security"], {"protect.yaml": POLICY.format(name="cm-v1", prefix=first)})
    assert wait_until(lambda: pod.probe("/readyz")[0] == 200, 10), pod.probe("/readyz")

    def cat(d: Path, *names: str) -> None:
        subprocess.run(["cat", *(str(d / n) for n in names)], check=True, stdout=subprocess.DEVNULL)

    cat(first, "f0")
    assert wait_until(lambda: pod.matches(first) == [("f0", "cm-v1")], 15), pod.matches(first)

    # A new version of the ConfigMap: applies without a restart.
    project(tmp_path / "policies", {"protect.yaml": POLICY.format(name="cm-v2", prefix=second)})
    assert wait_until(lambda: "policies reloaded: cm-v2" in pod.log, 15), pod.log
    cat(first, "f1")
    cat(second, "f1", "f2")
    assert wait_until(lambda: len(pod.matches(second)) == 2, 15), pod.matches(second)
    assert pod.matches(second) == [("f1", "cm-v2"), ("f2", "cm-v2")]
    assert pod.matches(first) == [("f0", "cm-v1")]  # the old policy no longer applies

    # A broken version: refused, said three ways, and the running policy keeps matching.
    project(tmp_path / "policies", {"protect.yaml": BROKEN_POLICY.format(name="cm-v3", prefix=second)})
    assert wait_until(lambda: pod.probe("/readyz")[0] == 503, 15), pod.log
    status, reason = pod.probe("/readyz")
    assert status == 503
    policy_file = tmp_path / "policies" / "protect.yaml"
    assert reason.startswith(f"policies: invalid, the running ones stay: policy {policy_file}: line 6: rules.0.paths.0: "
                             "Prefix needs an absolute path"), reason
    assert pod.probe("/healthz") == (200, "ok\n")  # not a reason to restart the pod
    (event,) = pod.events("otelbpf.config.invalid")
    assert event["severity"] == "ERROR" and event["attributes"] == {"otelbpf.config.source": "policies"}
    assert "line 6: rules.0.paths.0" in event["body"]
    cat(second, "f3")
    assert wait_until(lambda: len(pod.matches(second)) == 3, 15), pod.matches(second)
    assert pod.matches(second)[-1] == ("f3", "cm-v2")
    assert wait_until(lambda: invalid_count(pod, "policies") == 1, 10), pod.records()[-5:]

    # Fixed: applies, and the pod is ready again.
    project(tmp_path / "policies", {"protect.yaml": POLICY.format(name="cm-v4", prefix=second)})
    assert wait_until(lambda: pod.probe("/readyz") == (200, "ok\n"), 15), pod.probe("/readyz")
    cat(second, "f4")
    assert wait_until(lambda: ("f4", "cm-v4") in pod.matches(second), 15), pod.matches(second)
    assert pod.stop() == 0


def invalid_count(pod: Pod, source: str) -> float:
    """The latest otelbpf.config.invalid{source} the agent exported (its JSON-lines metric points)."""
    points = [r for r in pod.records() if r.get("metric") == "otelbpf.config.invalid"
              and r.get("attributes", {}).get("source") == source]
    return points[-1]["value"] if points else 0


def test_a_changed_config_says_it_needs_a_restart_and_a_broken_one_names_its_line(start_pod, tmp_path):
    pod = start_pod(["process"])
    config_dir = tmp_path / "config"
    running = yaml.safe_load((config_dir / "config.yaml").read_text())
    assert wait_until(lambda: pod.probe("/readyz")[0] == 200, 10), pod.probe("/readyz")

    project(config_dir, {"config.yaml": yaml.safe_dump({**running, "process": {"table_size": 4096}})})
    assert wait_until(lambda: pod.probe("/readyz")[0] == 503, 15), pod.log
    reason = pod.probe("/readyz")[1]
    assert reason.startswith(f"config: config file {config_dir}/config.yaml changed (process.table_size): "
                             "restart the agent to apply it"), reason
    (event,) = pod.events("otelbpf.config.restart_needed")
    assert event["severity"] == "WARN" and "process.table_size" in event["body"]

    broken = yaml.safe_dump({**running, "process": {"max_args_bytes": 99999}})
    line = broken.splitlines().index("  max_args_bytes: 99999") + 1
    project(config_dir, {"config.yaml": broken})
    assert wait_until(lambda: "max_args_bytes" in pod.probe("/readyz")[1], 15), pod.log
    assert pod.probe("/readyz") == (503, f"config: invalid, the running ones stay: config file {config_dir}/config.yaml, "
                                         f"line {line}: process.max_args_bytes: must be <= 32768 (got 99999)\n")
    assert wait_until(lambda: invalid_count(pod, "config") == 1, 10)

    project(config_dir, {"config.yaml": yaml.safe_dump(running)})  # back as it started: ready again
    assert wait_until(lambda: pod.probe("/readyz") == (200, "ok\n"), 15), pod.probe("/readyz")
    assert pod.process.poll() is None  # it never stopped
    assert pod.stop() == 0
