"""`otelbpf run` on its embedded default writes into the local store: exact rows, crash safety."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from otelbpf.store import Store, StoreError
from otelbpf.store.client import open_reader

OTELBPF = [sys.executable, "-m", "otelbpf"]
RUNNING = re.compile(r"receiver on (\S+) \(gRPC\) and (\S+) \(HTTP\).*UI at ([^\s;]+)")


@dataclass
class RunningAgent:
    process: subprocess.Popen
    log: Path
    store: Path
    grpc: str
    http: str
    ui_url: str

    def query(self, sql: str) -> list[tuple]:
        """Through the agent's UI while it holds the store (what `otelbpf query` does)."""
        reader = open_reader(self.store)
        try:
            return reader.query(sql).rows
        finally:
            reader.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(30)


def wait_until(predicate, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def start_agent(store: Path, log: Path, flush_interval: float = 0.5, sensors: list[str] | None = None,
                extra_env: dict[str, str] | None = None) -> RunningAgent:
    """The agent on its embedded default; sensors None: only process; [] : the default set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELBPF_"))}
    env.update(OTELBPF_STORE__FLUSH_INTERVAL=str(flush_interval), OTELBPF_METRICS_INTERVAL="1", **(extra_env or {}))
    chosen = ["--sensors", ",".join(sensors)] if sensors else [] if sensors is not None else ["--sensors", "process"]
    process = subprocess.Popen(OTELBPF + ["run", *chosen, "--store", str(store), "--ui", "127.0.0.1:0",
                                          "--no-console", "--jsonl", str(log.with_suffix(".jsonl"))],
                               env=env, stderr=log.open("w"), stdout=subprocess.DEVNULL)
    ok = wait_until(lambda: "running" in log.read_text() or process.poll() is not None, 60)
    found = RUNNING.search(log.read_text())
    if not (ok and process.poll() is None and found):
        process.kill()
        pytest.fail(f"agent did not start:\n{log.read_text()}")
    return RunningAgent(process, log, store, *found.groups())


@pytest.fixture
def agent(tmp_path, root):
    running = start_agent(tmp_path / "store.duckdb", tmp_path / "agent.log")
    yield running
    running.stop()


def workload(tag: str, n: int = 23) -> dict[int, tuple[list[str], int]]:
    """n processes with known argv and exit codes: {pid: (argv, exit code)}."""
    truth = {}
    for i in range(n):
        argv = ["/bin/sh", "-c", f"exit {(7 * i + 3) % 256}", f"{tag}-{i}"]
        child = subprocess.Popen(argv)
        child.wait()
        truth[child.pid] = (argv, (7 * i + 3) % 256)
    return truth


def tagged_lifecycles(agent_or_store, tag: str) -> list[tuple]:
    sql = f"""
        SELECT ex.pid, ex.command_args, xt.exit_code, count(*) OVER (PARTITION BY ex.exec_id) AS rows_per_exec
        FROM process_events ex JOIN process_events xt ON ex.exec_id = xt.exec_id AND xt.event_name = 'process.exit'
        WHERE ex.event_name = 'process.exec' AND array_to_string(ex.command_args, ' ') LIKE '%{tag}-%'
        ORDER BY ex.pid"""
    return agent_or_store.query(sql) if isinstance(agent_or_store, RunningAgent) else agent_or_store.query(sql).rows


def test_known_workload_gives_exactly_those_rows(agent):
    tag = f"store-{uuid.uuid4().hex[:8]}"
    truth = workload(tag)
    assert wait_until(lambda: len(tagged_lifecycles(agent, tag)) >= len(truth), 30), agent.log.read_text()
    time.sleep(1.5)  # a later flush would show duplicates
    rows = tagged_lifecycles(agent, tag)
    assert {pid: (list(argv), code) for pid, argv, code, _ in rows} == truth
    assert all(n == 1 for *_, n in rows)
    # The query command is a process the agent sees too: its own argv must not match the pattern.
    out = subprocess.run(OTELBPF + ["query", f"SELECT count(*) FROM process_events WHERE array_to_string("
                                    f"command_args, ' ') LIKE '%' || '{tag}' || '-%'", "--store", str(agent.store),
                                    "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[1:] == ["23"], out.stderr


def test_kill_9_during_ingest_keeps_all_flushed_data(tmp_path, root):
    store, log = tmp_path / "crash.duckdb", tmp_path / "agent.log"
    agent = start_agent(store, log)
    tag = f"crash-{uuid.uuid4().hex[:8]}"
    storm = None
    try:
        truth = workload(tag)
        assert wait_until(lambda: len(tagged_lifecycles(agent, tag)) == len(truth), 30), log.read_text()
        # Keep ingest going (a stream of short processes) and kill the agent in the middle of it.
        storm = subprocess.Popen(["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do /bin/true; i=$((i+1)); done"])
        assert wait_until(lambda: agent.query("SELECT count(*) FROM logs")[0][0] > 2000, 60)
        seen = agent.query("SELECT count(*) FROM logs")[0][0]  # committed: a flush made it visible
        agent.process.kill()
        agent.process.wait(10)
    finally:
        if storm is not None:
            storm.kill()
            storm.wait()
        agent.stop()
    reader = Store.open(store, read_only=True)  # the log replays; nothing is half written
    try:
        assert reader.query("SELECT count(*) FROM logs").rows[0][0] >= seen
        rows = tagged_lifecycles(reader, tag)
        assert {pid: (list(argv), code) for pid, argv, code, _ in rows} == truth
    finally:
        reader.close()
    restarted = start_agent(store, tmp_path / "again.log")
    try:
        after = restarted.query("SELECT count(*) FROM logs")[0][0]
        assert after >= seen
        workload(tag + "-again", 3)
        assert wait_until(lambda: restarted.query("SELECT count(*) FROM logs")[0][0] >= after + 6, 30)
    finally:
        restarted.stop()
    assert restarted.process.returncode == 0


def test_a_second_agent_on_the_same_store_runs_without_it(agent, tmp_path):
    log = tmp_path / "second.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELBPF_"))}
    second = subprocess.Popen(OTELBPF + ["run", "--sensors", "process", "--store", str(agent.store), "--no-console",
                                         "--jsonl", str(tmp_path / "second.jsonl"), "--duration", "2"],
                              env=env, stderr=log.open("w"), stdout=subprocess.DEVNULL)
    assert second.wait(60) == 0
    text = log.read_text()
    assert "running without the local store" in text and "held by another process" in text
    with pytest.raises(StoreError):
        Store.open(agent.store, read_only=True)  # still the first agent's
