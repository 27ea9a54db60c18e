import os
import platform
import socket

from otelbpf import __version__
from otelbpf.enrich.host import host_arch, host_resource, machine_id


def test_host_resource_attributes():
    attrs = host_resource().as_dict()
    assert attrs["host.name"] == socket.gethostname()
    assert attrs["os.type"] == "linux"
    assert attrs["os.version"] == os.uname().release
    assert attrs["service.name"] == "otelbpf"
    assert attrs["service.version"] == __version__
    assert attrs["host.arch"] == host_arch(os.uname().machine)
    if os.path.exists("/etc/machine-id") and open("/etc/machine-id").read().strip():
        assert attrs["host.id"] == open("/etc/machine-id").read().strip()


def test_service_name_and_missing_machine_id(tmp_path):
    attrs = host_resource("my-agent", machine_id_paths=(str(tmp_path / "nope"),)).as_dict()
    assert attrs["service.name"] == "my-agent"
    assert "host.id" not in attrs


def test_machine_id_falls_back_and_skips_empty(tmp_path):
    empty, dbus = tmp_path / "machine-id", tmp_path / "dbus-machine-id"
    empty.write_text("\n")
    dbus.write_text("abc123\n")
    assert machine_id((str(empty), str(dbus))) == "abc123"


def test_host_arch_semconv_names():
    assert host_arch("x86_64") == "amd64"
    assert host_arch("aarch64") == "arm64"
    assert host_arch("i686") == "x86"
    assert host_arch("riscv64") == "riscv64"
    assert host_arch() in {"amd64", "arm64"} or host_arch() == platform.machine()


def test_resource_is_hashable():
    assert hash(host_resource()) == hash(host_resource())
