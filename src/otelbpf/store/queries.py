"""The ready-made queries behind the terminal views and the web UI.

Each takes anything with `query(sql, params) -> Result` (a local Store or a client of a
running agent) and a time window, and returns a Result.
"""

from __future__ import annotations

import time
from typing import Protocol

from otelbpf.store.db import Result
from otelbpf.store.schema import TABLES


class Queryable(Protocol):
    def query(self, sql: str, params: list | None = None, max_rows: int | None = None) -> Result: ...


def since_ns(window_s: float | None) -> int:
    """Start of the window ending now; 0 (everything) without a window."""
    return time.time_ns() - int(window_s * 1e9) if window_s else 0


def summary(db: Queryable) -> Result:
    parts = " UNION ALL ".join(
        f"SELECT '{t}' AS table_name, count(*) AS rows, make_timestamp(max(time_unix_nano) // 1000) AS newest "
        f"FROM {t}" for t in TABLES)
    return db.query(parts)


def top_processes(db: Queryable, window_s: float | None = None, limit: int = 20) -> Result:
    return db.query("""
        SELECT executable_name AS executable,
               count(*) FILTER (WHERE event_name = 'process.exec') AS execs,
               count(*) FILTER (WHERE event_name = 'process.exit') AS exits,
               count(*) FILTER (WHERE exit_code <> 0) AS failed,
               round(avg(lifetime_s), 3) AS avg_lifetime_s,
               max(time) AS last_seen
        FROM process_events WHERE time_unix_nano >= ?
        GROUP BY executable_name ORDER BY execs DESC, exits DESC, executable LIMIT ?""",
                    [since_ns(window_s), limit])


def process_events(db: Queryable, window_s: float | None = None, limit: int = 50) -> Result:
    return db.query("""
        SELECT time, event_name AS event, pid, parent_pid, executable_name AS executable,
               array_to_string(command_args, ' ') AS args, exit_code, exit_signal
        FROM process_events WHERE time_unix_nano >= ?
        ORDER BY time_unix_nano DESC LIMIT ?""", [since_ns(window_s), limit])


SECURITY_EVENT = "security.policy.match"


def security_events(db: Queryable, window_s: float | None = None, limit: int = 200) -> Result:
    """The security sensor's policy matches (`security.policy.match` log records), newest first,
    with the exec id that ties each to its process in the tree."""
    a = "json_extract_string(attributes, '$.\"{}\"')".format
    return db.query(f"""
        SELECT make_timestamp(time_unix_nano // 1000) AS time, severity_text AS severity,
               {a('otelbpf.security.policy')} AS policy, {a('otelbpf.security.action')} AS action,
               TRY_CAST({a('process.pid')} AS INTEGER) AS pid,
               coalesce({a('process.executable.name')}, {a('otelbpf.process.comm')}) AS executable,
               {a('otelbpf.security.syscall')} AS syscall,
               coalesce({a('file.path')}, {a('network.peer.address')} || ':' || {a('network.peer.port')},
                        {a('otelbpf.security.argument')}, {a('otelbpf.security.ptrace.target_pid')}) AS argument,
               {a('otelbpf.process.exec_id')} AS exec_id
        FROM logs WHERE event_name = ? AND time_unix_nano >= ?
        ORDER BY time_unix_nano DESC LIMIT ?""", [SECURITY_EVENT, since_ns(window_s), limit])


def process_lifecycles(db: Queryable, window_s: float | None = None, limit: int = 500) -> Result:
    """One row per exec: when it started and, once it has, how it ended."""
    return db.query("""
        WITH ex AS (SELECT * FROM process_events WHERE event_name = 'process.exec' AND time_unix_nano >= ?),
             xt AS (SELECT * FROM process_events WHERE event_name = 'process.exit' AND time_unix_nano >= ?)
        SELECT coalesce(ex.exec_id, xt.exec_id) AS exec_id,
               coalesce(ex.pid, xt.pid) AS pid,
               coalesce(ex.parent_pid, xt.parent_pid) AS parent_pid,
               coalesce(ex.executable_name, xt.executable_name) AS executable,
               array_to_string(coalesce(ex.command_args, xt.command_args), ' ') AS args,
               ex.time AS started, xt.time AS exited, xt.exit_code, xt.exit_signal, xt.lifetime_s
        FROM ex FULL OUTER JOIN xt ON ex.exec_id = xt.exec_id
        ORDER BY coalesce(ex.time_unix_nano, xt.time_unix_nano) DESC LIMIT ?""",
                    [since_ns(window_s), since_ns(window_s), limit])


