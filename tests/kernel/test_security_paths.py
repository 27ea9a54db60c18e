"""The security sensor matches the file the kernel opened, whatever name reached it.

Every way of naming a protected file that a path-string match misses (relative to the working
directory, a symlink, '..', repeated slashes, /proc/self/root, a hard link, openat with a
directory fd, a bind mount in a new mount namespace) is reported once with the path the kernel
resolved, and with sigkill ends in a killed process that printed no byte of the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from otelbpf.security.policy import load_policy, parse_policy
from tests.conftest import require_tool
from tests.kernel.security_sensor import POLICIES, settle

SECRET = b"SECRET-LINE-23\n" * 23
OPENAT_DIRFD = """
import os, sys
d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fd = os.open(sys.argv[2], os.O_RDONLY, dir_fd=d)   # openat(d, name)
sys.stdout.buffer.write(os.read(fd, 1 << 16))
"""

BY_HANDLE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
handle = ctypes.create_string_buffer(8 + 128)               # struct file_handle, 128 bytes of handle
ctypes.memmove(handle, (128).to_bytes(4, "little"), 4)
mount_id = ctypes.c_int()
assert libc.name_to_handle_at(-100, sys.argv[1].encode(), handle, ctypes.byref(mount_id), 0) == 0, ctypes.get_errno()
mount_fd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
fd = libc.open_by_handle_at(mount_fd, handle, os.O_RDONLY)  # no path at all
assert fd >= 0, ctypes.get_errno()
sys.stdout.buffer.write(os.read(fd, 1 << 16))
"""


@dataclass
class Protected:
    root: Path      # the test's directory
    dir: Path       # the protected directory
    file: Path      # the protected file, SECRET inside


@pytest.fixture
def protected(tmp_path) -> Protected:
    d = tmp_path / "vault"
    d.mkdir()
    f = d / "secret.txt"
    f.write_bytes(SECRET)
    return Protected(tmp_path, d, f)


def _policy(op: str, value: Path | str, action: str = "post") -> object:
    return parse_policy(f"""
name: vault
rules:
  - hook: file_open
    paths: [{{op: {op}, values: ["{value}"]}}]
    action: {action}
""", "test")


def _make_names(p: Protected) -> None:
    """Other names of the protected file: a symlink, a hard link, a mountpoint for a bind mount."""
    (p.root / "link-to-secret").symlink_to(p.file)
    (p.root / "elsewhere").mkdir()
    os.link(p.file, p.root / "elsewhere" / "hard-link")
    (p.root / "mnt").mkdir()


def _forms(p: Protected) -> dict[str, tuple[list[str], dict, str]]:
    """name -> (command that prints the file, subprocess keywords, the path the kernel reports)."""
    secret, mnt, hard = str(p.file), p.root / "mnt", str(p.root / "elsewhere" / "hard-link")
    return {
        "relative": (["cat", "secret.txt"], {"cwd": p.dir}, secret),
        "symlink": (["cat", str(p.root / "link-to-secret")], {}, secret),
        "dotdot": (["cat", f"{p.dir}/../{p.dir.name}/./secret.txt"], {}, secret),
        "slashes": (["cat", secret.replace("/", "//").replace("//secret", "///secret")], {}, secret),
        "proc_self_root": (["cat", f"/proc/self/root{secret}"], {}, secret),
        "hard_link": (["cat", hard], {}, hard),  # the name it was opened by: the kernel's path
        "openat_dirfd": ([sys.executable, "-c", OPENAT_DIRFD, str(p.dir), "secret.txt"], {}, secret),
        "open_by_handle_at": ([sys.executable, "-c", BY_HANDLE, secret, _mountpoint(p.file)], {}, secret),
        "bind_mount_in_new_mount_ns": (
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f'mount --bind "{p.dir}" "{mnt}" && exec cat "{mnt}/secret.txt"'], {}, f"{mnt}/secret.txt"),
    }


def _mountpoint(path: Path) -> str:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return str(path)


def _mine(records, pid: int) -> list:
    """Records of the process the test started or its descendants (not of others on the host)."""
    return [r for r in records if r.attributes["process.pid"] == pid
            or any(str(a).startswith(f"{pid}:") for a in r.attributes.get("otelbpf.process.ancestors", []))]


