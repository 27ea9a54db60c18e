"""Memcached exchanges from a real memcached (Debian's, started by the test) and pymemcache,
through a recording relay: every command is one exchange, in order, and the keys, hits and
misses add up to the server's own counters (stats)."""

from __future__ import annotations

import subprocess

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

from tests.conftest import require_tool, wait_for_port
from tests.l7_relay import Relay, free_port, replay

KEYS = [f"key-{i}" for i in range(11)]


@pytest.fixture
def memcached():
    binary = require_tool("memcached")
    port = free_port()
    proc = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "nobody", "-m", "16"])
    try:
        assert wait_for_port(port), "memcached did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def stats(port: int) -> dict[str, int]:
    client = Client(("127.0.0.1", port))
    try:
        return {k.decode(): int(v) for k, v in client.stats().items() if isinstance(v, int)}
    finally:
        client.close()


def test_every_command_is_one_exchange_and_counts_match_the_server(memcached):
    before = stats(memcached)
    expected: list[str] = []
    with Relay(memcached) as relay:
        client = Client(("127.0.0.1", relay.port), default_noreply=False)
        for i, key in enumerate(KEYS):
            client.set(key, f"value-{i}".encode())
            expected.append("set")
        client.set("quiet", b"1", noreply=True)
        expected.append("set")
        for key in KEYS[:7] + ["missing-1", "missing-2", "missing-3"]:
            client.get(key)
            expected.append("get")
        assert len(client.get_many(KEYS[:4] + ["missing-4"])) == 4
        expected.append("get")
        assert client.delete(KEYS[0]) and not client.delete("missing-5")
        expected += ["delete", "delete"]
        client.set("counter", b"41")
        assert client.incr("counter", 1) == 42
        expected += ["set", "incr"]
        with pytest.raises(MemcacheClientError):
            client.incr(KEYS[1], 1)  # CLIENT_ERROR cannot increment or decrement non-numeric value
        expected.append("incr")
        assert client.add(KEYS[2], b"again") is False  # NOT_STORED: a refusal, not an error
        expected.append("add")
        client.version()
        expected.append("version")
        client.close()
        relay.wait_idle()
    after = stats(memcached)
    delta = {name: after[name] - before[name] for name in after if name in before}

    exchanges = []
    for records in relay.connections:  # pymemcache reconnects after a CLIENT_ERROR
        got, connection = replay(records)
        assert connection.protocol == "memcached" and dict(connection.counters) == {}
        exchanges += got
    assert len(relay.connections) == 2
    assert [e.operation for e in exchanges] == expected
    gets = [e for e in exchanges if e.operation == "get"]
    assert sum(e.attributes["db.operation.batch.size"] for e in gets) == delta["cmd_get"] == 15
    assert sum(e.attributes["db.response.returned_rows"] for e in gets) == delta["get_hits"] == 11
    assert len([e for e in exchanges if e.operation in ("set", "add")]) == delta["cmd_set"] == 14
    assert [(e.operation, e.error_type) for e in exchanges if e.error_type] == [("incr", "CLIENT_ERROR")]
    assert delta["incr_hits"] == 1 and delta["delete_hits"] == 1 and delta["delete_misses"] == 1
    assert all(e.attributes["db.system.name"] == "memcached" and e.end_ns >= e.start_ns for e in exchanges)
