"""Local store: span ingest rate on one core, and the RED query over 10 million spans.

Ingest goes through Store.write (the writer's flush path: numpy columns, one transaction per
flush) into a store file on disk. Chunks of synthetic spans are generated once and
re-appended with shifted times, so trace ids repeat across chunks (the RED query does not
look at them). Also measured: decoding OTLP trace requests into rows, the per-span Python
step that OTLP receipt adds before a flush; and the embedded default's whole path for the
HTTP sensor's spans, A/B/C in one run: span columns as the sensor emits them, row batches
(StoreSink's rows -> Store.write), and the OTLP round trip it replaced (encode -> decode with opentelemetry-proto -> rows ->
Store.write), medians of rounds alternating between the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from common import header, median, peak_rss_mb, table
from otelbpf.signals.model import Resource, SpanBatch, SpanColumns, SpanKind, SpanRecord
from otelbpf.signals.otlp import encode_traces_request
from otelbpf.store import Store, queries
from otelbpf.store.otlp_rows import span_rows
from otelbpf.store.schema import SPANS
from otelbpf.store.sink import StoreSink
from otelbpf.store.writer import StoreWriter

SPANS_TOTAL = 10_000_000
CHUNK = 200_000
FLUSH_EVERY = 50  # span batches of 2,000 per store flush in the embedded-path measure
SERVICES = [f"svc-{i}" for i in range(12)]
ROUTES = [f"/api/v1/resource{i}/{{id}}" for i in range(40)]
METHODS = ["GET", "POST", "PUT", "DELETE"]


def synthetic_chunk(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    def pick(values: list, size: int) -> np.ndarray:
        return np.array(values, dtype=object)[rng.integers(0, len(values), size)]

    start = time.time_ns() - 3_600_000_000_000 + np.sort(rng.integers(0, 3_600_000_000_000, n))
    duration = rng.lognormal(mean=15.0, sigma=1.2, size=n).astype(np.int64)  # median ~3 ms
    status = rng.choice([200, 200, 200, 200, 201, 404, 500], n)
    route_idx = rng.integers(0, len(ROUTES), n)
    ids = rng.integers(0, 2**63, (n, 3), dtype=np.int64)
    return {
        "time_unix_nano": start, "end_unix_nano": start + duration, "duration_ns": duration,
        "trace_id": np.array([f"{a:032x}" for a in ids[:, 0]], dtype=object),
        "span_id": np.array([f"{a:016x}" for a in ids[:, 1]], dtype=object),
        "parent_span_id": np.array([f"{a:016x}" for a in ids[:, 2]], dtype=object),
        "service": pick(SERVICES, n), "name": np.array(ROUTES, dtype=object)[route_idx],
        "kind": pick(["server", "server", "server", "client", "internal"], n),
        "status_code": np.where(status >= 500, "error", "unset").astype(object),
        "status_message": np.full(n, None, dtype=object), "http_method": pick(METHODS, n),
        "http_route": np.array(ROUTES, dtype=object)[route_idx], "http_status": status.astype(object),
        "scope": np.full(n, "bench", dtype=object),
        "attributes": np.array([json.dumps({"http.response.status_code": int(s)}) for s in status], dtype=object),
        "resource": np.full(n, '{"service.name":"bench"}', dtype=object),
    }


def trace_request(n: int):
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "bench"
    ss = rs.scope_spans.add()
    for i in range(n):
        s = ss.spans.add(trace_id=i.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name="GET /x",
                         kind=2, start_time_unix_nano=10**18 + i, end_time_unix_nano=10**18 + i + 5000)
        s.attributes.add(key="http.route").value.string_value = "/x"
        s.attributes.add(key="http.response.status_code").value.int_value = 200
    return req


def http_span_batches(n: int, per_batch: int = 2_000) -> list[SpanBatch]:
    """Spans as the HTTP sensor makes them: 40 routes x 3 statuses on keep-alive
    connections, each exchange's attribute set shared read-only among its spans."""
    shared = [MappingProxyType({
        "http.request.method": "GET", "url.scheme": "http", "network.protocol.version": "1.1",
        "network.peer.address": "127.0.0.1", "network.peer.port": 40000 + r, "server.address": "127.0.0.1",
        "server.port": 8080, "url.path": route.replace("{id}", "7"), "http.route": route,
        "http.response.status_code": status, "user_agent.original": "wrk"})
        for r, route in enumerate(ROUTES) for status in (200, 404, 500)]
    resource = Resource.of({"service.name": "nginx", "host.name": "bench", "process.pid": 4242,
                            "process.executable.name": "nginx"})
    start = time.time_ns()
    spans = [SpanRecord(i.to_bytes(16, "big"), (i + 1).to_bytes(8, "big"), f"GET {ROUTES[i % 40]}", SpanKind.SERVER,
                        start + i * 1000, start + i * 1000 + 250_000, attributes=shared[i % len(shared)])
             for i in range(n)]
    return [SpanBatch(resource, "otelbpf.sensors.http", spans[i:i + per_batch]) for i in range(0, n, per_batch)]


