"""The profile sensor's OTLP profiles export from `otelbpf run`: retries on the retryable HTTP
statuses against a tiny test server, drops on the others, and the agent's wiring."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)

from otelbpf.export.otlp_settings import RetrySettings
from otelbpf.profiling.otlp import PATH, RetryingProfilesExporter
from otelbpf.signals.model import Resource
from tests.unit.test_profile_formats import sample_profile

FAST = RetrySettings(initial_interval=0.05, multiplier=1.5, max_interval=0.2, max_elapsed=5.0)


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
    exporter = RetryingProfilesExporter(server.url, Resource.of({"service.name": "t"}), FAST)
    try:
        exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert (exporter.sent, exporter.failed, exporter.retries) == (1, 0, 4)
    assert len(server.bodies) == 5 and {p for p, _ in server.bodies} == {PATH}
    assert len({b for _, b in server.bodies}) == 1  # the same request each time
    request = ExportProfilesServiceRequest.FromString(server.bodies[-1][1])
    assert request.resource_profiles[0].scope_profiles[0].profiles[0].samples


def test_retry_after_is_honoured():
    server = ScriptedServer([503], retry_after="1")
    exporter = RetryingProfilesExporter(server.url, Resource.of({}), FAST)
    try:
        exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert exporter.sent == 1 and server.times[1] - server.times[0] >= 0.95


def test_other_statuses_drop_the_profile_and_go_on():
    server = ScriptedServer([400])
    exporter = RetryingProfilesExporter(server.url, Resource.of({}), FAST)
    try:
        exporter(sample_profile())
        exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert (exporter.sent, exporter.failed, exporter.retries, len(server.bodies)) == (1, 1, 0, 2)


def test_unreachable_endpoint_gives_up_at_shutdown():
    exporter = RetryingProfilesExporter("http://127.0.0.1:9", Resource.of({}),
                                        RetrySettings(initial_interval=5, max_elapsed=300))
    exporter(sample_profile())
    started = time.monotonic()
    exporter.shutdown(0.5)
    assert time.monotonic() - started < 3 and exporter.sent == 0


def test_full_queue_drops_the_oldest():
    server = ScriptedServer([503] * 3)
    exporter = RetryingProfilesExporter(server.url, Resource.of({}), FAST, queue_size=2)
    try:
        for _ in range(6):
            exporter(sample_profile())
        exporter.shutdown(10)
    finally:
        server.close()
    assert exporter.dropped >= 1 and exporter.sent + exporter.dropped == 6


def test_run_with_an_http_endpoint_exports_profiles(monkeypatch):
    from otelbpf import agent as agent_module
    from otelbpf.config import AgentConfig

    cfg = AgentConfig(otlp_endpoint="http://collector.example:4318", otlp_protocol="http/protobuf")
    assert agent_module.profiles_endpoint(cfg) == "http://collector.example:4318"
    grpc = AgentConfig(otlp_endpoint="http://collector.example:4317", otlp_protocol="grpc")
    assert agent_module.profiles_endpoint(grpc) == "http://collector.example:4318"
    explicit = AgentConfig(otlp_endpoint="http://c:4317", profile={"otlp_endpoint": "http://p:9999"})
    assert agent_module.profiles_endpoint(explicit) == "http://p:9999"
    assert agent_module.profiles_endpoint(AgentConfig()) is None

    server = ScriptedServer([503])
    got = []
    try:
        monkeypatch.setattr(agent_module, "profiles_retry", lambda cfg: FAST)
        a = agent_module.Agent(AgentConfig(otlp_endpoint=server.url, otlp_protocol="http/protobuf",
                                           sensors=["profile"]))
        monkeypatch.setattr("otelbpf.sensors.profile.Profiler", lambda *a, **k: None)
        sensor = a._make_sensor("profile")
        sensor._emit(sample_profile())
        a._profiles_exporter.shutdown(10)
        got = server.bodies
    finally:
        server.close()
    assert len(got) == 2 and got[0][0] == PATH
