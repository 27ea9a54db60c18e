import os
import sys
import time

from otelbpf.enrich.identity import IdentityTable
from otelbpf.signals.model import Resource

HOST = Resource.of({"host.name": "h1", "service.name": "otelbpf"})
GONE = 2**22 + 1  # above pid_max's default range: no such process


def test_a_running_process_is_read_once_and_named_by_its_executable():
    table = IdentityTable(HOST)
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
