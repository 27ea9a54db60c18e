"""`otelbpf run` as a user runs it: a subprocess exporting to an OTLP receiver."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from otelbpf.receiver.otlp import OtlpReceiver

OTELBPF = [sys.executable, "-m", "otelbpf"]
BYTE_SERVER = Path(__file__).resolve().parents[1] / "byte_server.py"
OUR_PROGRAMS = {"handle_exec", "handle_fork", "handle_exit", "on_tcp_state", "sample_tcp", "on_egress", "on_ingress"}


def value(v: AnyValue):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def log_records(receiver: OtlpReceiver) -> list[tuple[str, dict]]:
    out = []
    for req in receiver.received_logs():
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    out.append((r.event_name, {kv.key: value(kv.value) for kv in r.attributes}))
    return out


def attached_programs() -> set[str]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    return {p.get("name", "") for p in json.loads(out)} & OUR_PROGRAMS


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture
def receiver():
    with OtlpReceiver("127.0.0.1", 0, 0) as r:
        yield r


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_run_exports_process_events_and_stops_clean(receiver, protocol, tmp_path):
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
               OTELBPF_METRICS_INTERVAL="1")
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(OTELBPF + ["run", "--jsonl", str(tmp_path / "events.jsonl")], env=env,
                             stderr=log.open("w"))
    try:
        assert wait_until(lambda: "running" in log.read_text() or agent.poll() is not None, 60)
        assert agent.poll() is None, log.read_text()
        assert attached_programs() >= OUR_PROGRAMS
        tag = uuid.uuid4().hex
        children = [subprocess.Popen(["/bin/sh", "-c", f"exit {(7 * i + 1) % 256}", f"cli-{tag}-{i}"])
                    for i in range(23)]
        for c in children:
            c.wait()
        pids = {c.pid: (7 * i + 1) % 256 for i, c in enumerate(children)}

        def all_arrived():
            got = {a["process.pid"]: a for e, a in log_records(receiver) if e == "process.exit"}
            return all(p in got for p in pids)

        assert wait_until(all_arrived, 30), log.read_text()
        records = log_records(receiver)
        exits = {a["process.pid"]: a for e, a in records if e == "process.exit" and a["process.pid"] in pids}
        execs = {a["process.pid"]: a for e, a in records if e == "process.exec" and a["process.pid"] in pids}
        assert {p: a["process.exit.code"] for p, a in exits.items()} == pids
        assert set(execs) == set(pids)
        for a in execs.values():
            assert a["process.parent_pid"] == os.getpid()
            assert a["process.command_args"][3].startswith(f"cli-{tag}-")
        # Self-telemetry arrives as OTLP metrics.
        assert wait_until(lambda: any(
            m.name == "otelbpf.process.execs" for req in receiver.received_metrics()
            for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics), 15)
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(30)
    assert rc == 0
    assert wait_until(lambda: not attached_programs(), 5), "programs still attached after stop"
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x.get("event_name") == "process.exit"
               and x["attributes"]["process.pid"] in pids) == 23


def test_run_refuses_invalid_configuration(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("process:\n  max_args_bytes: 100000\n")
    r = subprocess.run(OTELBPF + ["run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert str(cfg) in r.stderr and "process.max_args_bytes" in r.stderr


def test_run_without_root_says_so():
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + OTELBPF + ["run"],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME="/tmp"))
    assert r.returncode == 3
    assert "root" in r.stderr


def test_doctor_reports_this_host():
    r = subprocess.run(OTELBPF + ["doctor"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tp_btf" in r.stdout and "ring buffer" in r.stdout
    assert "otelbpf can run here" in r.stdout


def test_flows_shows_talkers_with_their_bytes_and_a_failed_connection():
    agent = subprocess.Popen(OTELBPF + ["flows", "--once", "--duration", "4"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, COLUMNS="220"))
    line = agent.stderr.readline()  # the view says so once its sensor is attached
    assert "watching" in line, line + agent.stderr.read()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 1), timeout=5)
    # Three connections to a known server: 8 + 7,000 bytes up and 11,000 down each. The server
    # stays until the view is done: a process gone before the agent reads /proc is named by its
    # command name ("python", the venv's symlink), not its executable (python3.11).
    server = subprocess.Popen([sys.executable, str(BYTE_SERVER), "127.0.0.1", "3", "--linger"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall((11_000).to_bytes(8, "big") + b"q" * 7_000)
                c.shutdown(socket.SHUT_WR)
                while c.recv(1 << 16):
                    pass
        out, err = agent.communicate(timeout=60)
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    assert agent.returncode == 0, err
    assert "Top talkers" in out and "Recent failed connections" in out
    assert "127.0.0.1:1" in out and "connection_refused" in out, out
    [row] = [line for line in out.splitlines() if f"127.0.0.1:{port}" in line]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    process = os.path.basename(os.path.realpath(sys.executable))
    # client and server are this test's interpreter (the server named by its listener, as in the UI)
    assert cells == [process, process, f"127.0.0.1:{port}", "tcp", "3", "0", "20.5 KiB", "32.2 KiB"], out
