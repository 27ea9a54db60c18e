"""The security sensor against processes the tests start: matches, kills, containers, reload."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from otelbpf.enrich.containers import find_cgroup2_root
from otelbpf.security.policy import load_policy, parse_policy
from tests.conftest import require, require_tool
from tests.kernel.security_sensor import POLICIES, settle


def test_cat_shadow_is_reported_with_its_shell(loaded):
    with loaded.policies([load_policy(POLICIES / "sensitive-files.yaml")]) as records:
        subprocess.run(["/bin/sh", "-c", "cat /etc/shadow > /dev/null; cat /etc/hostname > /dev/null; true"],
                       check=True)
        settle(records, 1)
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
        # (What the kill does not prevent, the open's own effects: test_sigkill_at_open_still_creates_and_truncates.)
        make = subprocess.run([str(reader), "/dev/null"], timeout=10)
        touched = tmp_path / "protected" / "made"
        subprocess.run(["/bin/sh", "-c", f"exec {reader} /dev/null > {touched}"], timeout=10)
        settle(records, 1)
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
        settle(records, 1)
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
        settle(records, 1)
    (r,) = [r for r in records if r.attributes.get("file.path") == str(tmp_path / "notes.key")]  # the kernel's path
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
            settle(records, 1)
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
        settle(records, 23)
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
        settle(records, 2)
    assert sorted(r.attributes["network.peer.address"] for r in records) == ["127.0.0.1", "127.0.0.2"]
    assert {r.attributes["network.peer.port"] for r in records} == {9}


@pytest.mark.parametrize("policy_name", ["sensitive-files", "outbound-public", "setuid-root", "bpf-audit", "container-escape",
                                         "container-shell-kill"])
def test_shipped_policies_load(loaded, policy_name):
    with loaded.policies([load_policy(POLICIES / f"{policy_name}.yaml")]):
        pass


def test_per_policy_counters(loaded):
    with loaded.policies([load_policy(POLICIES / "sensitive-files.yaml")]) as records:
        for _ in range(23):
            with open("/etc/shadow"):
                pass
        settle(records, 23)
        loaded.sensor.poll(0)
    matches = loaded.registry.counter("otelbpf.security.matches")
    assert matches.value({"otelbpf.security.policy": "sensitive-files", "otelbpf.security.action": "post"}) >= 23


# -- connect in a network namespace the test makes -------------------------------------------------
CONNECT_SCRIPT = """
import socket, sys
for addr in sys.argv[1:]:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect((addr, 9))
        except OSError:
            pass  # refused or unreachable: the attempt is what the hook sees
print("survived", flush=True)
"""


@pytest.fixture(scope="module")
def test_net():
    """A namespace behind a veth: 10.217.7.2 and .3 on the link, 10.217.8.5 routed through it."""
    from tests.netns import make_test_host, remove_test_host, sh
    require_tool("ip")
    host = make_test_host(217)
    try:
        host.exec("ip", "addr", "add", "10.217.7.3/24", "dev", "lo")
        host.exec("ip", "addr", "add", "10.217.8.5/32", "dev", "lo")
        sh("ip", "route", "add", "10.217.8.0/24", "via", host.peer_addr)
        yield host
    finally:
        subprocess.run(["ip", "route", "del", "10.217.8.0/24"], capture_output=True, check=False)
        remove_test_host(host.name)


def _connects(*addrs: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-c", CONNECT_SCRIPT, *addrs], capture_output=True, timeout=20, check=False)


def test_connect_in_and_not_in_a_cidr_set_over_a_veth(loaded, test_net):
    policy = parse_policy("""
name: lab-net
rules:
  - hook: connect
    addresses: {op: In, values: [10.217.7.0/24]}
  - hook: connect
    addresses: {op: NotIn, values: [10.217.7.0/24, 127.0.0.0/8, "::1/128"]}
    ports: [9]
