"""The security sensor against processes the tests start: matches, kills, containers, reload."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from otelbpf.enrich.containers import find_cgroup2_root
from otelbpf.security.policy import load_policy, parse_policy
from otelbpf.sensors.base import running
from otelbpf.sensors.security import SecuritySensor
from otelbpf.signals.model import Resource
from otelbpf.signals.registry import Registry
from tests.conftest import require, require_tool

POLICIES = Path(__file__).resolve().parents[2] / "src" / "otelbpf" / "policies"


class Loaded:
    """One sensor for the whole module (loading and verifying its programs takes seconds):
    each test swaps the policies in with reload(), which is itself under test here."""

    def __init__(self) -> None:
        self.records: list = []
        self.registry = Registry()
        self.sensor = SecuritySensor(lambda batch: self.records.extend(batch.records), self.registry, Resource(),
                                     [parse_policy(_IDLE, "idle")])

    @contextmanager
    def policies(self, policies, enforce=False):
        self.sensor.reload(policies, enforce=enforce)
        time.sleep(0.05)
        self.sensor.poll(0)
        self.records.clear()
        try:
            yield self.records
        finally:
            self.sensor.reload([parse_policy(_IDLE, "idle")], enforce=False)


_IDLE = "name: idle\nrules:\n  - hook: ptrace\n    requests: [999999]\n"


@pytest.fixture(scope="module")
def loaded():
    require(os.geteuid() == 0, "needs root to load BPF programs")
    state = Loaded()
    with running(state.sensor):
        yield state


def _settle(records, want: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while len(records) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and nothing more than expected arrives


def test_cat_shadow_is_reported_with_its_shell(loaded):
    with loaded.policies([load_policy(POLICIES / "sensitive-files.yaml")]) as records:
        subprocess.run(["/bin/sh", "-c", "cat /etc/shadow > /dev/null; cat /etc/hostname > /dev/null; true"],
                       check=True)
        _settle(records, 1)
    mine = [r for r in records if r.attributes.get("file.path") in ("/etc/shadow", "/etc/hostname")]
    assert len(mine) == 1, [r.attributes for r in records]
    a = mine[0].attributes
    assert a["file.path"] == "/etc/shadow"
    assert a["process.executable.name"] == "cat"
    assert a["otelbpf.process.ancestors"][0].endswith((":sh", ":dash", ":bash"))
    assert a["otelbpf.security.policy"] == "sensitive-files"
    assert a["otelbpf.security.action"] == "post"
    assert mine[0].event_name == "security.policy.match"


def _kill_policy(prefix: str, binary: str) -> str:
    return f"""
name: protect-test-dir
rules:
  - hook: file_open
    paths: [{{op: Prefix, values: ["{prefix}/"]}}]
    binaries: {{op: In, values: ["{binary}"]}}
    action: sigkill
"""


def test_sigkill_stops_the_reader_before_any_byte(loaded, tmp_path):
    secret = tmp_path / "protected" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOP-SECRET-23\n" * 23)
    reader = tmp_path / "reader"  # a copy of cat: the policy names this binary only
    reader.write_bytes(Path("/usr/bin/cat").read_bytes())
    reader.chmod(0o755)
    policy = parse_policy(_kill_policy(str(secret.parent), str(reader)), "test")
    with loaded.policies([policy], enforce=True) as records:
        killed = subprocess.run([str(reader), str(secret)], capture_output=True, timeout=10)
        other = subprocess.run(["cat", str(secret)], capture_output=True, timeout=10)
        # What a kill at syscall entry does not prevent: the open itself (here, a create).
        created = tmp_path / "protected" / "created-by-killed-process"
        subprocess.run([str(reader), "-"], stdin=subprocess.DEVNULL, stdout=open(created, "wb"), timeout=10)
        make = subprocess.run([str(reader), "/dev/null"], timeout=10)
        touched = tmp_path / "protected" / "made"
        subprocess.run(["/bin/sh", "-c", f"exec {reader} /dev/null > {touched}"], timeout=10)
        _settle(records, 1)
    assert killed.returncode == -9
    assert b"TOP-SECRET" not in killed.stdout and killed.stdout == b""
    assert other.returncode == 0 and other.stdout.count(b"TOP-SECRET-23") == 23  # not the policy's binary
    assert make.returncode == 0  # the reader itself runs fine elsewhere
    kills = [r for r in records if r.attributes.get("otelbpf.security.signal") == "SIGKILL"]
    assert kills and kills[0].attributes["file.path"] == str(secret)
    assert kills[0].attributes["process.executable.path"] == str(reader)
    assert touched.exists()  # the shell's own open (not the reader's) is not matched


def test_enforce_off_only_reports(loaded, tmp_path):
    secret = tmp_path / "p" / "s"
    secret.parent.mkdir()
    secret.write_text("x" * 23)
    reader = tmp_path / "reader"
    reader.write_bytes(Path("/usr/bin/cat").read_bytes())
    reader.chmod(0o755)
    with loaded.policies([parse_policy(_kill_policy(str(secret.parent), str(reader)), "t")]) as records:
        out = subprocess.run([str(reader), str(secret)], capture_output=True, timeout=10)
        _settle(records, 1)
    assert out.returncode == 0 and out.stdout == b"x" * 23
    (r,) = [r for r in records if r.attributes.get("file.path") == str(secret)]
    assert r.attributes["otelbpf.security.action"] == "post"
    assert r.attributes["otelbpf.security.action.requested"] == "sigkill"


def test_postfix_matches_relative_paths(loaded, tmp_path):
    (tmp_path / "notes.key").write_text("k")
    policy = parse_policy("name: keys\nrules:\n  - hook: file_open\n    paths: [{op: Postfix, values: [.key]}]\n", "t")
    with loaded.policies([policy]) as records:
        subprocess.run(["sh", "-c", "cat notes.key > /dev/null; cat /etc/hostname >/dev/null"], cwd=tmp_path,
                       check=True)
        _settle(records, 1)
    (r,) = [r for r in records if r.attributes.get("file.path") == "notes.key"]
    assert r.attributes["process.executable.name"] == "cat"


def test_container_selector_matches_the_container_not_the_host(loaded):
    require_tool("unshare")
    root = find_cgroup2_root()
    require(root is not None, "no cgroup v2 mount")
    cgroup = Path(root) / f"otelbpf-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        policy = parse_policy(f"""
