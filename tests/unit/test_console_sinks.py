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


def test_full_console_view_has_every_attribute_and_fanout_reaches_every_sink():
    human, machine = io.StringIO(), io.StringIO()

    class Broken:
        name = "broken"

        def export_logs(self, batch):
            raise RuntimeError("boom")

    fanout = FanoutSink([Broken(), ConsoleSink(stream=human, view="full"), JsonLinesSink(stream=machine)])
    fanout.export_logs(BATCH)
    line = human.getvalue().strip()
    assert line.endswith('WARN  process.exec pid=42 executable.name=bash command_args="bash -c echo hi" raw=b\'\\x01\\x02\'')
    assert json.loads(machine.getvalue())["event_name"] == "process.exec"


def exec_record(args: list[str]) -> LogBatch:
    return LogBatch(Resource.of({"host.name": "n"}), "otelbpf.process", [LogRecord(
        1_700_000_000_123_456_789, "process.exec", Severity.INFO, None,
        {"process.pid": 4243, "process.executable.name": "python3", "process.parent_pid": 4241,
         "otelbpf.process.ancestors": ["4241:bash", "17:sshd", "1:systemd"], "process.command_args": args})])


def test_compact_console_is_one_short_line_per_event():
    out = io.StringIO()
    sink = ConsoleSink(stream=out)
    sink.export_logs(exec_record(["python3", "-c", "print(1)"]))
    sink.export_logs(LogBatch(Resource(), "otelbpf.process", [LogRecord(
        1_700_000_000_223_456_789, "process.exit", Severity.WARN, None,
        {"process.pid": 4243, "process.executable.name": "python3", "process.exit.code": 137,
         "process.exit.signal": "SIGKILL", "otelbpf.process.ancestors": ["4241:bash"]})]))
    registry = Registry()
    registry.counter("c").add(23)
    sink.export_metrics(registry.snapshot(Resource(), "s"))  # metrics: not on the compact console
    exec_line, exit_line = out.getvalue().splitlines()
    assert exec_line.split()[1:] == ["INFO", "process.exec", "python3[4243]", "<-", "bash[4241]",
                                     "python3", "-c", "print(1)"]
    assert "sshd" not in exec_line  # the parent only, not the whole ancestry
    assert exit_line.split()[1:] == ["WARN", "process.exit", "python3[4243]", "<-", "bash[4241]", "exit=137", "SIGKILL"]


def test_compact_console_line_of_a_huge_exec_fits_the_width():
    out = io.StringIO()  # not a terminal: 160 columns
    args = ["python3", "-c", "x" * 4000] + [f"arg{i}" for i in range(200)]
    assert len(" ".join(args)) > 5000
    ConsoleSink(stream=out).export_logs(exec_record(args))
    (line,) = out.getvalue().splitlines()
    assert len(line) == 160 and line.endswith("…")
    assert "python3[4243] <- bash[4241]  python3 -c xxx" in line
