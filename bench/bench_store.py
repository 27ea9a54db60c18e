"""Local store: span ingest rate on one core, and the RED query over 10 million spans.

Ingest goes through Store.write (the writer's flush path: numpy columns, one transaction per
flush) into a store file on disk. Chunks of synthetic spans are generated once and
re-appended with shifted times, so trace ids repeat across chunks (the RED query does not
look at them). Also measured: decoding OTLP trace requests into rows, the per-span Python
step that OTLP receipt adds before a flush.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, median, peak_rss_mb, table  # noqa: E402

from otelbpf.store import Store, queries  # noqa: E402
from otelbpf.store.otlp_rows import span_rows  # noqa: E402
from otelbpf.store.schema import SPANS  # noqa: E402

SPANS_TOTAL = 10_000_000
CHUNK = 200_000
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
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=SPANS_TOTAL)
    parser.add_argument("--rounds", type=int, default=5, help="RED query repetitions")
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
