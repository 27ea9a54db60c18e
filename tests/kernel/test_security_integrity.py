"""A copy of the sensor's objects with one byte changed: the sensor refuses it and says why;
OTELBPF_ALLOW_MODIFIED_BPF=1 loads it anyway and logs that."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from otelbpf.kernel import integrity
from otelbpf.security.policy import parse_policy
from otelbpf.sensors.security import BPF_OBJECT, SecuritySensor
from otelbpf.signals.model import Resource
from otelbpf.signals.registry import Registry
from tests.conftest import require

IDLE = "name: idle\nrules:\n  - hook: ptrace\n    requests: [999999]\n"
# A line of the source kept in the object's BTF line info: changing it changes no instruction.
HARMLESS = b"struct match_args m = {};"


@pytest.fixture
def package_copy(tmp_path):
    require(os.geteuid() == 0, "needs root to load BPF programs")
    require((BPF_OBJECT.parent / integrity.MANIFEST).is_file(), "no manifest: build with make bpf")
    for name in (BPF_OBJECT.name, integrity.MANIFEST):
        shutil.copy(BPF_OBJECT.parent / name, tmp_path / name)
    return tmp_path / BPF_OBJECT.name


def _sensor(obj) -> SecuritySensor:
    return SecuritySensor(lambda batch: None, Registry(), Resource(), [parse_policy(IDLE, "idle")], bpf_object=obj)


def _change_one_byte(obj) -> tuple[str, str]:
    before = integrity.digest(obj)
    data = bytearray(obj.read_bytes())
    at = data.index(HARMLESS)
    data[at + len("struct ")] = ord("M")
    obj.write_bytes(bytes(data))
    return before, integrity.digest(obj)


def test_a_changed_object_is_refused_and_the_flag_loads_it_with_a_log(package_copy, monkeypatch, caplog):
    monkeypatch.delenv(integrity.OVERRIDE_ENV, raising=False)
    intact = _sensor(package_copy)
    intact.start()  # the copy as built loads
    intact.stop()
    want, found = _change_one_byte(package_copy)
    refused = _sensor(package_copy)
    with pytest.raises(integrity.IntegrityError) as exc:
        refused.start()
    assert str(package_copy) in str(exc.value) and want in str(exc.value) and found in str(exc.value)
    assert refused.programs() == []  # nothing of it was loaded
    monkeypatch.setenv(integrity.OVERRIDE_ENV, "1")
    overridden = _sensor(package_copy)
    with caplog.at_level(logging.WARNING, logger=integrity.__name__):
        overridden.start()
    try:
        assert overridden.programs()  # loaded and attached
        assert any(found in r.getMessage() and f"{integrity.OVERRIDE_ENV}=1" in r.getMessage() for r in caplog.records)
    finally:
        overridden.stop()
