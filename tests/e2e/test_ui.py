"""The web UI in headless Chromium (Debian) over a running agent, fed by the official SDK."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.e2e.test_store_agent import agent, wait_until, workload  # noqa: F401 - agent is a fixture

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,1000"]

# A separate program with the official OpenTelemetry SDK: OTLP/HTTP and OTLP/gRPC exporters.
SDK_APP = textwrap.dedent("""
    import sys
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    grpc_endpoint, http_endpoint, service, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for exporter, suffix in ((HttpExporter(endpoint=http_endpoint + "/v1/traces"), "http"),
                             (GrpcExporter(endpoint=grpc_endpoint.removeprefix("http://"), insecure=True), "grpc")):
        provider = TracerProvider(resource=Resource.create({"service.name": f"{service}-{suffix}"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("shop")
        for i in range(n):
            status = 500 if i % 5 == 0 else 200
            with tracer.start_as_current_span("GET /checkout/{id}", kind=SpanKind.SERVER, attributes={
                    "http.request.method": "GET", "http.route": "/checkout/{id}",
                    "http.response.status_code": status}) as root:
                with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as db:
                    if status == 500:
                        db.set_status(Status(StatusCode.ERROR, "deadlock"))
            print(f"{root.get_span_context().trace_id:032x}", flush=True)
        provider.shutdown()
""")


def chromium(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after the page's scripts ran (or a screenshot): Chromium run once per page."""
    browser = require_tool("chromium")
    out_flag = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                           *out_flag, url], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def page(agent, path: str, profile: Path, shot: str) -> str:
    """Loads a page with the token (as a user opens the printed URL) and saves a screenshot."""
    ARTIFACTS.mkdir(exist_ok=True)
    url = agent.ui_url.replace("/?token=", f"{path}{'&' if '?' in path else '?'}token=")
    chromium(url, profile, ARTIFACTS / shot)
    assert (ARTIFACTS / shot).stat().st_size > 10_000
    return chromium(url, profile)


def test_pages_refuse_without_the_token(agent, tmp_path):
    base = agent.ui_url.split("/?token=")[0]
    for path in ("/", "/processes", "/traces", "/api/processes"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=10)
        assert refused.value.code == 401
    dom = chromium(base + "/processes", tmp_path / "profile")
    assert "access token required" in dom and "process-tree" not in dom
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + "/processes?token=not-the-token", timeout=10)
    assert refused.value.code == 401


def test_process_view_shows_the_lifecycle_from_the_store(agent, tmp_path):
    tag = f"ui-{uuid.uuid4().hex[:8]}"
    truth = workload(tag, 7)
    assert wait_until(lambda: agent.query(
        f"SELECT count(*) FROM process_events WHERE exit_code IS NOT NULL AND pid IN "
        f"({','.join(map(str, truth))})")[0][0] == 7, 30)
    dom = page(agent, "/processes", tmp_path / "profile", "ui-processes.png")
    assert 'id="process-tree"' in dom
    for pid, (argv, code) in truth.items():
        assert f'data-pid="{pid}" data-exit="{code}"' in dom
        assert " ".join(argv) in dom
    overview = page(agent, "/", tmp_path / "profile", "ui-overview.png")
    assert 'id="summary-table"' in overview and "process_events" not in overview.split("summary-table")[0]


def test_sdk_traces_reach_the_store_and_the_ui(agent, tmp_path):
    service = f"shop-{uuid.uuid4().hex[:6]}"
    app = subprocess.run([sys.executable, "-c", SDK_APP, agent.grpc, agent.http, service, "11"],
                         capture_output=True, text=True, timeout=120)
    assert app.returncode == 0, app.stderr[-2000:]
    trace_ids = app.stdout.split()
    assert len(trace_ids) == 22
    stored = f"SELECT count(*) FROM spans WHERE service LIKE '{service}-%'"
    assert wait_until(lambda: agent.query(stored)[0][0] == 44, 30), agent.query(stored)
    per_service = dict(agent.query(
        f"SELECT service, count(DISTINCT trace_id) FROM spans WHERE service LIKE '{service}-%' GROUP BY 1"))
    assert per_service == {f"{service}-http": 11, f"{service}-grpc": 11}
    red = agent.query(f"SELECT requests, errors FROM ({_red_sql()}) WHERE service = '{service}-http'")
    assert red == [(11, 3)]  # i = 0, 5, 10 answered 500

    dom = page(agent, "/traces", tmp_path / "profile", "ui-traces.png")
    assert 'id="traces-table"' in dom and 'id="red-table"' in dom
    assert f"{service}-http" in dom and "/checkout/{id}" in dom
    detail = page(agent, f"/trace/{trace_ids[0]}", tmp_path / "profile", "ui-trace-detail.png")
    assert 'id="trace-spans"' in detail
    assert "GET /checkout/{id}" in detail and "SELECT orders" in detail and 'class="bar error"' in detail


def _red_sql() -> str:
    return ("SELECT service, count(*) AS requests, count(*) FILTER (WHERE status_code = 'error' "
            "OR http_status >= 500) AS errors FROM spans WHERE kind = 'server' GROUP BY service")
