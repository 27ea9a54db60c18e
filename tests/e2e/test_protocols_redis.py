"""Redis exchanges from a real redis-server and redis-py, through a recording relay: every
command the test sends (23 single, a pipeline, a MULTI/EXEC) is one exchange, in the order
and with the text the server's own MONITOR reports, in RESP2 and RESP3."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import redis

from otelbpf.protocols.exchange import Direction
from otelbpf.protocols.l7 import Connection
from tests.conftest import require_tool, wait_for_port
from tests.l7_relay import Relay, free_port, replay, replay_captured

SINGLE = 23
PIPELINE = 7
IN_TRANSACTION = 3


@pytest.fixture
def redis_port(tmp_path):
    binary = require_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")])
    try:
        assert wait_for_port(port), "redis-server did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def monitor(port: int, seen: list[tuple[int, str]], ready: threading.Event, stop_key: str) -> None:
    """The server's own record of every command it executed (client port, command), until
    stop_key is SET."""
    with redis.Redis(port=port, driver_info=None).monitor() as feed:
        ready.set()
        for entry in feed.listen():
            if entry["command"] == f"SET {stop_key} 1":
                return
            seen.append((int(entry["client_port"]), entry["command"]))


def workload(client: redis.Redis) -> None:
    """23 commands one by one (one fails with WRONGTYPE), a pipeline of 7, a MULTI/EXEC of 3."""
    client.select(3)
    for i in range(5):
        client.set(f"key:{i}", f"value-{i}")
    for i in range(5):
        client.get(f"key:{i}")
    client.incr("counter")
    client.incrby("counter", 41)
    client.rpush("list", "a", "b", "c")
    client.lrange("list", 0, -1)
    client.hset("hash", "field", "x")
    client.hget("hash", "field")
    client.expire("key:0", 100)
    client.ttl("key:0")
    client.exists("key:1", "key:2")
    client.delete("key:4")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.lpush("key:1", "oops")
    client.get("missing")
    pipe = client.pipeline(transaction=False)
    for i in range(PIPELINE):
        pipe.set(f"piped:{i}", i)
    pipe.execute()
    tx = client.pipeline(transaction=True)
    tx.incr("counter")
    tx.set("in-tx", "yes")
    tx.get("in-tx")
    tx.execute()


@pytest.mark.parametrize("resp", [2, 3])
def test_every_command_is_one_exchange_as_monitor_saw_it(redis_port, resp):
    monitored: list[tuple[int, str]] = []
    ready = threading.Event()
    watcher = threading.Thread(target=monitor, args=(redis_port, monitored, ready, f"stop-{resp}"), daemon=True)
    watcher.start()
    assert ready.wait(10)
    time.sleep(0.1)
    with Relay(redis_port) as relay:
        client = redis.Redis(port=relay.port, protocol=resp, driver_info=None)
        workload(client)
        client.close()
        relay.wait_idle()
    redis.Redis(port=redis_port, driver_info=None).set(f"stop-{resp}", 1)
    watcher.join(10)
    assert len(relay.connections) == 1
    seen = [command for port, command in monitored if port == relay.upstream_ports[0]]
    records = relay.connections[0]

    exchanges, connection = replay(records)
    assert connection.protocol == "redis"
    # redis-py's RESP3 handshake also asks for CLIENT MAINT_NOTIFICATIONS, which Redis 7.0
    # refuses as unknown (-ERR): refused commands are never executed, so MONITOR omits them.
    refused = [e for e in exchanges if e.error_type == "ERR"]
    assert {e.operation for e in refused} <= {"CLIENT"}
    executed = [e for e in exchanges if e.error_type != "ERR"]
    assert [e.operation for e in executed] == [line.split()[0].upper() for line in seen]
    handshake = 1 if resp == 3 else 0  # HELLO 3
    assert len(executed) == handshake + SINGLE + PIPELINE + IN_TRANSACTION + 2
    assert dict(connection.counters) == {}

    keeper = Connection("redis", keep_literals=True)
    texts = [e.attributes["db.query.text"] for d, t, c in records for e in keeper.feed(d, t, c) if e.error_type != "ERR"]
    assert texts == seen  # MONITOR prints the arguments as sent

    failed = [e for e in executed if e.error_type]
    assert [(e.operation, e.error_type, e.attributes["db.response.status_code"]) for e in failed] == \
        [("LPUSH", "WRONGTYPE", "WRONGTYPE")]
    assert executed[handshake + 1].attributes == {
        "db.system.name": "redis", "db.operation.name": "SET", "db.namespace": "3", "db.query.text": "SET ? ?"}
    assert all(e.complete and e.end_ns >= e.start_ns for e in exchanges)
    piped = executed[handshake + SINGLE:handshake + SINGLE + PIPELINE]
    assert len({e.start_ns for e in piped}) == 1  # sent in one write, answered in order
    first_reply = min(ts for d, ts, _ in records if d is Direction.SERVER and ts > piped[0].start_ns)
    assert piped[0].end_ns == first_reply
    assert [e.operation for e in exchanges[-5:]] == ["MULTI", "INCRBY", "SET", "GET", "EXEC"]


BIG = 100_000


def test_big_values_still_pair_when_only_4_kib_of_each_read_and_write_is_captured(redis_port):
    with Relay(redis_port) as relay:
        client = redis.Redis(port=relay.port, protocol=2, driver_info=None)
        for i in range(5):
            client.set(f"big:{i}", b"v" * BIG)
            assert len(client.get(f"big:{i}")) == BIG
        client.close()
        relay.wait_idle()
    [records] = relay.connections
    assert max(len(chunk) for _, _, chunk in records) > 4096  # the capture does cut here
    full, _ = replay(records)
    cut, connection = replay_captured(records, 4096)
    assert [(e.operation, e.attributes["db.query.text"]) for e in cut] == [("SET", "SET ? ?"), ("GET", "GET ?")] * 5
    assert [(e.start_ns, e.end_ns, e.error_type) for e in cut] == [(e.start_ns, e.end_ns, e.error_type) for e in full]
    assert connection.counters["padded_bytes"] > 0 and "malformed" not in connection.counters


def command_calls(port: int) -> dict[str, int]:
    """The server's own count of calls per command (INFO commandstats)."""
    stats = redis.Redis(port=port, protocol=2, driver_info=None).info("commandstats")
    calls: dict[str, int] = {}
    for name, entry in stats.items():  # subcommands (cmdstat_config|get) count for their command
        command = name.removeprefix("cmdstat_").split("|")[0].upper()
        calls[command] = calls.get(command, 0) + int(entry["calls"])
    return calls


def test_redis_benchmark_pipelines_pair_one_for_one(redis_port):
    benchmark = require_tool("redis-benchmark")
    requests, depth = 2311, 16
    before = command_calls(redis_port)
    with Relay(redis_port) as relay:
        subprocess.run([benchmark, "-h", "127.0.0.1", "-p", str(relay.port), "-n", str(requests), "-c", "3",
                        "-P", str(depth), "-t", "set,get,incr", "-q"], check=True, capture_output=True, timeout=120)
        relay.wait_idle()
    after = command_calls(redis_port)
    served = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    got: dict[str, int] = {}
    for records in relay.connections:
        exchanges, connection = replay(records)
        assert dict(connection.counters) == {}
        for exchange in exchanges:
            assert exchange.complete
            got[exchange.operation] = got.get(exchange.operation, 0) + 1
    served.pop("INFO", None)  # the test's own question, not through the relay
    assert got == served
    assert got["SET"] == got["GET"] == got["INCR"] >= requests  # rounded up to whole pipelines per client