def embedded_path(tmp: str, spans: int, rounds: int) -> list[list]:
    """Spans/s of the two embedded-default paths into a store file, one thread, A/B by round;
    the writer flushes every FLUSH_EVERY batches (100,000 spans: a second of a busy server)."""
    batches = http_span_batches(spans)
    columns = [SpanColumns.from_batch(b) for b in batches]  # as the HTTP sensor emits them, enriched
    rates: dict[str, list[float]] = {"columns": [], "in process": [], "OTLP round trip": []}

    def in_columns(writer: StoreWriter) -> None:
        sink = StoreSink(writer)
        for i, batch in enumerate(columns, 1):
            sink.export_spans(batch)
            if i % FLUSH_EVERY == 0:
                writer.flush()

    def in_process(writer: StoreWriter) -> None:
        sink = StoreSink(writer)
        for i, batch in enumerate(batches, 1):
            sink.export_spans(batch)
            if i % FLUSH_EVERY == 0:
                writer.flush()

    def round_trip(writer: StoreWriter) -> None:
        for i, batch in enumerate(batches, 1):
            writer.handle("traces", ExportTraceServiceRequest.FromString(encode_traces_request([batch])))
            if i % FLUSH_EVERY == 0:
                writer.flush()

    for r in range(rounds):
        order = [("columns", in_columns), ("in process", in_process), ("OTLP round trip", round_trip)]
        for name, path in order[r % 3:] + order[:r % 3]:
            writer = StoreWriter(Store.open(Path(tmp) / f"embedded-{r}-{name[:2]}.duckdb", threads=1),
                                 max_pending_rows=10 * FLUSH_EVERY * len(batches[0].spans))
            started = time.process_time()
            path(writer)
            writer.flush()
            rates[name].append(spans / (time.process_time() - started))
            writer.close()
    c, a, b = median(rates["columns"]), median(rates["in process"]), median(rates["OTLP round trip"])
    return [["embedded default: HTTP span columns -> store, in process (CPU time, 1 thread, median of "
             f"{rounds})", f"{spans:,} spans", f"{c:,.0f} spans/s", ">= 500,000 spans/s",
             "pass" if c >= 500_000 else "MISSED"],
            ["the same from row batches (SpanRecord objects)", f"{spans:,} spans", f"{a:,.0f} spans/s",
             f"columns: {c / a:.1f}x", ""],
            ["the same through the OTLP round trip it replaced", f"{spans:,} spans", f"{b:,.0f} spans/s",
             f"columns: {c / b:.1f}x", ""]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=SPANS_TOTAL)
    parser.add_argument("--rounds", type=int, default=5, help="RED query repetitions")
    parser.add_argument("--embedded-spans", type=int, default=200_000)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    chunks = [synthetic_chunk(rng, CHUNK) for _ in range(2)]
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        # One thread: the ingest bar is per core.
        store = Store.open(Path(tmp) / "bench.duckdb", memory_limit="4GB", threads=1)
        written, shift, elapsed = 0, 0, 0.0
        while written < args.spans:
            chunk = dict(chunks[(written // CHUNK) % 2])
            n = min(CHUNK, args.spans - written)
            if n < CHUNK:
                chunk = {k: v[:n] for k, v in chunk.items()}
            for col in ("time_unix_nano", "end_unix_nano"):
                chunk[col] = chunk[col] + shift
            started = time.perf_counter()
            store.write([(SPANS, chunk)])
            elapsed += time.perf_counter() - started
            written, shift = written + n, shift + 1
        rows_out.append(["ingest (Store.write, 200k-row transactions, 1 thread)", f"{written:,} spans",
                         f"{written / elapsed:,.0f} rows/s", ">= 500,000 rows/s",
                         "pass" if written / elapsed >= 500_000 else "FAIL"])
        store.close()

        store = Store.open(Path(tmp) / "bench.duckdb", memory_limit="4GB", threads=2)
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            result = queries.red(store)
            times.append(time.perf_counter() - started)
        count = store.query("SELECT count(*) FROM spans").rows[0][0]
        red_rows = len(result.rows)
        rows_out.append([f"RED query (median of {args.rounds}, 2 threads; {red_rows} service/route rows)",
                         f"{count:,} spans", f"{median(times):.3f} s", "<= 1 s",
                         "pass" if median(times) <= 1.0 else "FAIL"])
        store.close()
        rows_out += embedded_path(tmp, args.embedded_spans, args.rounds)

    req = trace_request(20_000)
    started = time.perf_counter()
    span_rows(req)
    decode = 20_000 / (time.perf_counter() - started)
    rows_out.append(["OTLP ExportTraceServiceRequest -> rows (Python, per span)", "20,000 spans",
                     f"{decode:,.0f} spans/s", "(no bar)", ""])

    print(header("store: local DuckDB ingest and RED query"))
    print(table(["step", "data", "result", "bar", ""], rows_out))
    print(f"Peak RSS of the benchmark process: {peak_rss_mb():,.0f} MB. The 2-core machine is shared "
          "with other engineers' tests, so figures can vary between runs.")


if __name__ == "__main__":
    main()
