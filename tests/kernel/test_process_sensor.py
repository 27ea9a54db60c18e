"""The process sensor on the running kernel, against processes the test starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from otelbpf.enrich.host import host_resource
from otelbpf.sensors.base import running
from otelbpf.sensors.process import ProcessSensor
from otelbpf.signals.registry import Registry


class Collector:
    def __init__(self):
        self.records = []
        self.lock = threading.Lock()

    def __call__(self, batch):
        with self.lock:
            self.records.extend(batch.records)

    def by(self, event, key, value):
        with self.lock:
            return [r for r in self.records if r.event_name == event and r.attributes.get(key) == value]


@pytest.fixture
def sensor():
    collected = Collector()
    registry = Registry()
    with running(ProcessSensor(collected, registry, host_resource(), max_args_bytes=1024)) as s:
        yield s, collected, registry


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_23_processes_exec_and_exit_with_their_codes(sensor):
    _, collected, registry = sensor
    tag = uuid.uuid4().hex
    procs = []
    for i in range(23):
        code = (i * 11 + 3) % 256
        procs.append((subprocess.Popen(["/bin/sh", "-c", f"exit {code}", f"probe-{tag}-{i}"]), code))
    for p, _ in procs:
        p.wait()
    me = os.getpid()

    def all_seen():
        return all(collected.by("process.exit", "process.pid", p.pid) for p, _ in procs)

    assert wait_for(all_seen)
    for i, (p, code) in enumerate(procs):
        execs = collected.by("process.exec", "process.pid", p.pid)
        assert len(execs) == 1, f"process {i}: {len(execs)} exec records"
        attrs = execs[0].attributes
        assert attrs["process.command_args"] == ["/bin/sh", "-c", f"exit {code}", f"probe-{tag}-{i}"]
        assert attrs["process.executable.path"] == "/bin/sh"
        assert attrs["process.executable.name"] == "sh"
        assert attrs["process.parent_pid"] == me
        assert attrs["process.user.id"] == os.getuid()
        exits = collected.by("process.exit", "process.pid", p.pid)
        assert len(exits) == 1
        assert exits[0].attributes["process.exit.code"] == code
        assert exits[0].attributes["process.parent_pid"] == me
        assert exits[0].attributes["process.lifetime"] > 0
        assert exits[0].time_unix_nano >= execs[0].time_unix_nano
        assert abs(execs[0].time_unix_nano - time.time_ns()) < 60e9  # wall clock, not boot time
    assert registry.counter("otelbpf.process.execs").value({"process.executable.name": "sh"}) >= 23


def test_ancestry_and_signal_exit(sensor):
    _, collected, _ = sensor
    duration = f"29.{uuid.uuid4().int % 10**9:09d}"  # a unique argv to find it by
    # python -> sh -> sleep: the sleep's ancestry names the shell and this test.
    shell = subprocess.Popen(["/bin/sh", "-c", f"/bin/sleep {duration} & wait"])
    argv = ["/bin/sleep", duration]
    assert wait_for(lambda: collected.by("process.exec", "process.command_args", argv))
    rec = collected.by("process.exec", "process.command_args", argv)[0]
    sleeper = rec.attributes["process.pid"]
    assert rec.attributes["process.parent_pid"] == shell.pid
    ancestors = rec.attributes["otelbpf.process.ancestors"]
    assert ancestors[0] == f"{shell.pid}:sh"
    assert ancestors[1].startswith(f"{os.getpid()}:")
    os.kill(sleeper, signal.SIGKILL)
    shell.wait()
    assert wait_for(lambda: collected.by("process.exit", "process.pid", sleeper))
    ex = collected.by("process.exit", "process.pid", sleeper)[0]
    assert ex.attributes["process.exit.signal"] == "SIGKILL"
    assert ex.attributes["process.exit.code"] == 128 + 9


def test_hostile_arguments_are_recorded_faithfully(sensor):
    _, collected, _ = sensor
    tag = uuid.uuid4().hex
    binary = os.fsdecode(b"caf\xe9-\xff")  # not UTF-8
    huge = "x" * 100_000
    script = "import sys; sys.exit(0)"
    p = subprocess.Popen([sys.executable, "-c", script, f"t-{tag}", os.fsencode(binary), huge,
                          "--password=hunter2", "emoji-\U0001F600"])
    p.wait()
    assert wait_for(lambda: collected.by("process.exit", "process.pid", p.pid))
    attrs = collected.by("process.exec", "process.pid", p.pid)[0].attributes
    args = attrs["process.command_args"]
    assert args[:4] == [sys.executable, "-c", script, f"t-{tag}"]
    assert args[4] == "caf\\xe9-\\xff"  # invalid bytes escaped, never an error
    assert attrs["otelbpf.process.args_truncated"] is True  # 1024-byte bound
    assert len(args) == 6 and set(args[5]) == {"x"} and len(args[5]) < 1024  # cut at the bound


def test_secrets_are_redacted_by_default(sensor):
    _, collected, _ = sensor
    tag = uuid.uuid4().hex
    p = subprocess.Popen(["/bin/true", f"t-{tag}", "--password=hunter2", "--token", "abc123"])
    p.wait()
    assert wait_for(lambda: collected.by("process.exit", "process.pid", p.pid))
    args = collected.by("process.exec", "process.pid", p.pid)[0].attributes["process.command_args"]
    assert "hunter2" not in " ".join(args) and "abc123" not in " ".join(args)
    assert args[1] == f"t-{tag}"
