"""A known workload (processes, HTTP requests, connections) through the agent on its embedded
default (sensors process, network, http): the store holds exactly those rows, and the UI's
RED table and slowest traces show the HTTP sensor's spans (no SDK involved)."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.parse
import uuid

import pytest

from tests.conftest import require, require_tool
from tests.e2e.test_store_agent import start_agent, wait_until
from tests.e2e.test_ui import page

# A plain Python http.server: /items/<n> 200, /boom 500, anything else 404; HTTP/1.0, so each
# request is one connection. The tag in argv finds its exec in the store.
SERVER = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status = 200 if self.path.startswith("/items/") else 500 if self.path == "/boom" else 404
            body = f"{status} {self.path}\\n".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")

# path -> (route the sensor reports, status); 6 + 3 + 3 = 12 requests, one curl process each.
REQUESTS = [(f"/items/{100 + i}", "/items/{id}", 200) for i in range(6)] + \
           [("/boom", "/boom", 500)] * 3 + [("/missing", "/missing", 404)] * 3


@pytest.fixture(scope="module")
def http_agent(tmp_path_factory):
    require(os.geteuid() == 0, "needs root to load BPF programs")
    d = tmp_path_factory.mktemp("http-agent")
    running = start_agent(d / "store.duckdb", d / "agent.log", sensors=["process", "network", "http"],
                          extra_env={"OTELBPF_NETWORK__SAMPLE_INTERVAL": "1", "OTELBPF_HTTP__TLS": "false"})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def workload(http_agent):
    """Starts the server, runs one curl per request, returns what was done."""
    curl = require_tool("curl")
    tag = f"wl{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, tag], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        curls = {}
        for path, _, status in REQUESTS:
            argv = [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"X-Tag: {tag}",
                    f"http://127.0.0.1:{port}{path}"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            assert done.stdout == str(status), done
            curls[tuple(argv)] = status
    finally:
        server.terminate()
        server.wait(10)
    return {"tag": tag, "port": port, "server_pid": server.pid, "curls": curls}


def _spans_sql(port: int, kind: str, columns: str) -> str:
    return (f"SELECT {columns} FROM spans WHERE kind = '{kind}' "
            f"AND CAST(json_extract(attributes, '$.\"server.port\"') AS INTEGER) = {port}")


def test_known_workload_gives_exactly_those_rows(http_agent, workload):
    """Processes, HTTP requests and connections of one workload, each counted exactly."""
    tag, port, n = workload["tag"], workload["port"], len(REQUESTS)
    q = http_agent.query
    # HTTP: one server span per request (python) and one client span per request (curl).
    server_spans = _spans_sql(port, "server", "http_route, http_status, http_method, service, status_code")
    assert wait_until(lambda: len(q(server_spans)) >= n, 30), q("SELECT kind, count(*) FROM spans GROUP BY 1")
    # Connections: one per curl, closed, reported by the network sensor into service_edges.
    edges = (f"SELECT client, sum(requests) FROM service_edges WHERE CAST(json_extract(attributes, "
             f"'$.\"server.port\"') AS INTEGER) = {port} GROUP BY 1")
    assert wait_until(lambda: q(edges) == [("curl", n)], 30), q(edges)
    # Processes: the server and every curl, exec and exit, found by the tag in their argv.
    # (an exit record is matched to its exec through the exec id)
    tagged = (f"SELECT exec_id FROM process_events WHERE event_name = 'process.exec' "
              f"AND array_to_string(command_args, ' ') LIKE '%{tag}%'")
    procs = (f"SELECT event_name, count(*), count(DISTINCT pid) FROM process_events "
             f"WHERE exec_id IN ({tagged}) GROUP BY 1 ORDER BY 1")
    assert wait_until(lambda: q(procs) == [("process.exec", n + 1, n + 1), ("process.exit", n + 1, n + 1)], 30), \
        q(procs)
    time.sleep(2)  # a later flush (or a late duplicate export) would show up now

    rows = q(server_spans)
    assert len(rows) == n
    assert collections.Counter((route, status) for route, status, *_ in rows) == \
        collections.Counter((route, status) for _, route, status in REQUESTS)
    assert {(method, service) for _, _, method, service, _ in rows} == {("GET", os.path.basename(
        os.path.realpath(sys.executable)))}
    assert sorted(code for _, status, *_, code in rows if status == 500) == ["error"] * 3
    client = q(_spans_sql(port, "client", "service, http_status"))
    assert collections.Counter(client) == collections.Counter(("curl", s) for _, _, s in REQUESTS)
    assert q(edges) == [("curl", n)]
    assert q(procs) == [("process.exec", n + 1, n + 1), ("process.exit", n + 1, n + 1)]
    exits = q(f"SELECT pid, exit_code FROM process_events WHERE event_name = 'process.exit' "
              f"AND exec_id IN ({tagged}) AND executable_name = 'curl'")
    assert len(exits) == n and {code for _, code in exits} == {0}


def test_red_table_and_slowest_traces_show_the_http_sensor_spans(http_agent, workload, tmp_path):
    port = workload["port"]
    service = os.path.basename(os.path.realpath(sys.executable))
    assert wait_until(lambda: http_agent.query(_spans_sql(port, "server", "count(*)"))[0][0] == len(REQUESTS), 30)
    dom = page(http_agent, "/traces", tmp_path / "profile", "ui-http-red.png")
    assert 'id="red-table"' in dom and 'id="traces-table"' in dom
    red = dom[dom.index('id="red-table"'):dom.index('id="traces"')]

    def cells(route: str) -> tuple[str, str]:  # requests, errors of one RED row (the route links to its traces)
        q = urllib.parse.urlencode({"service": service, "route": route}).replace("&", "&amp;")
        found = re.search(rf'<td class="">{re.escape(service)}</td><td><a class="route" href="/traces\?{re.escape(q)}">'
                          rf'{re.escape(route)}</a></td><td class="num">(\d+)</td><td class="num">(\d+)</td>', red)
        assert found, red
        return found.groups()
    assert cells("/items/{id}") == ("6", "0")
    assert cells("/boom") == ("3", "3")
    assert cells("/missing") == ("3", "0")
    # A route's link lists the slowest traces of that route: the sensor's three 500s; one opens as its spans.
    trace_ids = {t for (t,) in http_agent.query(_spans_sql(port, "server", "trace_id") + " AND http_status = 500")}
    assert len(trace_ids) == 3
    listed = page(http_agent, "/traces?" + urllib.parse.urlencode({"service": service, "route": "/boom"}),
                  tmp_path / "profile", "ui-http-route-traces.png")
    table = listed[listed.index('id="traces-table"'):]
    assert set(re.findall(r'href="/trace/([0-9a-f]{32})"', table)) == trace_ids, table[:2000]
    detail = page(http_agent, f"/trace/{min(trace_ids)}", tmp_path / "profile", "ui-http-trace.png")
    assert 'id="trace-spans"' in detail and "GET /boom" in detail and 'class="bar error"' in detail
