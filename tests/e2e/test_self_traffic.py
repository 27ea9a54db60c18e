"""The agent never observes itself: with a collector on this host (here an OTLP receiver in
the test's own process), the collector's side of the agent's export connections makes no
span, and what was left out is counted. A request curl sends to the same receiver is the
control: it is traced, so the receiver's process is watched."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from otelbpf.receiver.otlp import OtlpReceiver
from tests.conftest import require_tool
from tests.e2e.test_cli import OTELBPF, value, wait_until
from tests.e2e.test_http_nginx import free_port

RUN_SECONDS = 20


def spans(receiver: OtlpReceiver) -> list[tuple[dict, dict]]:
    """(resource attributes, span attributes) of every span received."""
    out = []
    for req in receiver.received_traces():
        for rs in req.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append((resource, {kv.key: value(kv.value) for kv in s.attributes}))
    return out


def ignored_self(receiver: OtlpReceiver) -> int:
    """The latest otelbpf.http.ignored{reason=self} the agent exported (a cumulative sum)."""
    latest = 0
    for req in receiver.received_metrics():
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != "otelbpf.http.ignored":
                        continue
                    for p in m.sum.data_points:
                        if {kv.key: value(kv.value) for kv in p.attributes}.get("reason") == "self":
                            latest = max(latest, p.as_int)
    return latest


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_collectors_side_of_the_agents_exports_is_not_traced(protocol, tmp_path):
    curl = require_tool("curl")
    with OtlpReceiver("127.0.0.1", 0, 0) as receiver:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
        env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                   OTELBPF_METRICS_INTERVAL="1")
        log = tmp_path / "agent.log"
        metrics_port = free_port()
        agent = subprocess.Popen(OTELBPF + ["run", "--sensors", "http", "--prometheus", f"127.0.0.1:{metrics_port}"],
                                 env=env, stderr=log.open("w"), stdout=subprocess.DEVNULL)
        try:
            assert wait_until(lambda: "running" in log.read_text() or agent.poll() is not None, 60)
            assert agent.poll() is None, log.read_text()
            started = time.monotonic()
            # The control: one request from another process to the receiver's HTTP port.
            subprocess.run([curl, "-sS", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/x-protobuf",
                            "--data-binary", "", f"{receiver.http_endpoint}/v1/logs"], check=True, timeout=10)
            # A client of the agent's own listener (its Prometheus endpoint): not traced either.
            scrape = subprocess.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                     f"http://127.0.0.1:{metrics_port}/metrics"],
                                    capture_output=True, text=True, timeout=10)
            assert scrape.stdout == "200", scrape
            time.sleep(max(0.0, RUN_SECONDS - (time.monotonic() - started)))

            def control_arrived():
                return any(r.get("process.pid") == os.getpid() and a.get("url.path") == "/v1/logs"
                           for r, a in spans(receiver))

            assert wait_until(control_arrived, 15), log.read_text()
            assert wait_until(lambda: ignored_self(receiver) > 0, 10), log.read_text()
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0, log.read_text()
    ours = [a for r, a in spans(receiver) if r.get("process.pid") == os.getpid()]
    # Exactly the control: no span of the receiver's side of any export (POST /v1/traces, ...).
    assert [a.get("url.path") for a in ours] == ["/v1/logs"], ours
    # Neither the agent's own side nor a client of its listener.
    assert not [r for r, _ in spans(receiver) if r.get("process.pid") == agent.pid]
    http_port = int(receiver.http_endpoint.rsplit(":", 1)[1])
    assert [a for _, a in spans(receiver) if "url.full" in a and a.get("server.port") == http_port], \
        "curl's client span to the receiver (the control for the next line) is missing"
    assert not [a for _, a in spans(receiver) if a.get("server.port") == metrics_port]
