"""Test hosts: a network namespace joined to this one by a veth pair, made and removed by
the test itself, so that test traffic crosses a real link and never leaves the machine."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class TestHost:
    name: str
    host_addr: str
    peer_addr: str

    def run(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kw)

    def exec(self, *args: str) -> None:
        sh("ip", "netns", "exec", self.name, *args)


def make_test_host(subnet: int = 213) -> TestHost:
    tag = uuid.uuid4().hex[:6]
    name, host_if, peer_if = f"obt-{tag}", f"obh-{tag}", f"obp-{tag}"
    host_addr, peer_addr = f"10.{subnet}.7.1", f"10.{subnet}.7.2"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        sh("ip", "link", "set", peer_if, "netns", name)
        sh("ip", "addr", "add", f"{host_addr}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{peer_addr}/24", "dev", peer_if)
        sh("ip", "netns", "exec", name, "ip", "link", "set", peer_if, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    except subprocess.CalledProcessError:
        remove_test_host(name)
        raise
    return TestHost(name, host_addr, peer_addr)


def remove_test_host(name: str) -> None:
    # Deleting the namespace deletes its end of the veth pair, and with it ours.
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
