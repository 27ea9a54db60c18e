"""The build's manifest of BPF object digests, checked before a load (kernel.integrity)."""

from __future__ import annotations

import hashlib
import logging
import subprocess

import pytest

from otelbpf.kernel import integrity


@pytest.fixture
def built(tmp_path):
    """Two objects and the manifest sha256sum writes for them, as `make bpf` does."""
    for name, body in (("a.bpf.o", b"\x7fELF one"), ("b.bpf.o", b"\x7fELF two")):
        (tmp_path / name).write_bytes(body)
    out = subprocess.run(["sha256sum", "a.bpf.o", "b.bpf.o"], cwd=tmp_path, check=True, capture_output=True).stdout
    (tmp_path / integrity.MANIFEST).write_bytes(out)
    return tmp_path


def test_objects_as_built_pass(built):
    integrity.verify(built / "a.bpf.o")
    integrity.verify(built / "b.bpf.o")


def test_one_changed_byte_is_refused_naming_the_file_and_both_digests(built, monkeypatch):
    monkeypatch.delenv(integrity.OVERRIDE_ENV, raising=False)
    obj = built / "a.bpf.o"
    want = hashlib.sha256(obj.read_bytes()).hexdigest()
    obj.write_bytes(b"\x7fELF onE")
    found = hashlib.sha256(obj.read_bytes()).hexdigest()
    with pytest.raises(integrity.IntegrityError) as exc:
        integrity.verify(obj)
    msg = str(exc.value)
    assert str(obj) in msg and want in msg and found in msg and integrity.OVERRIDE_ENV in msg


def test_the_override_loads_it_and_says_so(built, monkeypatch, caplog):
    obj = built / "b.bpf.o"
    obj.write_bytes(b"changed")
    monkeypatch.setenv(integrity.OVERRIDE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger=integrity.__name__):
        integrity.verify(obj)
    (record,) = caplog.records
    assert str(obj) in record.getMessage() and hashlib.sha256(b"changed").hexdigest() in record.getMessage()
    assert f"{integrity.OVERRIDE_ENV}=1" in record.getMessage()


def test_an_object_the_manifest_does_not_list_is_refused(built, monkeypatch):
    monkeypatch.delenv(integrity.OVERRIDE_ENV, raising=False)
    (built / "c.bpf.o").write_bytes(b"new")
    with pytest.raises(integrity.IntegrityError, match="does not list it"):
        integrity.verify(built / "c.bpf.o")


def test_no_manifest_loads_with_a_warning(tmp_path, caplog):
    (tmp_path / "x.bpf.o").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger=integrity.__name__):
        integrity.verify(tmp_path / "x.bpf.o")
    assert "loaded unchecked" in caplog.text


def test_a_manifest_that_is_not_sha256sum_output_says_how_to_fix_it(built):
    (built / integrity.MANIFEST).write_text("not a digest\n")
    with pytest.raises(integrity.IntegrityError, match=r"line 1 .*make bpf"):
        integrity.verify(built / "a.bpf.o")
