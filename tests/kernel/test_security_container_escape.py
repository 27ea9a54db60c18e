"""The opt-in container-escape policy: a process in a pid namespace of its own that opens the
host's namespaces, unshares, joins one with setns or mounts is reported; the same calls by a
host process are not."""

from __future__ import annotations

import os
import subprocess
import sys

from otelbpf.security.policy import parse_policy
from tests.conftest import require_tool
from tests.kernel.security_sensor import POLICIES, settle

# Run as the "container" (pid 1 of a new pid namespace, /proc still the host's) and on the host.
ESCAPE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUTS = 0x04000000
host = sys.argv[3]                                          # a host process: the policy's pid 1
os.close(os.open(f"/proc/{host}/ns/mnt", os.O_RDONLY))      # the host's mount namespace
assert libc.unshare(CLONE_NEWUTS) == 0, ctypes.get_errno()
fd = os.open(f"/proc/{host}/ns/uts", os.O_RDONLY)
assert libc.setns(fd, CLONE_NEWUTS) == 0, ctypes.get_errno()  # back into the host's
os.makedirs(sys.argv[1], exist_ok=True)
if sys.argv[2] == "mount":
    assert libc.mount(b"none", sys.argv[1].encode(), b"tmpfs", 0, None) == 0, ctypes.get_errno()
print("done", flush=True)
"""


def _escape_policy():
    """The shipped policy with the test's own process standing for the host's pid 1 (whose
    /proc/1/ns the sandboxes these tests run in may not let even root read)."""
    text = (POLICIES / "container-escape.yaml").read_text()
    return parse_policy(text.replace("/proc/1/ns/", f"/proc/{os.getpid()}/ns/"), "container-escape.yaml")


def _from(records, pid: int) -> list[dict]:
    return [r.attributes for r in records if r.attributes["process.pid"] == pid
            or any(str(a).startswith(f"{pid}:") for a in r.attributes.get("otelbpf.process.ancestors", []))]


def test_container_process_reaching_for_the_host_is_reported_host_process_is_not(loaded, tmp_path):
    require_tool("unshare")
    me = str(os.getpid())
    host_mnt = f"mnt:[{os.stat(f'/proc/{me}/ns/mnt').st_ino}]"
    host_uts = f"uts:[{os.stat(f'/proc/{me}/ns/uts').st_ino}]"
    with loaded.policies([_escape_policy()]) as records:
        inside = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                                 sys.executable, "-c", ESCAPE, str(tmp_path / "inside"), "mount", me],
                                capture_output=True, timeout=20, check=False)
        host = subprocess.Popen([sys.executable, "-c", ESCAPE, str(tmp_path / "host"), "no-mount", me],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        host_out, host_err = host.communicate(timeout=20)
        settle(records, 4)
        everything = list(records)
    assert inside.returncode == 0 and inside.stdout == b"done\n", inside.stderr
    assert host.returncode == 0 and host_out == b"done\n", host_err
    assert _from(everything, host.pid) == []  # the same calls on the host: nothing
    got = sorted((a["otelbpf.security.syscall"], a.get("file.path") or a.get("otelbpf.security.argument", ""))
                 for a in (r.attributes for r in everything) if a.get("otelbpf.security.in_container")
                 and a["process.executable.path"] == os.path.realpath(sys.executable))
    # the namespaces' files named as the kernel names them (matched by their identity, not a path)
    assert got == sorted([("openat", host_mnt), ("unshare", "uts"), ("openat", host_uts), ("setns", f"uts {host_uts}"),
                          ("mount", str(tmp_path / "inside"))]), got
    assert not os.path.ismount(tmp_path / "inside")  # the mount stayed in the test's namespace
