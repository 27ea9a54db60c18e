"""The local store: OTLP rows in, exact rows out, batching, retention, errors, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otelbpf.agent import receiver_handler
from otelbpf.receiver.otlp import Refusal
from otelbpf.signals.model import LogBatch, LogRecord, Resource, Severity
from otelbpf.signals.otlp import logs_request, metrics_request
from otelbpf.signals.registry import Registry
from otelbpf.store import QueryError, Store, StoreError, queries, retention
from otelbpf.store.client import check_read_only
from otelbpf.store.schema import LOGS, TABLES
from otelbpf.store.writer import StoreFull, StoreWriter

RESOURCE = Resource.of({"service.name": "otelbpf", "host.name": "test"})


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store.duckdb")
    yield s
    s.close()


def process_batch(n: int, t0: int) -> tuple[LogBatch, dict[int, tuple[list[str], int]]]:
    """n execs and exits with known argv and exit codes, as the process sensor reports them."""
    records, truth = [], {}
    for i in range(n):
        pid, argv, code = 40_000 + i, ["/bin/sh", "-c", f"exit {(7 * i + 1) % 256}", f"w{i}"], (7 * i + 1) % 256
        truth[pid] = (argv, code)
        common = {"process.pid": pid, "process.parent_pid": 1, "process.executable.name": "sh",
                  "otelbpf.process.exec_id": f"boot:{t0}:{pid}"}
        records.append(LogRecord(t0 + i, "process.exec", attributes=common | {"process.command_args": argv}))
        records.append(LogRecord(t0 + 1000 + i, "process.exit", Severity.WARN if code else Severity.INFO,
                                 attributes=common | {"process.exit.code": code, "process.lifetime": 0.5}))
    return LogBatch(RESOURCE, "otelbpf.process", records), truth


def test_process_workload_gives_exactly_those_rows(store):
    writer = StoreWriter(store)
    batch, truth = process_batch(23, time.time_ns())
    writer.handle("logs", logs_request([batch]))
    assert writer.flush() == 46
    got = queries.process_lifecycles(store, limit=1000)
    rows = [dict(zip(got.columns, r)) for r in got.rows]
    assert len(rows) == 23
    assert {r["pid"]: (r["args"].split(" "), r["exit_code"]) for r in rows} == \
        {pid: (argv[:2] + argv[2].split(" ") + argv[3:], code) for pid, (argv, code) in truth.items()}
    argv_col = store.query("SELECT pid, command_args FROM process_events WHERE event_name = 'process.exec'").rows
    assert {pid: list(args) for pid, args in argv_col} == {pid: argv for pid, (argv, _) in truth.items()}
    top = queries.top_processes(store)
    assert top.rows[0][:4] == ("sh", 23, 23, sum(1 for _, c in truth.values() if c))
    severities = store.query("SELECT severity_text, count(*) FROM logs GROUP BY 1 ORDER BY 1").rows
    assert dict(severities) == {"INFO": 23 + sum(1 for _, c in truth.values() if not c),
                                "WARN": sum(1 for _, c in truth.values() if c)}


def test_spans_from_the_official_sdk_encoder(store):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "GET", "http.route": "/items/{id}",
                                                  "http.response.status_code": 503}) as root:
        with tracer.start_as_current_span("SELECT items", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, "timeout"))
    writer = StoreWriter(store)
    writer.handle("traces", encode_spans(exporter.get_finished_spans()))
    writer.flush()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    spans = queries.trace_spans(store, trace_id)
    by_name = {r[3]: dict(zip(spans.columns, r)) for r in spans.rows}
    assert set(by_name) == {"GET /items/{id}", "SELECT items"}
    server, client = by_name["GET /items/{id}"], by_name["SELECT items"]
    assert server["parent_span_id"] == "" and client["parent_span_id"] == server["span_id"]
    assert (server["kind"], server["http_method"], server["http_route"], server["http_status"]) == \
        ("server", "GET", "/items/{id}", 503)
    assert (client["kind"], client["status_code"], client["status_message"]) == ("client", "error", "timeout")
    listed = queries.traces(store)
    assert [(r[0], r[1], r[2], r[6], r[7]) for r in listed.rows] == [(trace_id, "shop", "GET /items/{id}", 2, 1)]
    red = queries.red(store)
    assert [r[:4] for r in red.rows] == [("shop", "/items/{id}", 1, 1)]


def test_metric_points_of_every_kind(store):
    registry = Registry()
    registry.counter("c", "a counter").add(5, sensor="process")
    registry.gauge("g", "a gauge", "1", lambda: [({"k": "v"}, 2.5)])
    registry.histogram("h", "a histogram", "s", [0.1, 1.0]).record(0.5)
    writer = StoreWriter(store, Registry())
    writer.handle("metrics", metrics_request([registry.snapshot(RESOURCE, "test")]))
    writer.flush()
    rows = store.query("SELECT name, kind, value, count, sum, bounds, bucket_counts, attributes->>'sensor' "
                       "FROM metric_points ORDER BY name").rows
    assert rows == [("c", "sum", 5.0, 0, None, None, None, "process"),
                    ("g", "gauge", 2.5, 0, None, None, None, None),
                    ("h", "histogram", None, 1, 0.5, [0.1, 1.0], [0, 1, 0], None)]


def test_writes_are_batched_until_flush(store):
    writer = StoreWriter(store, flush_interval=3600)
    batch, _ = process_batch(5, time.time_ns())
    writer.handle("logs", logs_request([batch]))
    writer.handle("logs", logs_request([batch]))
    assert store.query("SELECT count(*) FROM logs").rows == [(0,)]
    assert writer.flush() == 20
    assert store.query("SELECT count(*) FROM logs").rows == [(20,)]


def test_full_queue_refuses_with_a_retry_hint(store):
    writer = StoreWriter(store, max_pending_rows=15)
    batch, _ = process_batch(5, time.time_ns())
    writer.handle("logs", logs_request([batch]))
    with pytest.raises(StoreFull) as refused:
        writer.handle("logs", logs_request([batch]))
    assert refused.value.retry_after >= 1
    with pytest.raises(Refusal) as refused_to_sender:  # what the receiver answers an SDK with
        receiver_handler(writer)("logs", logs_request([batch]))
    assert refused_to_sender.value.http_status == 503 and refused_to_sender.value.retry_after >= 1
    writer.flush()
    writer.handle("logs", logs_request([batch]))  # room again after the flush


def test_flush_thread_writes_within_the_interval(store):
    writer = StoreWriter(store, flush_interval=0.1).start()
    try:
        batch, _ = process_batch(3, time.time_ns())
        writer.handle("logs", logs_request([batch]))
        deadline = time.monotonic() + 5
        while store.query("SELECT count(*) FROM logs").rows[0][0] < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.query("SELECT count(*) FROM logs").rows == [(6,)]
    finally:
        writer._stop.set()


def test_retention_by_age(store):
    now = time.time_ns()
    writer = StoreWriter(store)
    for age_s in (7200, 10):
        batch, _ = process_batch(2, now - age_s * 10**9)
        writer.handle("logs", logs_request([batch]))
    writer.flush()
    retention.apply(store, max_age_s=3600, max_bytes=None, now_ns=now)
    assert store.query("SELECT count(*) FROM logs WHERE time_unix_nano < ?", [now - 3600 * 10**9]).rows == [(0,)]
    assert store.query("SELECT count(*) FROM logs").rows == [(4,)]


def test_retention_by_size_drops_the_oldest_first(store):
    # DuckDB frees a row group (122,880 rows) once all its rows are deleted: use several.
    now, n = time.time_ns(), 500_000
    columns = {c: [None] * n for c in LOGS.column_names}
    columns["time_unix_nano"] = [now - (n - i) * 10**6 for i in range(n)]  # one per ms, oldest first
    columns["attributes"] = [f'{{"i":{i},"pad":"{i * 7919}"}}' for i in range(n)]
    store.write([(LOGS, columns)])
    store.execute("CHECKPOINT")
    before = retention.used_bytes(store)
    retention.apply(store, max_age_s=None, max_bytes=before // 2)
    left, oldest = store.query("SELECT count(*), min(time_unix_nano) FROM logs").rows[0]
    assert 0 < left < n
    assert retention.used_bytes(store) <= before // 2
    assert oldest > columns["time_unix_nano"][0]  # what went was the oldest
    newest = store.query("SELECT max(time_unix_nano) FROM logs").rows[0][0]
    assert newest == columns["time_unix_nano"][-1]


def test_sql_errors_are_one_line(store):
    for sql, expected in (("SELEC 1", "syntax error"), ("SELECT * FROM nosuch", "nosuch"),
                          ("SELECT nosuch FROM logs", "nosuch")):
        with pytest.raises(QueryError) as error:
            store.query(sql)
        assert "\n" not in str(error.value) and expected in str(error.value)


def test_live_store_accepts_only_reads():
    check_read_only("SELECT 1; EXPLAIN SELECT 2")
    for sql in ("DELETE FROM logs", "SELECT 1; DROP TABLE logs", "ATTACH 'x.db'", "COPY logs TO 'x.csv'", ""):
        with pytest.raises(QueryError):
            check_read_only(sql)


def test_every_table_exists_and_a_read_only_store_refuses_writes(tmp_path):
    path = tmp_path / "s.duckdb"
    Store.open(path).close()
    reader = Store.open(path, read_only=True)
    try:
        names = {r[0] for r in reader.query("SELECT table_name FROM information_schema.tables").rows}
        assert set(TABLES) | {"process_events"} <= names
        with pytest.raises(QueryError, match="read-only"):
            reader.query("DELETE FROM logs")
    finally:
        reader.close()
    with pytest.raises(StoreError, match="no store at"):
        Store.open(tmp_path / "missing.duckdb", read_only=True)


CRASHING_WRITER = textwrap.dedent("""
    import sys, time
    from otelbpf.store import Store
    from otelbpf.store.schema import LOGS
    store = Store.open(sys.argv[1])
    for i in range(100_000):  # bounded; the test kills it long before
        rows = 1000
        cols = {c: [None] * rows for c in LOGS.column_names}
        cols["time_unix_nano"] = [i * rows + j for j in range(rows)]
        cols["attributes"] = ['{"batch": %d}' % i] * rows
        store.write([(LOGS, cols)])
        print(i + 1, flush=True)
