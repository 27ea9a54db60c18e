from __future__ import annotations

import io
import json

from otelbpf.export.console import ConsoleSink, JsonLinesSink
from otelbpf.export.fanout import FanoutSink
from otelbpf.signals.model import LogBatch, LogRecord, Resource, Severity
from otelbpf.signals.registry import Registry

BATCH = LogBatch(
    Resource.of({"host.name": "n"}),
    "otelbpf.process",
    [LogRecord(1_700_000_000_123_456_789, "process.exec", Severity.WARN, None,
               {"process.pid": 42, "process.executable.name": "bash", "process.command_args": ["bash", "-c", "echo hi"],
                "raw": b"\x01\x02"})],
)


def test_json_lines_one_object_per_record_and_point(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path=str(path))
    sink.export_logs(BATCH)
    registry = Registry()
    registry.counter("c").add(23, a="b")
    registry.histogram("h", "", "s", [1.0]).record(0.5)
    sink.export_metrics(registry.snapshot(Resource(), "s"))
    sink.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    log = lines[0]
    assert log["time"] == "2023-11-14T22:13:20.123456789Z" and log["severity"] == "WARN"
    assert log["attributes"]["process.command_args"] == ["bash", "-c", "echo hi"]
    assert log["attributes"]["raw"] == "0102" and log["resource"] == {"host.name": "n"}
    assert lines[1]["metric"] == "c" and lines[1]["value"] == 23
    assert lines[2]["bucket_counts"] == [1, 0] and lines[2]["count"] == 1


def test_console_line_is_compact_and_fanout_reaches_every_sink():
    human, machine = io.StringIO(), io.StringIO()

    class Broken:
        name = "broken"

        def export_logs(self, batch):
            raise RuntimeError("boom")

    fanout = FanoutSink([Broken(), ConsoleSink(stream=human), JsonLinesSink(stream=machine)])
    fanout.export_logs(BATCH)
    line = human.getvalue().strip()
    assert line.endswith('WARN  process.exec pid=42 executable.name=bash command_args="bash -c echo hi" raw=b\'\\x01\\x02\'')
    assert json.loads(machine.getvalue())["event_name"] == "process.exec"
