"""OTLP span encoding, per span: HTTP server spans as a producer hands them over.

A: span columns (signals.model.SpanColumns) with one shape per distinct request and the peer
port as a per-span int column, encoded with no Python per span (signals.otlp_spans).
B: the same spans as row objects (SpanRecord with an attribute dict each), which the encoder
first turns into columns (SpanColumns.from_batch), as every row batch is.
Rounds alternate A/B on the same spans; the table shows µs per span and the medians.
Usage: .venv/bin/python bench/bench_span_encoding.py [--spans N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table
from otelbpf.signals.model import Resource, SpanColumns, SpanKind, SpanShape
from otelbpf.signals.otlp import encode_traces_request

ROUTES = 7  # distinct requests among the spans


def columns(n: int) -> SpanColumns:
    rng = np.random.default_rng(23)
    shapes = [SpanShape(f"GET /r{r}", SpanKind.SERVER, MappingProxyType({
        "http.request.method": "GET", "url.scheme": "http", "network.protocol.version": "1.1",
        "network.peer.address": "127.0.0.1", "url.path": f"/r{r}", "http.route": f"/r{r}",
        "server.address": "127.0.0.1", "server.port": 8080, "client.address": "127.0.0.1",
        "user_agent.original": "wrk", "http.response.status_code": 200})) for r in range(ROUTES)]
    start = np.uint64(1_764_000_000 * 10**9) + np.arange(n, dtype=np.uint64) * np.uint64(1000)
    return SpanColumns(
        "otelbpf.sensors.http", shapes, rng.integers(0, ROUTES, n).astype(np.int32),
        rng.integers(0, 256, (n, 16), dtype=np.uint8), rng.integers(0, 256, (n, 8), dtype=np.uint8),
        np.zeros((n, 8), np.uint8), start, start + np.uint64(50_000), np.full(n, 4242, np.uint32),
        {"network.peer.port": rng.integers(32768, 61000, n)},
        [Resource.of({"service.name": "nginx", "process.pid": 4242})], np.zeros(n, np.int32))


def per_span(batches: list, n: int) -> float:
    started = time.perf_counter()
    encode_traces_request(batches)
    return (time.perf_counter() - started) * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    cols = columns(args.spans)
    rows = cols.to_batches()
    a_runs, b_runs = [], []
    for _ in range(args.rounds):
        a_runs.append(per_span([cols], args.spans))
        b_runs.append(per_span(rows, args.spans))
    print(header("span encoding"))
    print(f"{args.spans:,} HTTP server spans of {ROUTES} distinct requests, one resource; µs per span.\n")
    print(table(["round", "A: columns", "B: rows -> columns"],
                [[i + 1, a, b] for i, (a, b) in enumerate(zip(a_runs, b_runs))]
                + [["median", statistics.median(a_runs), statistics.median(b_runs)]]))


if __name__ == "__main__":
    main()
