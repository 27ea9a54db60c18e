from __future__ import annotations

import urllib.request

import pytest

from otelbpf.export.prometheus import PrometheusEndpoint, prometheus_name
from otelbpf.signals.registry import Registry


@pytest.fixture
def endpoint():
    registry = Registry()
    endpoint = PrometheusEndpoint(registry, port=0).start()
    yield endpoint, registry
    endpoint.stop()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.status == 200
        return reply.read().decode()


def test_scrape_finds_counters_gauges_and_histograms(endpoint):
    endpoint, registry = endpoint
    registry.counter("otelbpf.exporter.sent", "Items sent", "{item}").add(23, signal="logs", exporter="otlp")
    registry.up_down_counter("otelbpf.exporter.queue.size").add(7, signal="logs")
    registry.gauge("otelbpf.ringbuf.fill", "fill", "1", lambda: [({"sensor": "exec"}, 0.25)])
    histogram = registry.histogram("http.server.request.duration", "d", "s", [0.1, 1.0])
    histogram.record(0.05, {"http.request.method": "GET"})
    histogram.record(0.5, {"http.request.method": "GET"})
    text = scrape(endpoint.url)
    assert 'otelbpf_exporter_sent_total{exporter="otlp",signal="logs"} 23.0' in text
    assert "# TYPE otelbpf_exporter_sent_total counter" in text
    assert 'otelbpf_exporter_queue_size{signal="logs"} 7.0' in text
    assert 'otelbpf_ringbuf_fill{sensor="exec"} 0.25' in text
    assert 'http_server_request_duration_bucket{http_request_method="GET",le="0.1"} 1.0' in text
    assert 'http_server_request_duration_bucket{http_request_method="GET",le="+Inf"} 2.0' in text
    assert 'http_server_request_duration_sum{http_request_method="GET"} 0.55' in text

    registry.counter("otelbpf.exporter.sent").add(2, signal="logs", exporter="otlp")
    assert 'otelbpf_exporter_sent_total{exporter="otlp",signal="logs"} 25.0' in scrape(endpoint.url)


def test_names_are_made_valid():
    assert prometheus_name("process.executable.name") == "process_executable_name"
    assert prometheus_name("9lives-x") == "_9lives_x"


def test_stop_frees_the_port():
    endpoint = PrometheusEndpoint(Registry(), port=0).start()
    port = endpoint.port
    endpoint.stop()
    again = PrometheusEndpoint(Registry(), port=port).start()
    again.stop()
