"""The profile sensor's OTLP profiles export from `otelbpf run`, through the one OTLP
exporter: retries on the retryable HTTP statuses against a tiny test server, drops on the
others, a full queue, and the agent's wiring."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from otelbpf.export.otlp import OtlpExporter
from otelbpf.export.otlp_settings import OtlpSettings
from otelbpf.signals.model import ProfileBatch, Resource
from otelbpf.signals.otlp_profiles import HTTP_PATH as PATH
from otelbpf.signals.registry import Registry
from tests.unit.test_profile_formats import sample_profile

FAST = {"retry_initial_interval": 0.05, "retry_multiplier": 1.5, "retry_max_interval": 0.2, "retry_max_elapsed": 5.0}


class Exporter:
    """An OTLP exporter of profiles alone, and its counters."""

    def __init__(self, url: str, **overrides):
        self.registry = Registry()
        settings = OtlpSettings.from_env({}, {"endpoint": url, "protocol": "http/protobuf", **FAST, **overrides})
        self.exporter = OtlpExporter(settings, self.registry, signals=("profiles",))

    def __call__(self, profile) -> None:
        self.exporter.export_profiles(ProfileBatch(Resource.of({"service.name": "t"}), "s", profile))

    def shutdown(self, timeout: float) -> None:
        self.exporter.shutdown(timeout)

    def count(self, what: str) -> int:
        """Profiles (of three samples each) counted as sent, failed, retried or dropped."""
        return int(self.registry.counter(f"otelbpf.exporter.{what}").value(signal="profiles", exporter="otlp") // 3)


class ScriptedServer:
    """Answers POSTs with the given statuses in turn, then 200; records every body."""

    def __init__(self, statuses: list[int], retry_after: str | None = None):
        self.statuses, self.bodies, self.times = list(statuses), [], []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.bodies.append((self.path, body))
                owner.times.append(time.monotonic())
                status = owner.statuses.pop(0) if owner.statuses else 200
                self.send_response(status)
                if retry_after and status != 200:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retryable_statuses_are_retried_until_accepted():
    server = ScriptedServer([503, 429, 502, 504])
    exporter = Exporter(server.url)
    try:
        exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert (exporter.count("sent"), exporter.count("failed"), exporter.count("retried")) == (1, 0, 4)
    assert len(server.bodies) == 5 and {p for p, _ in server.bodies} == {PATH}
    assert len({b for _, b in server.bodies}) == 1  # the same request each time
    request = ExportProfilesServiceRequest.FromString(server.bodies[-1][1])
    assert request.resource_profiles[0].scope_profiles[0].profiles[0].samples


def test_retry_after_is_honoured():
    server = ScriptedServer([503], retry_after="1")
    exporter = Exporter(server.url)
    try:
        exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert exporter.count("sent") == 1 and server.times[1] - server.times[0] >= 0.95


def test_other_statuses_drop_the_profile_and_go_on():
    server = ScriptedServer([400])
    exporter = Exporter(server.url, batch_timeout=0)
    try:
        exporter(sample_profile())
        deadline = time.monotonic() + 10
        while exporter.count("failed") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert (exporter.count("sent"), exporter.count("failed"), exporter.count("retried"), len(server.bodies)) == \
        (1, 1, 0, 2)


def test_unreachable_endpoint_gives_up_at_shutdown():
    exporter = Exporter("http://127.0.0.1:9", retry_initial_interval=5, retry_max_elapsed=300)
    exporter(sample_profile())
    started = time.monotonic()
    exporter.shutdown(0.5)
    assert time.monotonic() - started < 3 and exporter.count("sent") == 0


def test_full_queue_drops_and_counts():
    server = ScriptedServer([503] * 3)
    exporter = Exporter(server.url, queue_size=6)  # two profiles of three samples
    try:
        for _ in range(7):
            exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert exporter.count("dropped") >= 1 and exporter.count("sent") + exporter.count("dropped") == 7


def test_run_with_a_collector_exports_profiles_on_its_protocol():
    from otelbpf import agent as agent_module
    from otelbpf.config import AgentConfig

    http = agent_module.otlp_settings(AgentConfig(otlp_endpoint="http://collector.example:4318",
                                                  otlp_protocol="http/protobuf"))
    assert http.profiles.endpoint == "http://collector.example:4318/v1development/profiles"
    grpc = agent_module.otlp_settings(AgentConfig(otlp_endpoint="http://collector.example:4317", otlp_protocol="grpc"))
    assert (grpc.profiles.protocol, grpc.profiles.endpoint) == ("grpc", "http://collector.example:4317")
    explicit = agent_module.otlp_settings(AgentConfig(otlp_endpoint="http://c:4317", otlp_protocol="grpc",
                                                      profile={"otlp_endpoint": "http://p:9999"}))
    assert (explicit.profiles.protocol, explicit.profiles.endpoint) == ("http/protobuf",
                                                                        "http://p:9999/v1development/profiles")
    assert explicit.traces.endpoint == "http://c:4317"  # the other signals keep the collector


def test_the_profile_sensor_sends_through_the_agents_sink(monkeypatch):
    from otelbpf import agent as agent_module
    from otelbpf.config import AgentConfig

    server = ScriptedServer([503])
    try:
        a = agent_module.Agent(AgentConfig(otlp_endpoint=server.url, otlp_protocol="http/protobuf",
                                           sensors=["profile"], console=False))
        monkeypatch.setattr(agent_module, "otlp_settings",
                            lambda cfg: OtlpSettings.from_env({}, {"endpoint": server.url, **FAST}))
        a.sink = a._open_sinks()
        monkeypatch.setattr("otelbpf.sensors.profile.Profiler", lambda *a, **k: None)
        sensor = a._make_sensor("profile")
        sensor._emit(sample_profile())
        a.sink.shutdown(10)
        got = server.bodies
    finally:
        server.close()
    assert len(got) == 2 and got[0][0] == PATH  # refused once with 503, then accepted
    assert a.registry.counter("otelbpf.exporter.sent").value(signal="profiles", exporter="otlp") == 3
