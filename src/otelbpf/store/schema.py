"""Tables of the embedded store and the views over them.

Times are nanoseconds since the epoch in BIGINT columns (what OTLP carries; cheap to append
from numpy). Attributes the views and queries need are promoted to columns; the rest stay
as JSON so any program's telemetry fits. flows and service_edges are derived at ingest from
the network sensor's metrics (pipeline.service_map); profile_samples come from the profile
sensor (store.profile_rows). Columns are only ever added at the end of a table: an older
store file gets them on open (ALTER TABLE ... ADD COLUMN IF NOT EXISTS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type)

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def migrations(self, existing: set[str]) -> list[str]:
        """Adds the columns that a store file written by an older version lacks."""
        return [f"ALTER TABLE {self.name} ADD COLUMN {name} {kind}" for name, kind in self.columns
                if name not in existing]

    def ddl(self) -> str:
        cols = ",\n  ".join(f"{name} {kind}" for name, kind in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols}\n)"

    def numpy_dtype(self, column: str) -> type | np.dtype:
        """int64 for BIGINT (bulk path, no None allowed); object for the nullable rest."""
        kind = dict(self.columns)[column]
        return np.int64 if kind == "BIGINT" else object


SPANS = Table("spans", (
    ("time_unix_nano", "BIGINT"),  # span start
    ("end_unix_nano", "BIGINT"),
    ("duration_ns", "BIGINT"),
    ("trace_id", "VARCHAR"),  # lowercase hex, as in W3C traceparent
    ("span_id", "VARCHAR"),
    ("parent_span_id", "VARCHAR"),  # '' for a root span
    ("service", "VARCHAR"),  # resource service.name
    ("name", "VARCHAR"),
    ("kind", "VARCHAR"),  # unspecified | internal | server | client | producer | consumer
    ("status_code", "VARCHAR"),  # unset | ok | error
    ("status_message", "VARCHAR"),
    ("http_method", "VARCHAR"),  # http.request.method (or the older http.method)
    ("http_route", "VARCHAR"),  # http.route
    ("http_status", "INTEGER"),  # http.response.status_code (or http.status_code)
    ("scope", "VARCHAR"),
    ("attributes", "JSON"),
    ("resource", "JSON"),
))

LOGS = Table("logs", (
    ("time_unix_nano", "BIGINT"),
    ("service", "VARCHAR"),
    ("scope", "VARCHAR"),
    ("event_name", "VARCHAR"),  # process.exec, process.exit, ...
    ("severity_number", "INTEGER"),
    ("severity_text", "VARCHAR"),
    ("body", "VARCHAR"),
    ("trace_id", "VARCHAR"),
    ("span_id", "VARCHAR"),
    ("attributes", "JSON"),
    ("resource", "JSON"),
))

METRIC_POINTS = Table("metric_points", (
    ("time_unix_nano", "BIGINT"),
    ("start_unix_nano", "BIGINT"),
    ("service", "VARCHAR"),
    ("scope", "VARCHAR"),
    ("name", "VARCHAR"),
    ("unit", "VARCHAR"),
    ("kind", "VARCHAR"),  # sum | gauge | histogram | exponential_histogram | summary
    ("value", "DOUBLE"),  # sum and gauge
    ("count", "BIGINT"),  # histograms and summaries (0 otherwise)
    ("sum", "DOUBLE"),
    ("bounds", "DOUBLE[]"),  # explicit histogram bucket bounds
    ("bucket_counts", "BIGINT[]"),
    ("attributes", "JSON"),
    ("resource", "JSON"),
))

FLOWS = Table("flows", (
    ("time_unix_nano", "BIGINT"),  # end of the reporting interval
    ("duration_ns", "BIGINT"),
    ("service", "VARCHAR"),
    ("pid", "INTEGER"),
    ("process_name", "VARCHAR"),
    ("container_id", "VARCHAR"),
    ("transport", "VARCHAR"),  # tcp | udp
    ("network_type", "VARCHAR"),  # ipv4 | ipv6
    ("local_address", "VARCHAR"),
    ("local_port", "INTEGER"),
    ("peer_address", "VARCHAR"),
    ("peer_port", "INTEGER"),
    ("bytes_sent", "BIGINT"),
    ("bytes_received", "BIGINT"),
    ("retransmits", "BIGINT"),
    ("attributes", "JSON"),
))

SERVICE_EDGES = Table("service_edges", (
    ("time_unix_nano", "BIGINT"),
    ("client", "VARCHAR"),  # service or process name that sent the requests
    ("server", "VARCHAR"),
    ("protocol", "VARCHAR"),  # http | grpc | postgres | redis | tcp ...
    ("requests", "BIGINT"),
    ("errors", "BIGINT"),
    ("duration_sum_ns", "BIGINT"),
    ("attributes", "JSON"),
    ("bytes_sent", "BIGINT"),  # by the client
    ("bytes_received", "BIGINT"),
))

PROFILE_SAMPLES = Table("profile_samples", (
    ("time_unix_nano", "BIGINT"),
    ("service", "VARCHAR"),
    ("pid", "INTEGER"),
    ("process_name", "VARCHAR"),
    ("stack", "VARCHAR"),  # folded frames, root first: "main;handle;parse"
    ("samples", "BIGINT"),
    ("attributes", "JSON"),
))

TABLES: dict[str, Table] = {t.name: t for t in (SPANS, LOGS, METRIC_POINTS, FLOWS, SERVICE_EDGES, PROFILE_SAMPLES)}


def _attr(key: str, kind: str = "") -> str:
    """A log attribute as a column; keys hold dots, so the JSON path quotes them."""
    extract = f"json_extract_string(attributes, '$.\"{key}\"')"
    return f"TRY_CAST({extract} AS {kind})" if kind else extract


# One row per process event with the process attributes as columns.
PROCESS_EVENTS_VIEW = f"""
CREATE OR REPLACE VIEW process_events AS
SELECT time_unix_nano,
       make_timestamp(time_unix_nano // 1000) AS time,
       event_name,
       {_attr('process.pid', 'INTEGER')} AS pid,
       {_attr('process.parent_pid', 'INTEGER')} AS parent_pid,
       {_attr('otelbpf.process.exec_id')} AS exec_id,
       {_attr('process.executable.name')} AS executable_name,
       {_attr('process.executable.path')} AS executable_path,
       CAST(json_extract(attributes, '$."process.command_args"') AS VARCHAR[]) AS command_args,
       {_attr('process.exit.code', 'INTEGER')} AS exit_code,
       {_attr('process.exit.signal')} AS exit_signal,
       {_attr('process.lifetime', 'DOUBLE')} AS lifetime_s,
       {_attr('container.id')} AS container_id,
       service
FROM logs
WHERE event_name IN ('process.exec', 'process.exit')
"""

VIEWS = (PROCESS_EVENTS_VIEW,)