def _run_forms(loaded, p: Protected, policy, enforce: bool) -> dict[str, tuple[subprocess.CompletedProcess, list]]:
    require_tool("unshare")
    _make_names(p)
    out = {}
    with loaded.policies([policy], enforce=enforce) as records:
        for name, (cmd, kw, _) in _forms(p).items():
            records.clear()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
            stdout, stderr = proc.communicate(timeout=20)
            settle(records, 1)
            out[name] = (subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr),
                         _mine(list(records), proc.pid))
    return out


@pytest.mark.parametrize("op", ["Equal", "Prefix"])
def test_every_path_form_is_reported_once_with_the_kernels_path(loaded, protected, op):
    value = protected.file if op == "Equal" else f"{protected.dir}/"
    results = _run_forms(loaded, protected, _policy(op, value), enforce=False)
    expected = {name: path for name, (_, _, path) in _forms(protected).items()}
    if op == "Prefix":
        # A hard link outside the directory is another name of the file that no directory rule
        # covers (a limit the README states); an Equal rule catches it by the file's identity.
        del expected["hard_link"]
        del expected["open_by_handle_at"]  # the kernel may open the inode by that other name too
    for name, path in expected.items():
        run, mine = results[name]
        assert run.returncode == 0 and run.stdout == SECRET, (name, run.stderr)
        reported = [r.attributes["file.path"] for r in mine]
        if name == "open_by_handle_at":  # a handle names the inode: the kernel opens it by any of its names
            assert len(reported) == 1 and reported[0] in (path, str(protected.root / "elsewhere" / "hard-link")), reported
        else:
            assert reported == [path], (name, [r.attributes for r in mine])
        assert mine[0].attributes["otelbpf.security.policy"] == "vault"


def test_sigkill_stops_every_path_form_before_a_byte(loaded, protected):
    results = _run_forms(loaded, protected, _policy("Equal", protected.file, "sigkill"), enforce=True)
    assert len(results) == 9
    for name, (run, mine) in results.items():
        assert run.returncode == -9, (name, run.returncode, run.stderr)
        assert b"SECRET" not in run.stdout and run.stdout == b"", name
        assert [r.attributes["otelbpf.security.signal"] for r in mine] == ["SIGKILL"], name
    assert protected.file.read_bytes() == SECRET  # a read-only open changes nothing


def test_etc_shadow_relative_and_through_a_bind_mount_of_etc(loaded, tmp_path):
    """The shipped sensitive-files policy: `cd /etc && cat shadow`, and /etc bind-mounted
    elsewhere in a new mount namespace (matched by identity, reported where the process saw it)."""
    require_tool("unshare")
    mnt = tmp_path / "etc-view"
    mnt.mkdir()
    with loaded.policies([load_policy(POLICIES / "sensitive-files.yaml")]) as records:
        relative = subprocess.Popen(["cat", "shadow"], cwd="/etc", stdout=subprocess.DEVNULL)
        relative.wait(10)
        bound = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                  f'mount --bind /etc "{mnt}" && exec cat "{mnt}/shadow"'], stdout=subprocess.DEVNULL)
        bound.wait(10)
        settle(records, 2)
        got = {pid: [r.attributes["file.path"] for r in _mine(list(records), pid)]
               for pid in (relative.pid, bound.pid)}
    assert relative.returncode == 0 and bound.returncode == 0
    assert got == {relative.pid: ["/etc/shadow"], bound.pid: [f"{mnt}/shadow"]}


def test_no_false_alarms_for_lookalike_names(loaded, tmp_path):
    fake = tmp_path / "etc"
    fake.mkdir()
    (fake / "shadow").write_text("not the one\n")
    (tmp_path / "shadow").write_text("nor this\n")
    (tmp_path / "my-shadow-copy").write_text("nor this\n")
    (tmp_path / "shadow-link").symlink_to("/etc/hostname")
    with loaded.policies([load_policy(POLICIES / "sensitive-files.yaml")]) as records:
        proc = subprocess.Popen(["sh", "-c", "cat /etc/hostname etc/shadow shadow my-shadow-copy shadow-link "
                                 "./etc/../shadow > /dev/null"], cwd=tmp_path)
        assert proc.wait(10) == 0
        time.sleep(0.5)
        mine = _mine(list(records), proc.pid)
    assert mine == [], [r.attributes for r in mine]


