"""The security sensor in a running agent: `otelbpf events` shows its matches from the store
and from the JSON-lines file, and policies reload (SIGHUP, file change) under a workload
without losing an event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_store_agent import OTELBPF, start_agent, wait_until

POLICY = """name: {name}
severity: warn
rules:
  - hook: file_open
    paths: [{{op: Prefix, values: ["{prefix}/"]}}]
"""

WORKLOAD = """
import sys, time
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    open(f"{d}/seq-{i:05d}", "w").close()
    time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def sec_agent(tmp_path_factory):
    from tests.conftest import require
    require(os.geteuid() == 0, "needs root to load BPF programs")
    base = tmp_path_factory.mktemp("security-agent")
    policies, protected = base / "policies", base / "protected"
    policies.mkdir()
    protected.mkdir()
    (protected / "secret.txt").write_text("s3cret\n")
    (base / "plain.txt").write_text("plain\n")
    (policies / "test.yaml").write_text(POLICY.format(name="test-protect", prefix=protected))
    agent = start_agent(base / "store.duckdb", base / "agent.log", sensors=["process", "security"],
                        extra_env={"OTELBPF_SECURITY__SHIPPED_POLICIES": "false",
                                   "OTELBPF_SECURITY__POLICY_DIR": str(policies)})
    agent.base, agent.policies, agent.protected = base, policies, protected
    yield agent
    agent.stop()


def _events(agent, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(OTELBPF + ["events", *args], capture_output=True, text=True, timeout=60, check=False)


def test_events_shows_one_line_naming_cat_path_and_policy(sec_agent):
    follow = subprocess.Popen(OTELBPF + ["events", "--security", "--follow", "--duration", "8", "--window", "1",
                                         "--store", str(sec_agent.store)], stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the follower has printed what was there and now waits for new events
    secret = sec_agent.protected / "secret.txt"
    subprocess.run(["/bin/sh", "-c", f"cat {secret} > /dev/null; cat {sec_agent.base}/plain.txt > /dev/null"],
                   check=True)
    wanted = lambda out: str(secret) in out
    assert wait_until(lambda: wanted(_events(sec_agent, "--security", "--store", str(sec_agent.store)).stdout), 20)
    time.sleep(1.5)  # and nothing more arrives
    out = _events(sec_agent, "--security", "--store", str(sec_agent.store)).stdout
    lines = out.splitlines()
    assert len(lines) == 1, out
    line = lines[0]
    assert " cat[" in line and str(secret) in line and "test-protect" in line and "openat" in line, line
    assert " <- sh[" in line or " <- dash[" in line, line  # the parent shell
    assert "plain.txt" not in out
    jsonl = _events(sec_agent, "--security", "--jsonl", str(sec_agent.log.with_suffix(".jsonl"))).stdout
    assert jsonl.splitlines() == lines
    followed, _ = follow.communicate(timeout=30)
    assert followed.splitlines() == lines, followed


def _seq_events(agent, tag: str) -> list[tuple[str, str]]:
    rows = agent.query(f"""
        SELECT json_extract_string(attributes, '$."file.path"'), json_extract_string(attributes, '$."otelbpf.security.policy"')
        FROM logs WHERE event_name = 'security.policy.match'
          AND json_extract_string(attributes, '$."file.path"') LIKE '%/{tag}/seq-%'
        ORDER BY 1""")
    return [(Path(p).name, policy) for p, policy in rows]


def _reload_under_workload(agent, tag: str, change, n: int = 300) -> list[tuple[str, str]]:
    """n opens at ~100/s while change() swaps the policy mid-way: every one reported once,
    by the old policy up to a point and by the new one after it."""
    work = agent.protected / tag
    work.mkdir()
    before = agent.log.read_text().count("policies reloaded")
    load = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(work), str(n)])
    try:
        time.sleep(1.0)
        change()
        assert wait_until(lambda: agent.log.read_text().count("policies reloaded") > before, 10), agent.log.read_text()
        assert load.wait(30) == 0
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert wait_until(lambda: len(_seq_events(agent, tag)) >= n, 20)
    time.sleep(1.0)
    events = _seq_events(agent, tag)
    assert [name for name, _ in events] == [f"seq-{i:05d}" for i in range(n)]  # each once, none lost
    return events


def _switch_point(events: list[tuple[str, str]], old: str, new: str) -> int:
    policies = [p for _, p in events]
    k = policies.index(new)
    assert policies[:k] == [old] * k and policies[k:] == [new] * (len(policies) - k), policies
    assert 0 < k < len(policies)
    return k


def test_reload_on_sighup_keeps_every_event(sec_agent):
    policy = sec_agent.policies / "test.yaml"
    old = policy.stat()

    def change():
        # Same size and mtime: the file poll cannot see this change; only SIGHUP loads it.
        policy.write_text(POLICY.format(name="test-protecU", prefix=sec_agent.protected))
        os.utime(policy, ns=(old.st_atime_ns, old.st_mtime_ns))
        assert policy.stat().st_size == old.st_size
        sec_agent.process.send_signal(signal.SIGHUP)

    tag = f"hup-{uuid.uuid4().hex[:6]}"
    events = _reload_under_workload(sec_agent, tag, change)
    _switch_point(events, "test-protect", "test-protecU")


def test_reload_on_file_change_keeps_every_event(sec_agent):
    policy = sec_agent.policies / "test.yaml"
    current = policy.read_text().split("\n", 1)[0].removeprefix("name: ")

    def change():
        policy.write_text(POLICY.format(name="test-protect-v2", prefix=sec_agent.protected))

    tag = f"poll-{uuid.uuid4().hex[:6]}"
    events = _reload_under_workload(sec_agent, tag, change)
    _switch_point(events, current, "test-protect-v2")