""", "t")
    with loaded.policies([policy]) as records:
        out = _connects("10.217.7.2", "10.217.7.3", "10.217.8.5", "127.0.0.1")
        settle(records, 3)
    assert out.returncode == 0, out.stderr
    mine = [r.attributes for r in records if r.attributes["network.peer.address"].startswith("10.217.")]
    assert sorted((a["network.peer.address"], a["otelbpf.security.rule"]) for a in mine) == [
        ("10.217.7.2", 0), ("10.217.7.3", 0), ("10.217.8.5", 1)], mine
    assert not [r for r in records if r.attributes["network.peer.address"] == "127.0.0.1"]
    assert all(a["process.executable.name"].startswith("python") for a in mine)


def test_connect_kill_only_for_the_matching_addresses(loaded, test_net):
    policy = parse_policy("""
name: lab-net-kill
rules:
  - hook: connect
    addresses: {op: In, values: [10.217.8.0/24]}
    action: sigkill
""", "t")
    with loaded.policies([policy], enforce=True) as records:
        outside = _connects("10.217.7.2", "10.217.7.3")
        inside = _connects("10.217.7.2", "10.217.8.5", "10.217.7.3")
        segments = _peer_tcp_in_segs(test_net)
        alone = _connects("10.217.8.5")
        segments = _peer_tcp_in_segs(test_net) - segments
        settle(records, 2)
    assert outside.returncode == 0 and outside.stdout == b"survived\n"
    assert inside.returncode == -9 and b"survived" not in inside.stdout
    assert alone.returncode == -9
    # What the kill at connect entry does not prevent: the connect runs, its SYN reaches the peer.
    assert segments >= 1
    assert [r.attributes["network.peer.address"] for r in records] == ["10.217.8.5"] * 2
    assert all(r.attributes["otelbpf.security.signal"] == "SIGKILL" for r in records)


def _peer_tcp_in_segs(host) -> int:
    """TCP segments the namespace's kernel has received (its /proc/net/snmp)."""
    out = subprocess.run(["ip", "netns", "exec", host.name, "cat", "/proc/net/snmp"], capture_output=True,
                         text=True, check=True).stdout
    names, values = [line.split() for line in out.splitlines() if line.startswith("Tcp:")]
    return int(values[names.index("InSegs")])


# -- exec, privilege, ptrace and mount with real processes ----------------------------------------
def test_exec_policy_reports_and_kills_before_the_program_runs(loaded, tmp_path):
    tool = tmp_path / "bin" / "touch"
    tool.parent.mkdir()
    tool.write_bytes(Path("/usr/bin/touch").read_bytes())
    tool.chmod(0o755)
    policy = f"name: no-touch\nrules:\n  - hook: exec\n    paths: [{{op: Equal, values: [{tool}]}}]\n"
    with loaded.policies([parse_policy(policy, "t")]) as records:
        subprocess.run([str(tool), str(tmp_path / "reported")], check=True, timeout=10)
        subprocess.run(["/usr/bin/touch", str(tmp_path / "other")], check=True, timeout=10)
        settle(records, 1)
    (r,) = records
    assert r.attributes["file.path"] == str(tool) and r.attributes["otelbpf.security.syscall"] == "execve"
    kill = policy + "    action: sigkill\n"
    with loaded.policies([parse_policy(kill, "t")], enforce=True) as records:
        run = subprocess.run([str(tool), str(tmp_path / "never")], timeout=10, check=False)
        settle(records, 1)
    assert run.returncode == -9
    assert not (tmp_path / "never").exists()  # killed before the new program's first instruction
    assert (tmp_path / "reported").exists() and records[0].attributes["otelbpf.security.signal"] == "SIGKILL"


PRIVILEGE_SCRIPT = """
import os
os.setresgid(65533, 65533, 65533)
os.setgroups([])
os.setresuid(65534, 65534, 0)   # saved uid 0 stays
os.setreuid(-1, 65534)          # now as uid 65534: the rule's uids selector (In [0]) leaves it out
"""


def test_privilege_policy_names_the_target_ids(loaded):
    import sys
    policy = parse_policy("""
name: to-nobody
rules:
  - hook: privilege
    ids: [65534]
    uids: {op: In, values: [0]}
""", "t")
    with loaded.policies([policy]) as records:
        subprocess.run([sys.executable, "-c", PRIVILEGE_SCRIPT], check=True, timeout=10)
        settle(records, 1)
    got = sorted((r.attributes["otelbpf.security.syscall"], r.attributes["otelbpf.security.argument"])
                 for r in records)
    # setresgid(65533...) does not name 65534; setreuid(-1, 65534) runs as uid 65534, not 0.
    assert got == [("setresuid", "65534,65534,0")], got
    assert records[0].attributes["process.executable.name"].startswith("python")