def test_a_file_replaced_by_rename_is_protected_again(loaded, protected):
    """passwd replaces /etc/shadow by a rename over it: the path still matches at once, and the
    new inode's other names (a hard link made afterwards) once the identity is resolved again."""
    with loaded.policies([_policy("Equal", protected.file)]) as records:
        new = protected.dir / "secret.txt.new"
        new.write_bytes(SECRET)
        os.rename(new, protected.file)
        by_path = subprocess.Popen(["cat", str(protected.file)], stdout=subprocess.DEVNULL)
        by_path.wait(10)
        time.sleep(1.5)  # the sensor resolves identities again every second
        link = protected.root / "later-link"
        os.link(protected.file, link)
        by_link = subprocess.Popen(["cat", str(link)], stdout=subprocess.DEVNULL)
        by_link.wait(10)
        settle(records, 2)
        got = [r.attributes["file.path"] for pid in (by_path.pid, by_link.pid) for r in _mine(list(records), pid)]
    assert got == [str(protected.file), str(link)]


# -- exec rules match the file the kernel executed -----------------------------------------------
def test_exec_through_a_symlink_or_a_relative_path_is_caught(loaded, tmp_path):
    tool = tmp_path / "bin" / "touch"
    tool.parent.mkdir()
    tool.write_bytes(Path("/usr/bin/touch").read_bytes())
    tool.chmod(0o755)
    link = tmp_path / "innocent-name"
    link.symlink_to(tool)
    policy = f"name: no-touch\nrules:\n  - hook: exec\n    paths: [{{op: Equal, values: [{tool}]}}]\n"
    runs = {"symlink": ([str(link), str(tmp_path / "a")], None), "relative": (["./touch", str(tmp_path / "b")], tool.parent)}
    with loaded.policies([parse_policy(policy, "t")]) as records:
        pids = {}
        for name, (cmd, cwd) in runs.items():
            proc = subprocess.Popen(cmd, cwd=cwd)
            assert proc.wait(10) == 0
            pids[name] = proc.pid
        settle(records, 2)
        got = {name: [(r.attributes["file.path"], r.attributes["otelbpf.security.syscall"])
                      for r in _mine(list(records), pid)] for name, pid in pids.items()}
    assert got == {"symlink": [(str(tool), "execve")], "relative": [(str(tool), "execve")]}
    with loaded.policies([parse_policy(policy + "    action: sigkill\n", "t")], enforce=True):
        for name, (cmd, cwd) in runs.items():
            never = tmp_path / f"never-{name}"
            run = subprocess.run([cmd[0], str(never)], cwd=cwd, timeout=10, check=False)
            assert run.returncode == -9, name
            assert not never.exists(), name  # killed before the program's first instruction


CHROOTED = """
import os, sys
os.chroot(sys.argv[1])      # as a container's runtime does (pivot_root): the process's root moves
os.chdir("/")
os.close(os.open("/etc/shadow", os.O_RDONLY))
"""


def test_paths_are_relative_to_the_processs_root(loaded, tmp_path):
    """A process whose root is a container's rootfs opening its /etc/shadow is reported with
    the path it sees, /etc/shadow; the host opening the same file by its host path is not."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    with loaded.policies([load_policy(POLICIES / "sensitive-files.yaml")]) as records:
        inside = subprocess.Popen([sys.executable, "-c", CHROOTED, str(rootfs)])
        assert inside.wait(10) == 0
        host = subprocess.Popen(["cat", str(rootfs / "etc" / "shadow")], stdout=subprocess.DEVNULL)
        assert host.wait(10) == 0
        settle(records, 1)
        got = {pid: [r.attributes["file.path"] for r in _mine(list(records), pid)] for pid in (inside.pid, host.pid)}
    assert got == {inside.pid: ["/etc/shadow"], host.pid: []}
