"""RED metrics from spans: the semantic conventions' http.server.request.duration and
http.client.request.duration histograms, recorded from every enriched span batch before any
sampling, so the rates and latencies count every request.

Per batch: what a shape's metric attributes are is worked out once per shape (cached by the
shape object), spans are grouped by (shape's attributes, process) with numpy, and each group
is recorded with one bucketing pass. No Python per span.
"""

from __future__ import annotations

import weakref

import numpy as np

from otelbpf.signals.model import Resource, SpanColumns, SpanKind, SpanShape
from otelbpf.signals.registry import Registry

# Semantic-convention buckets of http.{server,client}.request.duration.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_SERVER_KEYS = ("http.request.method", "url.scheme", "http.response.status_code", "error.type", "http.route")
_CLIENT_KEYS = ("http.request.method", "url.scheme", "http.response.status_code", "error.type", "server.address")


class SpanMetrics:
    def __init__(self, registry: Registry) -> None:
        self._server = registry.histogram("http.server.request.duration", "Duration of HTTP server requests", "s",
                                          DURATION_BOUNDS)
        self._client = registry.histogram("http.client.request.duration", "Duration of HTTP client requests", "s",
                                          DURATION_BOUNDS)
        # shape -> (is a server span, its metric attributes), or None: not an HTTP span
        self._described: weakref.WeakKeyDictionary[SpanShape, tuple[bool, tuple] | None] = weakref.WeakKeyDictionary()

    def record(self, columns: SpanColumns) -> None:
        """Records the durations of the batch's HTTP spans; the batch must be enriched."""
        if not len(columns) or columns.resource is None:
            return
        # Shapes that describe alike (the same request on other connections) share a key.
        keys: dict[tuple[bool, tuple], int] = {}
        key_of_shape = np.full(len(columns.shapes), -1, np.int64)
        for i, shape in enumerate(columns.shapes):
            about = self._describe(shape)
            if about is not None:
                key_of_shape[i] = keys.setdefault(about, len(keys))
        if not keys:
            return
        key = key_of_shape[columns.shape]
        http = key >= 0
        resources = len(columns.resources)
        group = key[http] * resources + columns.resource[http]
        durations = columns.durations_s()[http]
        about_of = list(keys)
        groups, rows = np.unique(group, return_inverse=True)
        if len(groups) == 1:
            parts = [durations]
        else:
            order = np.argsort(rows, kind="stable")
            parts = np.split(durations[order], np.flatnonzero(np.diff(rows[order])) + 1)
        for g, values in zip(groups.tolist(), parts):
            k, resource = divmod(g, resources)
            server, attrs = about_of[k]
            (self._server if server else self._client).record_many(
                values, {**dict(attrs), "process.executable.name": _executable(columns.resources[resource])})

    def _describe(self, shape: SpanShape) -> tuple[bool, tuple] | None:
        try:
            return self._described[shape]
        except KeyError:
            pass
        attrs = shape.attributes
        about: tuple[bool, tuple] | None = None
        if "http.request.method" in attrs and shape.kind in (SpanKind.SERVER, SpanKind.CLIENT):
            server = shape.kind is SpanKind.SERVER
            keys = _SERVER_KEYS if server else _CLIENT_KEYS
            about = (server, tuple((k, attrs[k]) for k in keys if k in attrs))
        self._described[shape] = about
        return about


def _executable(resource: Resource) -> str:
    for key, value in resource.attributes:
        if key == "process.executable.name":
            return str(value)
    return ""
