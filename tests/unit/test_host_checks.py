"""What the agent says on a host it cannot run on (conditions this machine cannot have for
real, so the probe's inputs are pointed elsewhere)."""

from pathlib import Path

import pytest

from otelbpf import agent
from otelbpf.kernel import features


def test_kernel_without_btf_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(features, "BTF_VMLINUX", tmp_path / "no-btf")
    table = {f.name: f for f in features.probe(agent.PROBE_OBJECT)}
    assert not table["BTF"].available
    assert "CONFIG_DEBUG_INFO_BTF" in table["BTF"].detail
    with pytest.raises(agent.AgentError, match="BTF: kernel built without CONFIG_DEBUG_INFO_BTF"):
        agent.check_host()


def test_missing_capabilities_are_named(monkeypatch):
    monkeypatch.setattr(features, "effective_capabilities", lambda: 0)
    monkeypatch.setattr(features.os, "geteuid", lambda: 1000)
    with pytest.raises(agent.AgentError) as err:
        agent.check_host()
    assert "root or CAP_BPF" in str(err.value) and "CAP_PERFMON" in str(err.value)


def test_probe_object_ships_with_the_package():
    assert Path(agent.PROBE_OBJECT).is_file(), "run make bpf"
