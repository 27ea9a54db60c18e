"""NATS messaging exchanges from a real nats-server (Debian's, started by the test) and the
nats-py client, through a recording relay: a producer's publishes and a consumer's
deliveries are counted as the server itself counted them (its /connz monitoring)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request

import nats
import pytest

from tests.conftest import require_tool, wait_for_port
from tests.l7_relay import Relay, free_port, replay

SUBJECT = "otelbpf.orders"
MESSAGES = 23


@pytest.fixture
def nats_server():
    binary = require_tool("nats-server")
    port, monitor = free_port(), free_port()
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)])
    try:
        assert wait_for_port(port) and wait_for_port(monitor), "nats-server did not start"
        yield port, monitor
    finally:
        proc.terminate()
        proc.wait(10)


async def workload(port: int, monitor: int) -> dict[str, dict]:
    received: list[bytes] = []
    done = asyncio.Event()

    async def on_message(message) -> None:
        received.append(message.data)
        if len(received) == MESSAGES:
            done.set()

    consumer = await nats.connect(f"nats://127.0.0.1:{port}", name="consumer")
    await consumer.subscribe(SUBJECT, cb=on_message)
    await consumer.flush()
    producer = await nats.connect(f"nats://127.0.0.1:{port}", name="producer")
    for i in range(MESSAGES):
        await producer.publish(SUBJECT, b"order %d" % i)
    await producer.publish("otelbpf.audit", b"with headers", headers={"Audit": "yes"})  # HPUB; nobody listens
    await producer.flush()
    await asyncio.wait_for(done.wait(), 10)
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz", timeout=5) as answer:
        connections = {c["name"]: c for c in json.load(answer)["connections"]}
    await producer.close()
    await consumer.close()
    return connections


def test_publishes_and_deliveries_match_the_server_counts(nats_server):
    port, monitor = nats_server
    with Relay(port) as relay:
        server_view = asyncio.run(workload(relay.port, monitor))
        relay.wait_idle()
    by_port = dict(zip(relay.upstream_ports, relay.connections))
    consumer = replay(by_port[server_view["consumer"]["port"]])
    producer = replay(by_port[server_view["producer"]["port"]])
    for _, connection in (consumer, producer):
        assert connection.protocol == "nats" and dict(connection.counters) == {}

    published = producer[0]
    assert len(published) == server_view["producer"]["in_msgs"] == MESSAGES + 1
    assert [e.attributes["messaging.destination.name"] for e in published] == [SUBJECT] * MESSAGES + ["otelbpf.audit"]
    assert {e.attributes["messaging.operation.type"] for e in published} == {"send"}
    assert published[-1].attributes["messaging.message.body.size"] == len(b"with headers")
    delivered = consumer[0]
    assert len(delivered) == server_view["consumer"]["out_msgs"] == MESSAGES
    assert {(e.operation, e.attributes["messaging.operation.type"], e.attributes["messaging.system"]) for e in delivered} == \
        {("receive", "receive", "nats")}
    assert [e.attributes["messaging.message.body.size"] for e in delivered] == [len(b"order %d" % i) for i in range(MESSAGES)]
