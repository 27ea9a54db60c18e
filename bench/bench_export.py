"""Log export throughput: otelbpf's OTLP exporter vs the official OpenTelemetry SDK pipeline.

Both get the same 100,000 exec-like records (8 attributes) as raw data, turn them into their
own log records, encode them and send them over OTLP/HTTP protobuf, uncompressed, to the same
otelbpf receiver running in a separate process; the clock stops when everything is flushed
(acknowledged). Rounds alternate A/B; the table shows records/s per round and the medians.
Usage: .venv/bin/python bench/bench_export.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time

RECORDS = 100_000
BAR = 10.0


def exec_like_attributes(n: int, seed: int = 23) -> list[tuple[int, dict]]:
    """(time, attributes) for n exec events: few executables and containers, many pids."""
    rnd = random.Random(seed)
    binaries = ["bash", "sh", "ls", "cat", "grep", "python3", "curl", "git", "make", "gcc",
                "sed", "awk", "find", "ps", "sleep", "date", "nginx", "postgres", "redis-server"]
    args_pool = ["-l", "-a", "--color=auto", "-c", "install", "status", "-rf", "--help", "-v"]
    containers = [f"{rnd.getrandbits(256):064x}" for _ in range(12)] + [""]
    start = time.time_ns()
    out = []
    for i in range(n):
        name = rnd.choice(binaries)
        path = f"/usr/{'sbin' if name in ('nginx', 'postgres') else 'bin'}/{name}"
        args = [name] + [rnd.choice(args_pool) for _ in range(rnd.randint(0, 3))]
        if rnd.random() < 0.5:
            args.append(f"/tmp/job-{rnd.randint(0, 9999)}.txt")
        out.append((start + i * 1_000, {
            "process.pid": 10_000 + i,
            "process.parent_pid": rnd.randint(1, 9_000),
            "process.executable.path": path,
            "process.executable.name": name,
            "process.command_args": args,
            "process.exit.code": rnd.choice((0, 0, 0, 0, 1, 2, 127, 137)),
            "container.id": rnd.choice(containers),
            "user.id": rnd.choice((0, 0, 33, 999, 1000, 1001)),
        }))
    return out


def run_receiver() -> None:
    """Child process: an OTLP/HTTP receiver; answers 'count' on stdin with the log count."""
    from otelbpf.receiver.otlp import OtlpReceiver

    receiver = OtlpReceiver(grpc_port=None, keep=0).start()
    print(receiver.http_port, flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(receiver.item_count("logs"), flush=True)
    receiver.stop()


def run_ours(data: list[tuple[int, dict]], endpoint: str) -> float:
    from otelbpf.export.otlp import OtlpExporter
    from otelbpf.export.otlp_settings import OtlpSettings
    from otelbpf.signals.model import LogBatch, LogRecord, Resource, Severity
    from otelbpf.signals.registry import Registry

    registry = Registry()
    settings = OtlpSettings.from_env({}, {"endpoint": endpoint, "protocol": "http/protobuf",
                                          "queue_size": len(data)})
    exporter = OtlpExporter(settings, registry)
    resource = Resource.of({"host.name": platform.node(), "service.name": "otelbpf"})
    started = time.perf_counter()
    for i in range(0, len(data), 1024):  # sensors hand over decoded batches
        records = [LogRecord(t, "process.exec", Severity.INFO, None, attrs)
                   for t, attrs in data[i:i + 1024]]
        exporter.export_logs(LogBatch(resource, "otelbpf.process", records))
    assert exporter.flush(timeout=120)
    elapsed = time.perf_counter() - started
    exporter.shutdown()
    sent = registry.counter("otelbpf.exporter.sent").value(signal="logs", exporter="otlp")
    assert sent == len(data), f"ours sent {sent} of {len(data)}"
    return len(data) / elapsed


def run_sdk(data: list[tuple[int, dict]], endpoint: str) -> float:
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"host.name": platform.node()}))
    # A queue as large as the run so the SDK drops nothing; same batch size as ours.
    provider.add_log_record_processor(BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=f"{endpoint}/v1/logs"),
        max_queue_size=len(data), max_export_batch_size=8192, schedule_delay_millis=200,
    ))
    logger = provider.get_logger("otelbpf.process")
    started = time.perf_counter()
    for t, attrs in data:
        logger.emit(timestamp=t, observed_timestamp=t, severity_number=SeverityNumber.INFO,
                    severity_text="INFO", attributes=attrs, event_name="process.exec")
    assert provider.force_flush(timeout_millis=300_000)
    elapsed = time.perf_counter() - started
    provider.shutdown()
    return len(data) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=RECORDS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver()
        return

    data = exec_like_attributes(args.records)
    child = subprocess.Popen([sys.executable, __file__, "--receiver"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    endpoint = f"http://127.0.0.1:{child.stdout.readline().strip()}"

    def received() -> int:
        child.stdin.write("count\n")
        child.stdin.flush()
        return int(child.stdout.readline())

    pipelines = {"otelbpf OtlpExporter": run_ours, "opentelemetry-sdk 1.x BatchLogRecordProcessor": run_sdk}
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    try:
        for _ in range(args.rounds):
            for name, run in pipelines.items():
                before = received()
                rates[name].append(run(data, endpoint))
                got = received() - before
                assert got == len(data), f"{name}: receiver got {got} of {len(data)} records"
    finally:
        child.stdin.close()
        child.wait(timeout=10)

    from opentelemetry.sdk.version import __version__ as sdk_version

    names = list(pipelines)
    medians = {name: statistics.median(rates[name]) for name in names}
    ratio = medians[names[0]] / medians[names[1]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import header as section_header

    print(section_header("OTLP log export: otelbpf vs the OpenTelemetry SDK"))
    print(f"{args.records:,} exec-like log records (8 attributes), OTLP/HTTP protobuf, "
          f"uncompressed, to a local receiver in another process; {platform.machine()}, "
          f"Python {platform.python_version()}, opentelemetry-sdk {sdk_version}\n")
    header = " | ".join(f"round {i + 1}" for i in range(args.rounds))
    print(f"| pipeline | {header} | median records/s |")
    print("|---|" + "---:|" * (args.rounds + 1))
    for name in names:
        cells = " | ".join(f"{r:,.0f}" for r in rates[name])
        label = name.replace("1.x", sdk_version)
        print(f"| {label} | {cells} | {medians[name]:,.0f} |")
    print(f"\nratio (median ours / median SDK): {ratio:.1f}x; "
          f"bar >= {BAR:.0f}x {'MET' if ratio >= BAR else 'NOT met'}")


if __name__ == "__main__":
    main()