PTRACE_SCRIPT = """
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    time.sleep(10)
    os._exit(0)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
assert libc.ptrace(PTRACE_ATTACH, child, None, None) == 0, ctypes.get_errno()
os.waitpid(child, 0)
libc.ptrace(PTRACE_DETACH, child, None, None)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
print(child)
"""


def test_ptrace_attach_is_reported_with_its_target(loaded):
    import sys
    policy = parse_policy("name: attach\nrules:\n  - hook: ptrace\n    requests: [16]\n", "t")
    with loaded.policies([policy]) as records:
        out = subprocess.run([sys.executable, "-c", PTRACE_SCRIPT], check=True, capture_output=True, timeout=20)
        settle(records, 1)
    target = int(out.stdout)
    (r,) = records  # the detach (17) is not in the rule
    assert r.attributes["otelbpf.security.ptrace.request"] == 16
    assert r.attributes["otelbpf.security.ptrace.target_pid"] == target


def test_mount_in_a_private_mount_namespace(loaded, tmp_path):
    require_tool("unshare")
    watched, other = tmp_path / "watched", tmp_path / "other"
    watched.mkdir()
    other.mkdir()
    policy = parse_policy(f"name: mounts\nrules:\n  - hook: mount\n    paths: [{{op: Prefix, values: [{watched}]}}]\n", "t")
    with loaded.policies([policy]) as records:
        for target in (watched, other):
            subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "none",
                            str(target)], check=True, timeout=10)
        settle(records, 1)
    (r,) = records
    assert r.attributes["file.path"] == str(watched)
    assert r.attributes["process.executable.name"] == "mount"
    assert not os.path.ismount(watched)  # the mount stayed in the test's private namespace


# -- what a kill at syscall entry does not prevent: the open's own effects -------------------------
def test_sigkill_at_open_still_creates_and_truncates(loaded, tmp_path):
    """Observed semantics of sigkill on a write-intent open (O_WRONLY|O_CREAT|O_TRUNC):
    the open runs to completion (a new file is created, an existing one truncated to 0
    bytes), and the process dies before the write() that follows."""
    protected = tmp_path / "protected"
    protected.mkdir()
    existing = protected / "existing"
    existing.write_text("KEEP-ME\n" * 23)
    shell = tmp_path / "killed-sh"  # a copy of dash: the policy names this binary only
    shell.write_bytes(Path("/usr/bin/dash").read_bytes())
    shell.chmod(0o755)
    policy = parse_policy(f"""
name: no-writes
rules:
  - hook: file_open
    paths: [{{op: Prefix, values: ["{protected}/"]}}]
    intent: write
    binaries: {{op: In, values: ["{shell}"]}}
    action: sigkill
""", "t")
    with loaded.policies([policy], enforce=True) as records:
        created = subprocess.run([str(shell), "-c", f"echo NEW > {protected}/new; echo after"], capture_output=True,
                                 timeout=10, check=False)
        truncated = subprocess.run([str(shell), "-c", f"echo NEW > {existing}"], capture_output=True, timeout=10, check=False)
        reads = subprocess.run([str(shell), "-c", f"read line < {protected}/new; echo read-ok"],
                               capture_output=True, timeout=10, check=False)
        settle(records, 2)
    assert created.returncode == -9 and created.stdout == b""
    assert truncated.returncode == -9
    assert (protected / "new").exists() and (protected / "new").read_bytes() == b""  # created, never written
    assert existing.read_bytes() == b""  # truncated by the open the kill did not stop
    assert reads.returncode == 0 and reads.stdout == b"read-ok\n"  # intent: write leaves reads alone
    assert {r.attributes["file.path"] for r in records} == {f"{protected}/new", str(existing)}
    assert all(r.attributes["otelbpf.security.signal"] == "SIGKILL" for r in records)
