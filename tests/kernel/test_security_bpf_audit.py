"""The shipped bpf-audit policy: BPF program loads and attaches by other processes are events
with who did it and what program; the agent's own loads are not."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from otelbpf.kernel import BpfObject
from otelbpf.security.policy import parse_policy
from tests.conftest import require, require_tool
from tests.kernel.security_sensor import POLICIES, settle

AUDIT_OBJECT = Path(__file__).resolve().parents[1] / "bpf" / "audit_probe.bpf.o"


def _audit_policy():
    """The shipped bpf-audit policy without its rate limit: other tests on the host load
    programs too, and a burst of theirs must not hold back this test's events."""
    text = (POLICIES / "bpf-audit.yaml").read_text()
    return parse_policy("\n".join(line for line in text.splitlines() if "rate_limit" not in line), "bpf-audit.yaml")


def _from(records, pid: int) -> list[dict]:
    """Attributes of the records of process pid or its descendants."""
    return [r.attributes for r in records if r.attributes["process.pid"] == pid
            or any(str(a).startswith(f"{pid}:") for a in r.attributes.get("otelbpf.process.ancestors", []))]


def test_bpftool_prog_load_is_reported_with_the_programs_id_and_tag(loaded, tmp_path):
    require_tool("bpftool")
    require_tool("unshare")
    require(AUDIT_OBJECT.exists(), f"{AUDIT_OBJECT} is not built (make setup-test)")
    pin = tmp_path / "bpffs"
    pin.mkdir()
    # A bpffs of the test's own, in a mount namespace that dies with it: the program is gone after.
    script = (f'mount -t bpf bpf "{pin}" && bpftool prog load "{AUDIT_OBJECT}" "{pin}/p" '
              f'&& bpftool -j prog show pinned "{pin}/p"')
    with loaded.policies([_audit_policy()]) as records:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=30)
        settle(records, 1)
        mine = _from(list(records), proc.pid)
    assert proc.returncode == 0, err
    shown = json.loads(out)
    loads = [a for a in mine if a["otelbpf.security.bpf.command"] == "prog_load"
             and a["otelbpf.security.bpf.prog.name"] == "audit_probe_23"]
    assert len(loads) == 1, mine
    (a,) = loads
    assert a["otelbpf.security.bpf.prog.id"] == shown["id"]
    assert a["otelbpf.security.bpf.prog.tag"] == shown["tag"]
    assert a["otelbpf.security.bpf.prog.type"] == shown["type"] == "tracepoint"
    assert a["otelbpf.security.bpf.return"] >= 0
    assert a["process.executable.name"] == "bpftool" and a["otelbpf.security.syscall"] == "bpf"
    assert a["otelbpf.security.policy"] == "bpf-audit"
    assert a["otelbpf.process.ancestors"][0].endswith((":sh", ":dash"))  # who started it


def test_bpftrace_attaching_a_tracepoint_is_reported(loaded):
    bpftrace = require_tool("bpftrace")
    program = 'tracepoint:syscalls:sys_enter_getppid { @calls = count(); } interval:ms:300 { exit(); }'
    with loaded.policies([_audit_policy()]) as records:
        proc = subprocess.Popen([bpftrace, "-e", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
        settle(records, 1)
        mine = _from(list(records), proc.pid)
    assert proc.returncode == 0, err
    attaches = [a for a in mine if a["otelbpf.security.bpf.command"] == "perf_event_set_bpf"]
    targets = {a.get("otelbpf.security.bpf.target") for a in attaches}
    assert "tracepoint:syscalls:sys_enter_getppid" in targets, attaches
    (tp,) = [a for a in attaches if a.get("otelbpf.security.bpf.target") == "tracepoint:syscalls:sys_enter_getppid"]
    assert tp["otelbpf.security.bpf.prog.type"] == "tracepoint" and tp["otelbpf.security.bpf.return"] == 0
    assert tp["process.pid"] == proc.pid and tp["process.executable.name"] == "bpftrace"
    loaded_ids = {a["otelbpf.security.bpf.prog.id"] for a in mine
                  if a["otelbpf.security.bpf.command"] == "prog_load" and "otelbpf.security.bpf.prog.id" in a}
    assert tp["otelbpf.security.bpf.prog.id"] in loaded_ids  # the program it loaded is the one attached


def test_the_agents_own_loads_are_left_out(loaded):
    with loaded.policies([_audit_policy()]) as records:
        with BpfObject(AUDIT_OBJECT) as obj:
            obj.load()
        settle(records, 1)
        mine = [r.attributes for r in records if r.attributes["process.pid"] == os.getpid()]
    assert mine == []