def traces(db: Queryable, window_s: float | None = None, limit: int = 50, order: str = "slowest", *,
           service: str | None = None, route: str | None = None) -> Result:
    """Traces, slowest (or latest) first; with service and/or route only the traces holding a
    server span of that service and route (what a row of the RED table links to)."""
    order_by = "duration_ms DESC" if order == "slowest" else "start_ns DESC"
    params: list[int | str]
    where, params = "time_unix_nano >= ?", [since_ns(window_s)]
    if service or route:
        where += (" AND trace_id IN (SELECT trace_id FROM spans WHERE kind = 'server' AND time_unix_nano >= ?"
                  + (" AND service = ?" if service else "") + (" AND coalesce(http_route, name) = ?" if route else "")
                  + ")")
        params += [since_ns(window_s), *([service] if service else []), *([route] if route else [])]
    return db.query(f"""
        SELECT trace_id,
               coalesce(first(service) FILTER (WHERE parent_span_id = ''), arg_min(service, time_unix_nano)) AS service,
               coalesce(first(name) FILTER (WHERE parent_span_id = ''), arg_min(name, time_unix_nano)) AS root,
               make_timestamp(min(time_unix_nano) // 1000) AS start,
               min(time_unix_nano) AS start_ns,
               round((max(end_unix_nano) - min(time_unix_nano)) / 1e6, 3) AS duration_ms,
               count(*) AS spans,
               count(*) FILTER (WHERE status_code = 'error') AS errors
        FROM spans WHERE {where}
        GROUP BY trace_id ORDER BY {order_by} LIMIT ?""", [*params, limit])


def trace_spans(db: Queryable, trace_id: str) -> Result:
    return db.query("""
        SELECT span_id, parent_span_id, service, name, kind, status_code, status_message,
               round((time_unix_nano - min(time_unix_nano) OVER ()) / 1e6, 3) AS offset_ms,
               round(duration_ns / 1e6, 3) AS duration_ms, http_method, http_route, http_status, attributes
        FROM spans WHERE trace_id = ? ORDER BY time_unix_nano, span_id LIMIT 10000""", [trace_id.lower()])


def red(db: Queryable, window_s: float | None = None, limit: int = 100) -> Result:
    """Rate, errors, duration of server spans per service and route."""
    return db.query("""
        SELECT service, route, requests, errors,
               round(q[1] / 1e6, 3) AS p50_ms, round(q[2] / 1e6, 3) AS p95_ms, round(q[3] / 1e6, 3) AS p99_ms
        FROM (SELECT service, coalesce(http_route, name) AS route, count(*) AS requests,
                     count(*) FILTER (WHERE status_code = 'error' OR http_status >= 500) AS errors,
                     approx_quantile(duration_ns, [0.5, 0.95, 0.99]) AS q
              FROM spans WHERE kind = 'server' AND time_unix_nano >= ?
              GROUP BY ALL)
        ORDER BY requests DESC, service, route LIMIT ?""", [since_ns(window_s), limit])


def service_map(db: Queryable, window_s: float | None = None, limit: int = 500) -> Result:
    """Client -> server edges: TCP connections (requests), failed ones (errors), bytes."""
    return db.query("""
        SELECT client, server, protocol,
               sum(requests) AS connections, sum(errors) AS failed,
               sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received,
               string_agg(DISTINCT CAST(json_extract(attributes, '$."server.port"') AS VARCHAR), ',') AS ports,
               bool_or(CAST(json_extract(attributes, '$."otelbpf.network.local"') AS BOOLEAN)) AS local,
               make_timestamp(max(time_unix_nano) // 1000) AS last_seen
        FROM service_edges WHERE time_unix_nano >= ?
        GROUP BY client, server, protocol
        ORDER BY connections DESC, sum(bytes_sent) + sum(bytes_received) DESC, client, server LIMIT ?""",
                    [since_ns(window_s), limit])


def top_talkers(db: Queryable, window_s: float | None = None, limit: int = 20) -> Result:
    """Executables by bytes sent and received (flows derived from the network metrics)."""
    return db.query("""
        SELECT process_name AS executable, transport,
               sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received,
               sum(bytes_sent + bytes_received) AS bytes_total,
               count(DISTINCT peer_address || ':' || coalesce(CAST(peer_port AS VARCHAR), '')) AS peers,
               make_timestamp(max(time_unix_nano) // 1000) AS last_seen
        FROM flows WHERE time_unix_nano >= ?
        GROUP BY ALL ORDER BY bytes_total DESC, executable LIMIT ?""", [since_ns(window_s), limit])


def flame(db: Queryable, window_s: float | None = None, end_ago_s: float = 0.0, process: str | None = None,
          limit: int = 50_000) -> Result:
    """Folded stacks ("process;root;...;leaf", samples) in the window ending end_ago_s ago."""
    start = since_ns(window_s + end_ago_s) if window_s else 0
    end = since_ns(end_ago_s) if end_ago_s else 1 << 62
    where = " AND process_name = ?" if process else ""
    return db.query(f"""
        SELECT replace(process_name, ';', ':') || ';' || stack AS stack, sum(samples) AS samples
        FROM profile_samples WHERE time_unix_nano >= ? AND time_unix_nano < ?{where}
        GROUP BY 1 ORDER BY samples DESC LIMIT ?""",
                    [start, end, *([process] if process else []), limit])
