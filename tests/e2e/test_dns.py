"""DNS lookups against a real resolver (dnsmasq from Debian) that the test starts with known
records: every query is reported with its name, type, response code, answers and latency."""

from __future__ import annotations

import subprocess
import time

import dns.message
import dns.query
import pytest

from otelbpf.enrich.host import host_resource
from otelbpf.sensors.base import running
from otelbpf.sensors.network import NetworkSensor
from otelbpf.signals.registry import Registry
from tests.conftest import require_tool

RESOLVER = "127.0.0.77"  # a loopback address of its own, so no system resolver is in the way
KNOWN = {"alpha.otelbpf.test": "10.1.2.3", "beta.otelbpf.test": "10.1.2.4", "gamma.otelbpf.test": "10.1.2.5"}


@pytest.fixture
def dnsmasq(tmp_path):
    binary = require_tool("dnsmasq")
    args = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--listen-address={RESOLVER}", "--bind-interfaces", "--port=53", "--local=/otelbpf.test/",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--cache-size=0"]
    args += [f"--host-record={name},{ip}" for name, ip in KNOWN.items()]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # ready when it answers
        try:
            dns.query.udp(dns.message.make_query("alpha.otelbpf.test", "A"), RESOLVER, timeout=0.5)
            break
        except Exception:  # noqa: BLE001 - not up yet
            assert proc.poll() is None, proc.stderr.read()
    yield proc
    proc.terminate()
    proc.wait(10)


def test_every_lookup_is_reported(dnsmasq):
    records = []
    queries = [(name, "A") for name in KNOWN] * 3 + [("nope.otelbpf.test", "A"), ("alpha.otelbpf.test", "AAAA")]
    sensor = NetworkSensor(lambda batch: records.extend(batch.records), Registry(), host_resource(), sample_interval=0.5)
    with running(sensor) as s:
        time.sleep(0.2)
        truth = []
        for name, qtype in queries:
            reply = dns.query.udp(dns.message.make_query(name, qtype), RESOLVER, timeout=2)
            truth.append((name, qtype, dns.rcode.to_text(reply.rcode()),
                          tuple(rd.to_text() for rrset in reply.answer for rd in rrset)))
        deadline = time.monotonic() + 10
        while len([x for x in s.lookups if x.server == RESOLVER]) < len(queries) and time.monotonic() < deadline:
            time.sleep(0.05)
    got = [(x.name, x.qtype, x.rcode, x.answers) for x in s.lookups if x.server == RESOLVER]
    assert got == truth
    assert truth[0] == ("alpha.otelbpf.test", "A", "NOERROR", ("10.1.2.3",))
    assert ("nope.otelbpf.test", "A", "NXDOMAIN", ()) in got
    assert all(0 < x.duration_s < 2 for x in s.lookups if x.server == RESOLVER)
    failed = [r for r in records if r.event_name == "dns.lookup.failed"]
    assert [r.attributes["dns.question.name"] for r in failed] == ["nope.otelbpf.test"]
    assert failed[0].attributes["otelbpf.dns.response_code"] == "NXDOMAIN"
