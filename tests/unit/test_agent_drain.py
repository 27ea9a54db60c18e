"""A sensor whose drain keeps failing: said once, counted every time, retried with backoff."""

from __future__ import annotations

import logging
import threading
import time

from otelbpf.agent import Agent
from otelbpf.config import AgentConfig
from otelbpf.signals.model import Resource


class Failing:
    name = "failing"

    def __init__(self, fail_times: int) -> None:
        self.calls = 0
        self.fail_times = fail_times

    def poll(self, timeout: float) -> int:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ValueError("bad record layout")
        time.sleep(timeout)
        return 0


def drain_for(agent: Agent, sensor: Failing, seconds: float) -> None:
    thread = threading.Thread(target=agent._drain, args=(sensor,))
    thread.start()
    time.sleep(seconds)
    agent._stop.set()
    thread.join(5)


def drain_failures(agent: Agent) -> int:
    snapshot = agent.registry.snapshot(Resource(), "test")
    return sum(p.value for m in snapshot.metrics if m.name == "otelbpf.sensor.drain_failures" for p in m.points
               if p.attributes.get("sensor") == "failing")


def test_a_sensor_that_always_fails_logs_one_line_and_counts(caplog):
    agent = Agent(AgentConfig(drain_interval=0.001))
    sensor = Failing(fail_times=10**9)
    with caplog.at_level(logging.INFO, logger="otelbpf"):
        drain_for(agent, sensor, 1.5)
    lines = [r for r in caplog.records if r.name == "otelbpf"]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "failing" in lines[0].getMessage() and "bad record layout" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback unless asked for (--verbose)
    assert drain_failures(agent) == sensor.calls
    # Backed off: at 1 ms a drain it would have tried about 1,500 times.
    assert 5 <= sensor.calls <= 14


def test_recovery_is_said_once(caplog):
    agent = Agent(AgentConfig(drain_interval=0.001))
    sensor = Failing(fail_times=3)
    with caplog.at_level(logging.INFO, logger="otelbpf"):
        drain_for(agent, sensor, 0.5)
    messages = [r.getMessage() for r in caplog.records if r.name == "otelbpf"]
    assert len(messages) == 2 and "drains again after 3 failed drains" in messages[1]
    assert drain_failures(agent) == 3