""")


def test_kill_9_mid_write_keeps_every_committed_batch(tmp_path):
    path = tmp_path / "crash.duckdb"
    writer = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed, deadline = 0, time.monotonic() + 60
    try:
        while committed < 30 and time.monotonic() < deadline:
            committed = int(writer.stdout.readline() or committed)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
    assert committed >= 30
    for read_only in (True, False):  # a reader replays the log; so does the agent reopening it
        store = Store.open(path, read_only=read_only)
        rows, batches = store.query("SELECT count(*), count(DISTINCT attributes->>'batch') FROM logs").rows[0]
        per_batch = store.query("SELECT DISTINCT count(*) FROM logs GROUP BY attributes->>'batch'").rows
        store.close()
        assert batches >= committed and rows == batches * 1000  # no half transaction
        assert per_batch == [(1000,)]


def test_store_and_ui_settings_are_validated():
    from otelbpf.config import ConfigError, load_config

    config = load_config(None, {"OTELBPF_STORE__FLUSH_INTERVAL": "0.5"}, {"store.path": "/tmp/x.duckdb",
                                                                           "ui": "127.0.0.1:0"})
    assert (config.store.path, config.store.flush_interval, config.ui) == ("/tmp/x.duckdb", 0.5, "127.0.0.1:0")
    with pytest.raises(ConfigError, match="flag --ui: ui: the UI serves loopback only"):
        load_config(None, {}, {"ui": "0.0.0.0:4380"})
    with pytest.raises(ConfigError, match=r"store\.retention_bytes: must be >="):
        load_config(None, {"OTELBPF_STORE__RETENTION_BYTES": "1000"}, {})
