"""A real Prometheus server scrapes our /metrics endpoint and finds our counter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from otelbpf.export.prometheus import PrometheusEndpoint
from otelbpf.signals.registry import Registry
from tests.conftest import require

pytestmark = pytest.mark.e2e
PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port: int, expression: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=2) as reply:
        return json.load(reply)["data"]["result"]


def test_real_prometheus_scrapes_our_counter(tmp_path):
    require(os.path.exists(PROMETHEUS) or shutil.which("prometheus") is not None,
            f"{PROMETHEUS} is missing: apt-get install prometheus")

    registry = Registry()
    registry.counter("otelbpf.exporter.sent", "Items sent", "{item}").add(23, signal="logs", exporter="otlp")
    endpoint = PrometheusEndpoint(registry, port=0).start()
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: otelbpf\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{endpoint.port}']\n"
    )
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        found, deadline = [], time.monotonic() + 30
        while not found and time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                found = query(prometheus_port, 'otelbpf_exporter_sent_total{signal="logs"}')
            except OSError:
                pass  # not listening yet
            if not found:
                time.sleep(0.25)
        assert found, "Prometheus did not scrape our endpoint within 30 s"
        sample = found[0]
        assert sample["metric"]["exporter"] == "otlp" and sample["metric"]["job"] == "otelbpf"
        assert float(sample["value"][1]) == 23
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        endpoint.stop()
