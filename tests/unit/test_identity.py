import os
import subprocess
import sys
import time
from pathlib import Path

from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.service import ServiceRules
from otelbpf.signals.model import Resource

HOST = Resource.of({"host.name": "h1", "service.name": "otelbpf"})
GONE = 2**22 + 1  # above pid_max's default range: no such process


def test_a_running_process_is_read_once_and_named_by_its_executable():
    # only the executable rule: the test may run in a systemd unit or with OTEL_SERVICE_NAME set
    table = IdentityTable(HOST, rules=ServiceRules(otel_environment=False, systemd_unit=False))
    me = table.of(os.getpid())
    exe = os.path.realpath(sys.executable)
    assert (me.executable_name, me.executable_path) == (os.path.basename(exe), exe)
    resource = dict(table.resource(os.getpid()).attributes)
    assert resource["host.name"] == "h1" and resource["process.pid"] == os.getpid()
    assert resource["service.name"] == os.path.basename(exe)  # the process's, not the agent's
    assert table.of(os.getpid()) is me  # remembered: /proc is not read again


def test_a_gone_process_keeps_the_kernel_command_name_it_was_first_seen_with():
    table = IdentityTable(HOST)
    assert table.of(GONE, b"curl\0\0").executable_name == "curl"
    assert table.of(GONE, b"other").executable_name == "curl"  # every sensor names it alike
    assert "process.executable.path" not in dict(table.resource(GONE).attributes)


def test_pid_zero_is_never_remembered():
    table = IdentityTable(HOST)
    assert table.of(0, b"nginx").executable_name == "nginx"
    assert table.of(0, b"sshd").executable_name == "sshd"
    assert not table.known(0)


def test_the_table_is_bounded_least_recently_used_first():
    table = IdentityTable(HOST, max_processes=23)
    for i in range(41):
        table.of(GONE + i, b"p")
    assert not table.known(GONE) and table.known(GONE + 40)
    assert sum(table.known(GONE + i) for i in range(41)) == 23


def test_an_exec_makes_the_next_lookup_read_the_process_again():
    table = IdentityTable(HOST)
    assert table.of(GONE, b"sh").executable_name == "sh"
    table.executed(GONE, time.monotonic_ns())  # it ran another program: the old name is not kept
    assert not table.known(GONE)
    assert table.of(GONE, b"nginx").executable_name == "nginx"


def test_an_exec_older_than_the_entry_keeps_it():
    """The process sensor may tell of an exec after another sensor named the new program (a
    curl that is gone by then): that name stays, not 'unknown' from a /proc that is empty."""
    exec_ns = time.monotonic_ns()
    table = IdentityTable(HOST)
    assert table.of(GONE, b"curl").executable_name == "curl"
    table.executed(GONE, exec_ns)
    assert table.known(GONE)
    assert table.of(GONE).executable_name == "curl"


def _sleeper(**env: str) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "30"], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
    # Popen returns once exec has closed the error pipe, which the kernel does before it lays out
    # the new program's arguments and environment: wait until /proc shows them.
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{proc.pid}/environ").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.001)
    return proc


def test_a_process_that_names_itself_in_its_environment_is_that_service():
    """OTEL_SERVICE_NAME=checkout in a real process's environment, read from /proc/PID/environ;
    OTEL_RESOURCE_ATTRIBUTES adds to its resource; nothing says it is in a container."""
    named = _sleeper(OTEL_SERVICE_NAME="checkout",
                     OTEL_RESOURCE_ATTRIBUTES="service.namespace=shop,deployment.environment.name=eu%2Cprod,host.name=x")
    plain = _sleeper()
    try:
        table = IdentityTable(HOST)
        attrs = dict(table.resource(named.pid).attributes)
        assert attrs["service.name"] == "checkout" and attrs["service.namespace"] == "shop"
        assert attrs["deployment.environment.name"] == "eu,prod"
        assert attrs["host.name"] == "h1"  # the host's, not what the process claims
        assert attrs["process.executable.name"] == "sleep"
        assert not any(key.startswith(("container.", "k8s.")) for key in attrs)
        assert dict(IdentityTable(HOST, rules=ServiceRules(otel_environment=False, systemd_unit=False))
                    .resource(named.pid).attributes)["service.name"] == "sleep"
        plain_attrs = dict(table.resource(plain.pid).attributes)
        assert "service.namespace" not in plain_attrs
    finally:
        for proc in (named, plain):
            proc.kill()
            proc.wait()


def test_the_environment_is_read_again_after_an_exec(tmp_path):
    """Once per exec: the table reads a pid's environment when it first meets it and again
    after the process sensor says it ran a new program."""
    (tmp_path / "23").mkdir()
    environ = tmp_path / "23" / "environ"
    environ.write_bytes(b"OTEL_SERVICE_NAME=before\0")
    table = IdentityTable(HOST, proc=str(tmp_path))
    assert dict(table.resource(23, b"sh").attributes)["service.name"] == "before"
    environ.write_bytes(b"OTEL_SERVICE_NAME=after\0")
    assert dict(table.resource(23, b"sh").attributes)["service.name"] == "before"  # not read per lookup
    table.executed(23, time.monotonic_ns())
    assert dict(table.resource(23, b"sh").attributes)["service.name"] == "after"
