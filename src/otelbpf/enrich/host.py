"""The resource attributes that describe this host and the agent itself."""

from __future__ import annotations

import platform
import socket

from otelbpf import __version__
from otelbpf.signals.model import Resource

# uname -m -> the host.arch values of the semantic conventions
_SEMCONV_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm32",
    "armv6l": "arm32",
    "i386": "x86",
    "i686": "x86",
    "ppc64le": "ppc64",
    "ppc64": "ppc64",
    "ppc": "ppc32",
    "s390x": "s390x",
    "ia64": "ia64",
}

# Where systemd and older dbus setups keep the machine id, in the order the OTel SDKs read them.
MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def host_arch(machine: str | None = None) -> str:
    """host.arch for `machine` (default: this one); unknown architectures pass through."""
    machine = machine or platform.machine()
    return _SEMCONV_ARCH.get(machine, machine)


def machine_id(paths: tuple[str, ...] = MACHINE_ID_PATHS) -> str | None:
    for path in paths:
        try:
            with open(path, encoding="ascii") as f:
                value = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value:
            return value
    return None


def host_resource(service_name: str = "otelbpf", machine_id_paths: tuple[str, ...] = MACHINE_ID_PATHS) -> Resource:
    """Resource with host.name, host.arch, host.id (when known), os.type, os.version and
    service.name/service.version of the agent."""
    attrs: dict[str, str] = {
        "host.name": socket.gethostname(),
        "host.arch": host_arch(),
        "os.type": "linux",
        "os.version": platform.release(),
        "service.name": service_name,
        "service.version": __version__,
    }
    host_id = machine_id(machine_id_paths)
    if host_id:
        attrs["host.id"] = host_id
    return Resource.of(attrs)
