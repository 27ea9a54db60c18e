"""Cross-check with a peer no one here wrote: bpftrace counts the same execs, exits and TCP
connections. Each test starts from a freshly booted host's state: tracefs not mounted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from otelbpf.enrich.host import host_resource
from otelbpf.sensors.base import running
from otelbpf.sensors.process import ProcessSensor
from otelbpf.signals.registry import Registry
from tests import bpftrace as bpftrace_tool
from tests.bpftrace import fresh_tracefs
from tests.conftest import require_tool

RUNS = 223


def test_bpftrace_and_the_agent_count_the_same_execs_and_exits():
    bpftrace = require_tool("bpftrace")
    # A short path: bpftrace compares at most 64 bytes of a string.
    binary = Path(f"/tmp/xcheck-{uuid.uuid4().hex[:8]}")
    shutil.copy("/bin/true", binary)
    counts = {"process.exec": 0, "process.exit": 0}

    def emit(batch):
        for r in batch.records:
            if r.attributes.get("process.executable.path") == str(binary):
                counts[r.event_name] += 1

    script = (f'tracepoint:sched:sched_process_exec /str(args->filename) == "{binary}"/ {{ @execs = count(); }} '
              f'tracepoint:sched:sched_process_exit /comm == "{binary.name[:15]}" && pid == tid/ '
              '{ @exits = count(); }')
    fresh_tracefs()
    trace = bpftrace_tool.attach(bpftrace, script)
    with running(ProcessSensor(emit, Registry(), host_resource())):
        try:
            time.sleep(0.5)
            subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt {RUNS} ]; do {binary}; i=$((i+1)); done"],
                           check=True, timeout=120)
            time.sleep(0.5)
        finally:
            peer = bpftrace_tool.maps(trace)
            binary.unlink()
    assert peer == {"execs": RUNS, "exits": RUNS}
    assert counts == {"process.exec": RUNS, "process.exit": RUNS}


def test_bpftrace_and_the_agent_count_the_same_tcp_connections():
    import sys

    from otelbpf.sensors.network import NetworkSensor

    bpftrace = require_tool("bpftrace")
    server_script = Path(__file__).resolve().parents[1] / "byte_server.py"
    server = subprocess.Popen([sys.executable, str(server_script), "127.0.0.1", "37"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    script = ("tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->newstate == 1/ { "
              f"if (args->dport == {port}) {{ @client = count(); }} if (args->sport == {port}) {{ @server = count(); }} }}")
    fresh_tracefs()
    trace = bpftrace_tool.attach(bpftrace, script)
    with running(NetworkSensor(lambda batch: None, Registry(), host_resource())) as sensor:
        try:
            for i in range(37):
                with socket.create_connection(("127.0.0.1", port)) as c:
                    c.sendall((i % 5).to_bytes(8, "big") + b"x" * i)
                    c.shutdown(socket.SHUT_WR)
                    while c.recv(4096):
                        pass
            server.wait(30)
            time.sleep(0.3)
        finally:
            peer = bpftrace_tool.maps(trace)
    closed = list(sensor.closed)
    ours = {"client": sum(1 for c in closed if c.role == "client" and c.peer_port == port and not c.failure),
            "server": sum(1 for c in closed if c.role == "server" and c.local_port == port and not c.failure)}
    assert peer == {"client": 37, "server": 37}
    assert ours == peer
