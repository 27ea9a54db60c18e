"""Rows the store derives: service-map edges and flows from the network metrics, profile
samples from the profile sensor; the queries and UI API over them; older store files."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter

import duckdb
import pytest

from otelbpf.pipeline.service_map import EDGE_COLUMNS, FLOW_COLUMNS, is_loopback
from otelbpf.profiling.model import Profile, Stack
from otelbpf.signals.model import ProfileBatch, Resource
from otelbpf.signals.otlp import metrics_request
from otelbpf.signals.registry import Registry
from otelbpf.store import Store, queries
from otelbpf.store.profile_rows import profile_rows
from otelbpf.store.sink import StoreSink
from otelbpf.store.writer import StoreWriter
from otelbpf.symbols.symbolizer import Frame
from otelbpf.ui import UiServer

RESOURCE = Resource.of({"service.name": "otelbpf", "host.name": "test"})


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store.duckdb")
    yield s
    s.close()


def network_registry() -> tuple[Registry, dict]:
    """Counters named and labelled as the network sensor makes them."""
    registry = Registry()
    c = {"conn": registry.counter("otelbpf.network.tcp.connections", "", "{connection}"),
         "failed": registry.counter("otelbpf.network.tcp.failed_connections", "", "{connection}"),
         "io": registry.counter("otelbpf.network.io", "", "By")}
    return registry, c


def client(process, peer, port, name=None):
    attrs = {"process.executable.name": process, "network.transport": "tcp", "network.type": "ipv4",
             "otelbpf.network.role": "client", "server.port": port, "network.peer.address": peer}
    if name:
        attrs["server.address"] = name
    return attrs


def server(process, port, client_address):
    return {"process.executable.name": process, "network.transport": "tcp", "network.type": "ipv4",
            "otelbpf.network.role": "server", "server.port": port, "client.address": client_address}


def test_edges_and_flows_from_cumulative_network_metrics(store):
    registry, c = network_registry()
    writer = StoreWriter(store, Registry())
    # Loopback: curl -> the process listening on 8080; same host by its own address; a remote name.
    c["conn"].add(3, client("curl", "127.0.0.1", 8080))
    c["conn"].add(3, server("webd", 8080, "127.0.0.1"))
    c["io"].add(300, {**client("curl", "127.0.0.1", 8080), "network.io.direction": "transmit"})
    c["io"].add(9000, {**client("curl", "127.0.0.1", 8080), "network.io.direction": "receive"})
    c["io"].add(9000, {**server("webd", 8080, "127.0.0.1"), "network.io.direction": "transmit"})
    c["conn"].add(1, client("worker", "10.1.2.3", 5432))
    c["conn"].add(1, server("postgres", 5432, "10.1.2.3"))
    c["conn"].add(2, client("curl", "93.184.215.14", 443, "example.com"))
    c["failed"].add(1, client("curl", "127.0.0.1", 9999))
    writer.handle("metrics", metrics_request([registry.snapshot(RESOURCE, "otelbpf.sensors.network")]))
    # The next export carries the same cumulative values plus growth: only the growth is new.
    writer.handle("metrics", metrics_request([registry.snapshot(RESOURCE, "otelbpf.sensors.network")]))
    c["conn"].add(2, client("curl", "127.0.0.1", 8080))
    c["conn"].add(2, server("webd", 8080, "127.0.0.1"))
    writer.handle("metrics", metrics_request([registry.snapshot(RESOURCE, "otelbpf.sensors.network")]))
    writer.flush()

    edges = {(r[0], r[1]): r[2:] for r in queries.service_map(store).rows}
    assert edges[("curl", "webd")][:5] == ("tcp", 5, 0, 300, 9000)
    assert edges[("worker", "postgres")][:5] == ("tcp", 1, 0, 0, 0)  # the host's own address
    assert edges[("curl", "example.com:443")][:5] == ("tcp", 2, 0, 0, 0)
    assert edges[("curl", "127.0.0.1:9999")][:5] == ("tcp", 0, 1, 0, 0)  # refused: nobody listens
    assert len(edges) == 4  # server-side series name listeners; they are no edges of their own
    assert store.query("SELECT count(*) FROM service_edges").rows == [(5,)]  # 4 + the growth row

    talkers = {r[0]: r[2:5] for r in queries.top_talkers(store).rows}
    assert talkers == {"curl": (300, 9000, 9300), "webd": (9000, 0, 9000)}
    assert store.query("SELECT count(*) FROM flows").rows == [(2,)]


def test_a_restarted_sender_counts_from_zero_again(store):
    writer = StoreWriter(store, Registry())
    for _ in range(2):  # two agent runs: new registries, new start times
        registry, c = network_registry()
        c["conn"].add(4, client("curl", "127.0.0.1", 80))
        writer.handle("metrics", metrics_request([registry.snapshot(RESOURCE, "n")]))
        time.sleep(0.002)
    writer.flush()
    assert store.query("SELECT sum(requests) FROM service_edges").rows == [(8,)]


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com") and not is_loopback("")


def hot_profile(t0: int) -> Profile:
    main = Frame("main", "/bin/hot", 0x10)
    outer, leaf = Frame("outer_caller", "/bin/hot", 0x20), Frame("hot_leaf_spin", "/bin/hot", 0x30)
    kernel = Frame("asm_sysvec_apic_timer_interrupt", "[kernel]", 0x40, kernel=True)
    counts = Counter({Stack(42, "hot", (leaf, outer, main)): 90, Stack(42, "hot", (kernel, leaf, outer, main)): 5,
                      Stack(7, "idle;x", (main,)): 5})
    return Profile(t0, 10**9, 19, counts)


def test_profile_samples_rows_and_flame_query(store):
    t0 = time.time_ns()
    writer = StoreWriter(store, Registry())
    StoreSink(writer).export_profiles(ProfileBatch(Resource.of({"service.name": "otelbpf"}), "p", hot_profile(t0)))
    writer.flush()
    assert store.query("SELECT DISTINCT service FROM profile_samples").rows == [("otelbpf",)]
    rows = store.query("SELECT pid, process_name, stack, samples FROM profile_samples ORDER BY samples DESC, pid").rows
    assert rows == [(42, "hot", "main;outer_caller;hot_leaf_spin", 90),
                    (7, "idle;x", "main", 5),
                    (42, "hot", "main;outer_caller;hot_leaf_spin;asm_sysvec_apic_timer_interrupt_[k]", 5)]
    flame = dict(queries.flame(store, 60).rows)
    assert flame["hot;main;outer_caller;hot_leaf_spin"] == 90
    assert sum(flame.values()) == 100
    assert queries.flame(store, 60, end_ago_s=60).rows == []  # the window before: empty
    assert dict(queries.flame(store, None, process="idle;x").rows) == {"idle:x;main": 5}
    assert profile_rows(Profile(t0, 1, 19))["stack"] == []


def test_a_full_store_queue_refuses_a_profile_and_counts_it(store):
    registry = Registry()
    writer = StoreWriter(store, registry, max_pending_rows=1)
    StoreSink(writer).export_profiles(ProfileBatch(Resource(), "p", hot_profile(time.time_ns())))  # 3 rows > 1
    assert registry.counter("otelbpf.store.rows_refused").value(table="profile_samples") == 3


def test_ui_api_serves_the_map_and_the_flame_graph(store):
    registry, c = network_registry()
    writer = StoreWriter(store, Registry())
    c["conn"].add(2, client("curl", "127.0.0.1", 8080))
    c["conn"].add(2, server("webd", 8080, "127.0.0.1"))
    writer.handle("metrics", metrics_request([registry.snapshot(RESOURCE, "n")]))
    StoreSink(writer).export_profiles(ProfileBatch(Resource(), "p", hot_profile(time.time_ns())))
    writer.flush()
    ui = UiServer(store).start()
    try:
        def get(path):
            request = urllib.request.Request(ui.base_url + path, headers={"Authorization": f"Bearer {ui.token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        edges = get("/api/service_map?window=3600")
        assert [r[:4] for r in edges["rows"]] == [["curl", "webd", "tcp", 2]]
        flame = get("/api/flame?window=3600")
        assert ["hot;main;outer_caller;hot_leaf_spin", 90] in flame["rows"]
        assert get("/api/flame?window=3600&end_ago=3600")["rows"] == []
        for page in ("/map", "/flame"):
            request = urllib.request.Request(ui.base_url + page, headers={"Authorization": f"Bearer {ui.token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert b"/static/app.js" in response.read()
    finally:
        ui.stop()


def test_an_older_store_file_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE service_edges (time_unix_nano BIGINT, client VARCHAR, server VARCHAR, protocol VARCHAR, "
                "requests BIGINT, errors BIGINT, duration_sum_ns BIGINT, attributes JSON)")
    con.execute("INSERT INTO service_edges VALUES (1, 'a', 'b', 'tcp', 1, 0, 0, '{}')")
    con.close()
    store = Store.open(path)
    try:
        registry, c = network_registry()
        c["conn"].add(1, client("curl", "127.0.0.1", 80))
        c["io"].add(10, {**client("curl", "127.0.0.1", 80), "network.io.direction": "transmit"})
        writer = StoreWriter(store, Registry())
        writer.handle("metrics", metrics_request([registry.snapshot(RESOURCE, "n")]))
        writer.flush()
        assert store.query("SELECT client, bytes_sent FROM service_edges ORDER BY time_unix_nano").rows[0] == ("a", None)
        assert store.query("SELECT sum(bytes_sent) FROM service_edges").rows == [(10,)]
    finally:
        store.close()


def test_the_service_map_rows_are_the_store_tables_columns():
    from otelbpf.store.schema import FLOWS, SERVICE_EDGES
    assert list(FLOW_COLUMNS) == FLOWS.column_names and list(EDGE_COLUMNS) == SERVICE_EDGES.column_names
