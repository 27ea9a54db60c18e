"""A Prometheus /metrics endpoint that serves a Registry's current snapshot.

Names and label keys get dots (and any other character Prometheus rejects) turned into
underscores; counters get the `_total` suffix from prometheus_client.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as PromMetric,
)

from otelbpf.signals.model import Metric, MetricKind, Resource
from otelbpf.signals.registry import Registry

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str) -> str:
    """otelbpf.exporter.sent -> otelbpf_exporter_sent; a leading digit gets an underscore."""
    cleaned = _INVALID.sub("_", name)
    return f"_{cleaned}" if cleaned[:1].isdigit() else cleaned


def _label_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RegistryCollector:
    """prometheus_client collector reading the registry on every scrape."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[PromMetric]:
        batch = self._registry.snapshot(Resource(), "prometheus")
        for metric in batch.metrics:
            family = self._family(metric)
            if family is not None:
                yield family

    @staticmethod
    def _family(metric: Metric) -> PromMetric | None:
        name = prometheus_name(metric.name)
        label_keys = sorted({key for p in metric.points for key in p.attributes})
        labels = [prometheus_name(key) for key in label_keys]
        if len(set(labels)) != len(labels):
            return None  # two keys collapse to one label name: nothing valid to serve

        def values(point) -> list[str]:
            return [_label_value(point.attributes.get(key, "")) for key in label_keys]

        if metric.kind is MetricKind.HISTOGRAM:
            histogram = HistogramMetricFamily(name, metric.description, labels=labels, unit="")
            for p in metric.points:
                cumulative, buckets = 0, []
                for bound, count in zip((*p.bounds, float("inf")), p.bucket_counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                histogram.add_metric(values(p), buckets, p.sum)
            return histogram
        family: CounterMetricFamily | GaugeMetricFamily
        if metric.kind is MetricKind.SUM and metric.monotonic:
            family = CounterMetricFamily(name, metric.description, labels=labels)
        else:
            family = GaugeMetricFamily(name, metric.description, labels=labels)
        for p in metric.points:
            family.add_metric(values(p), p.value)
        return family


class PrometheusEndpoint:
    """Serves http://host:port/metrics; port 0 picks a free port (see .port)."""

    name = "prometheus"

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 9464) -> None:
        self.host, self._wanted_port = host, port
        self.port: int | None = None
        self._prometheus_registry = CollectorRegistry(auto_describe=False)
        self._prometheus_registry.register(RegistryCollector(registry))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> PrometheusEndpoint:
        try:
            self._server, self._thread = start_http_server(
                self._wanted_port, addr=self.host, registry=self._prometheus_registry
            )
        except OSError as exc:
            raise OSError(
                f"cannot serve Prometheus metrics on {self.host}:{self._wanted_port}: {exc}; "
                "pick another port"
            ) from exc
        self.port = self._server.server_address[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