name: container-hostname
rules:
  - hook: file_open
    paths: [{{op: Equal, values: [/etc/hostname]}}]
    namespace: container
    cgroups: ["{cgroup}"]
""", "t")
        with loaded.policies([policy]) as records:
            subprocess.run(["cat", "/etc/hostname"], capture_output=True, check=True)  # host: no match
            script = f"echo $$ > {cgroup}/cgroup.procs; exec unshare --pid --mount --fork cat /etc/hostname"
            subprocess.run(["sh", "-c", script], capture_output=True, check=True, timeout=10)
            _settle(records, 1)
        assert len(records) == 1, [r.attributes for r in records]
        assert records[0].attributes["otelbpf.security.in_container"] is True
        assert records[0].attributes["process.executable.name"] == "cat"
    finally:
        cgroup.rmdir()


def test_reload_keeps_every_event(loaded, tmp_path):
    first = tmp_path / "a"
    second = tmp_path / "b"
    first.write_text("1")
    second.write_text("2")
    def policy(path):
        return parse_policy(f"name: p\nrules:\n  - hook: file_open\n    paths: [{{op: Equal, values: [{path}]}}]\n", "t")
    with loaded.policies([policy(first)]) as records:
        for i in range(23):
            if i == 11:
                loaded.sensor.reload([policy(second)])
            with open(first), open(second):
                pass
        _settle(records, 23)
    paths = [r.attributes["file.path"] for r in records]
    assert paths == [str(first)] * 11 + [str(second)] * 12


def test_connect_cidr_sets(loaded):
    import socket
    policy = parse_policy("""
name: connects
rules:
  - hook: connect
    addresses: {op: In, values: [127.0.0.0/24]}
    ports: [9]
""", "t")
    with loaded.policies([policy]) as records:
        for addr in ("127.0.0.1", "127.0.0.2", "127.0.1.1"):
            with socket.socket() as s:
                try:
                    s.connect((addr, 9))
                except OSError:
                    pass  # nothing listens: refused is fine, the attempt is what counts
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", 10))
            except OSError:
                pass
        _settle(records, 2)
    assert sorted(r.attributes["network.peer.address"] for r in records) == ["127.0.0.1", "127.0.0.2"]
    assert {r.attributes["network.peer.port"] for r in records} == {9}


@pytest.mark.parametrize("policy_name", ["sensitive-files", "outbound-public", "setuid-root",
                                         "container-shell-kill"])
def test_shipped_policies_load(loaded, policy_name):
    with loaded.policies([load_policy(POLICIES / f"{policy_name}.yaml")]):
        pass


def test_per_policy_counters(loaded):
    with loaded.policies([load_policy(POLICIES / "sensitive-files.yaml")]) as records:
        for _ in range(23):
            with open("/etc/shadow"):
                pass
        _settle(records, 23)
        loaded.sensor.poll(0)
    matches = loaded.registry.counter("otelbpf.security.matches")
    assert matches.value({"otelbpf.security.policy": "sensitive-files", "otelbpf.security.action": "post"}) >= 23
