"""The health state behind /healthz and /readyz, on a clock the test moves, and its HTTP
server on loopback; config-file errors located by line."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from otelbpf.config_watch import changed_fields, with_lines, yaml_line
from otelbpf.health import STALE_AFTER, STUCK_AFTER, HealthServer, HealthState
from otelbpf.signals.registry import Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_a_loop_that_stops_going_round_fails_liveness():
    clock = Clock()
    state = HealthState(clock=clock)
    state.beat("main loop")
    state.beat("sensor process")
    clock.now += STALE_AFTER - 1
    state.beat("main loop")
    assert state.liveness() == []
    clock.now += 2
    assert state.liveness() == [f"sensor process: no round for {STALE_AFTER + 1:.0f} s"]
    state.beat("sensor process")
    assert state.liveness() == []


def test_ready_once_started_and_while_no_problem():
    state = HealthState(clock=Clock())
    assert state.readiness() == ["starting: sensors not attached yet"]
    state.started()
    assert state.readiness() == []
    state.problem("policies", "invalid: policy p.yaml: line 3: rules.0.hook: ...")
    state.problem("sensor http", "3 drains failed in a row: boom")
    assert state.readiness() == ["policies: invalid: policy p.yaml: line 3: rules.0.hook: ...",
                                 "sensor http: 3 drains failed in a row: boom"]
    state.problem("policies", None)
    state.problem("sensor http", None)
    assert state.readiness() == []


def test_exporter_stuck_only_with_items_queued_and_none_accepted():
    clock, registry = Clock(), Registry()
    state = HealthState(registry, clock=clock)
    state.started()
    sent = registry.counter("otelbpf.exporter.sent")
    queued = registry.up_down_counter("otelbpf.exporter.queue.size")
    queued.add(23, {"signal": "logs"})
    assert state.readiness() == []
    clock.now += STUCK_AFTER / 2
    sent.add(5, {"signal": "logs"})  # progress: the clock of being stuck starts again
    assert state.readiness() == []
    clock.now += STUCK_AFTER + 1
    assert state.readiness() == [f"exporter: 23 items queued and none accepted for {STUCK_AFTER + 1:.0f} s "
                                 "(is the collector reachable? see otelbpf.exporter.failed)"]
    queued.add(-23, {"signal": "logs"})  # nothing waits: an idle exporter is not stuck
    assert state.readiness() == []


def test_exporter_counters_are_not_created_by_the_probe():
    registry = Registry()
    HealthState(registry).readiness()
    assert registry.instruments() == []


def test_server_answers_the_probes():
    state = HealthState(clock=Clock())
    server = HealthServer(state, "127.0.0.1", 0).start()
    try:
        assert get(server.port, "/healthz") == (200, "ok\n")
        assert get(server.port, "/readyz") == (503, "starting: sensors not attached yet\n")
        state.started()
        assert get(server.port, "/readyz?verbose") == (200, "ok\n")
        assert get(server.port, "/metrics")[0] == 404
    finally:
        server.stop()


def test_server_on_a_taken_port_says_so():
    first = HealthServer(HealthState(), "127.0.0.1", 0).start()
    try:
        with pytest.raises(OSError):
            HealthServer(HealthState(), "127.0.0.1", first.port).start()
    finally:
        first.stop()


CONFIG = b"""sensors: [process]
process:
  table_size: 64
  max_args_bytes: 99999
"""


def test_config_errors_name_the_line_of_the_field():
    assert yaml_line(CONFIG, ["process", "max_args_bytes"]) == 4
    assert yaml_line(CONFIG, ["sensors"]) == 1
    assert yaml_line(b"{not yaml", ["a"]) is None
    message = "config file /c.yaml: process.max_args_bytes: must be <= 32768 (got 99999)\nenvironment variable X: y: bad"
    assert with_lines(message, "/c.yaml", CONFIG) == (
        "config file /c.yaml, line 4: process.max_args_bytes: must be <= 32768 (got 99999); environment variable X: y: bad")


def test_changed_fields_are_dotted():
    old = {"sensors": ["process"], "process": {"table_size": 64, "max_args_bytes": 4096}}
    new = {"sensors": ["process"], "process": {"table_size": 128, "max_args_bytes": 4096}}
    assert changed_fields(old, new) == ["process.table_size"]
    assert changed_fields(old, old) == []


def test_config_watch_reports_a_change_an_error_and_the_way_back(tmp_path):
    from otelbpf.config import load_config
    from otelbpf.config_watch import ConfigReport, ConfigWatch
    from otelbpf.signals.model import Resource
    from tests.kubelet import project

    volume = tmp_path / "config"
    project(volume, {"config.yaml": "metrics_interval: 5\n"})
    path = str(volume / "config.yaml")
    running = load_config(path, {}, {"sensors": "process"})  # a flag the file does not set
    registry, state, events = Registry(), HealthState(clock=Clock()), []
    state.started()
    watch = ConfigWatch(path, {}, running, ConfigReport(state, registry, Resource({}), events.append))
    watch.check()
    assert state.readiness() == [] and events == []  # nothing changed

    project(volume, {"config.yaml": "metrics_interval: 7\n"})
    watch.check()
    (reason,) = state.readiness()
    assert reason.startswith(f"config: config file {path} changed (metrics_interval): restart the agent")
    assert [(b.records[0].event_name, b.records[0].severity.name) for b in events] == [
        ("otelbpf.config.restart_needed", "WARN")]

    project(volume, {"config.yaml": "metrics_interval: 7\nprocess:\n  table_size: 1\n"})
    watch.check()
    assert state.readiness() == [f"config: invalid, the running ones stay: config file {path}, line 3: "
                                 "process.table_size: must be >= 64 (got 1)"]
    assert registry.counter("otelbpf.config.invalid").value(source="config") == 1
    assert events[-1].records[0].event_name == "otelbpf.config.invalid"

    project(volume, {"config.yaml": "metrics_interval: 5\n"})  # back to what runs
    watch.check()
    assert state.readiness() == []
    assert len(events) == 2
