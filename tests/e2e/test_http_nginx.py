"""The HTTP sensor against nginx (plain and TLS) under wrk and curl: nginx's access log is
the ground truth for counts, methods, paths, statuses and durations."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from otelbpf.sensors.base import running
from otelbpf.sensors.http import HttpSensor
from otelbpf.signals.model import Resource, SpanKind
from otelbpf.signals.registry import Registry
from tests.conftest import require, require_tool, wait_for_port
from tests.http_pipeline import http_sensor

TRACE_IDS = [f"{i:032x}" for i in range(0x1000, 0x1000 + 23)]

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
user root;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    log_format timed '$request_method $uri $status $request_time $msec';
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        root {prefix}/www;
        access_log {prefix}/access.log timed;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(tmp_path):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    require(binary is not None, "nginx is not installed (apt-get install nginx-light)")
    require_tool("openssl")
    (tmp_path / "www").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "www" / "index.html").write_text("hello\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=30)
    port, tls_port = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=tmp_path, port=port, tls_port=tls_port))
    proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.PIPE)
    if not wait_for_port(port):
        proc.kill()
        pytest.fail(f"nginx did not start: {proc.stderr.read().decode()[-500:]}")
    yield proc, port, tls_port, tmp_path / "access.log"
    proc.terminate()
    proc.wait(timeout=10)


def server_spans(batches, pid: int) -> list:
    return sorted((s for b in batches if dict(b.resource.attributes).get("process.pid") == pid
                   for s in b.spans if s.kind is SpanKind.SERVER), key=lambda s: s.end_time_unix_nano)


def access_log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def sensor(batches: list, ringbuf_bytes: int = 4 << 20) -> HttpSensor:
    return http_sensor(batches.append, Registry(), Resource.of({"host.name": "test"}), ringbuf_bytes=ringbuf_bytes)


def test_curl_requests_match_the_access_log_line_by_line(nginx):
    proc, port, _, log_path = nginx
    curl = require_tool("curl")
    batches: list = []
    paths = [("/index.html" if i % 3 else f"/missing/{i}") for i in range(23)]
    with running(sensor(batches)):
        for i, path in enumerate(paths):
            subprocess.run([curl, "-s", "-o", "/dev/null", "-H", f"traceparent: 00-{TRACE_IDS[i]}-{i + 1:016x}-01",
                            f"http://127.0.0.1:{port}{path}"], check=True, timeout=10)
        subprocess.run([curl, "-s", "-o", "/dev/null", "-I", f"http://127.0.0.1:{port}/index.html"], timeout=10)
        time.sleep(0.3)
    spans = server_spans(batches, proc.pid)
    lines = access_log(log_path)
    assert len(spans) == len(lines) == 24
    for span, (method, uri, status, request_time, _) in zip(spans, lines):
        assert span.attributes["http.request.method"] == method
        assert span.attributes["url.path"] == uri
        assert span.attributes["http.response.status_code"] == int(status)
        duration = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
        assert abs(duration - float(request_time)) <= 0.001 + 0.1 * float(request_time)
    # 23 traceparents: each server span is in that trace, its parent the header's span id
    for i, span in enumerate(spans[:23]):
        assert span.trace_id.hex() == TRACE_IDS[i]
        assert span.parent_span_id.hex() == f"{i + 1:016x}"
    assert spans[-1].attributes["http.request.method"] == "HEAD"
    clients = [s for b in batches if dict(b.resource.attributes)["service.name"] == "curl" for s in b.spans]
    assert len([s for s in clients if s.kind is SpanKind.CLIENT and s.attributes["server.port"] == port]) == 24
    # the client span sent the traceparent: the server span's parent is the client span
    client_ids = {s.span_id for s in clients}
    assert all(s.parent_span_id in client_ids for s in spans[:23])


def test_wrk_load_span_count_equals_access_log_count(nginx):
    proc, port, _, log_path = nginx
    wrk = require_tool("wrk")
    batches: list = []
    with running(sensor(batches, ringbuf_bytes=64 << 20), poll_interval=0.02) as s:
        subprocess.run([wrk, "-t1", "-c8", "-d2s", f"http://127.0.0.1:{port}/index.html"],
                       check=True, capture_output=True, timeout=30)
        time.sleep(0.5)
    spans = server_spans(batches, proc.pid)
    lines = access_log(log_path)
    assert len(lines) > 1000
    assert len(spans) == len(lines)
    assert {(sp.attributes["url.path"], sp.attributes["http.response.status_code"]) for sp in spans} == \
        {("/index.html", 200)}
    assert s.tls_attached


def test_https_gives_the_same_spans_as_plain_http(nginx):
    proc, _, tls_port, log_path = nginx
    curl = require_tool("curl")
    batches: list = []
    with running(sensor(batches)) as s:
        require(s.tls_attached, "libssl uprobes could not be attached")
        for i in range(7):
            path = "/index.html" if i % 2 else "/nope"
            subprocess.run([curl, "-sk", "-o", "/dev/null", f"https://localhost:{tls_port}{path}"],
                           check=True, timeout=10)
        time.sleep(0.3)
    spans = server_spans(batches, proc.pid)
    lines = access_log(log_path)
    assert len(spans) == len(lines) == 7
    for span, (method, uri, status, _, _) in zip(spans, lines):
        assert span.attributes["url.scheme"] == "https"
        assert (span.attributes["http.request.method"], span.attributes["url.path"],
                span.attributes["http.response.status_code"]) == (method, uri, int(status))
    clients = [s for b in batches if dict(b.resource.attributes)["service.name"] == "curl" for s in b.spans]
    assert len([c for c in clients if c.attributes.get("url.scheme") == "https"]) == 7


def test_otelbpf_http_once_prints_red_per_route_and_the_slowest(nginx):
    """`otelbpf http --once --duration S`: the live view's one-shot mode, as a user runs it."""
    import sys

    _, port, _, _ = nginx
    curl = require_tool("curl")
    env = dict(os.environ, COLUMNS="200")
    view = subprocess.Popen([sys.executable, "-m", "otelbpf", "http", "--once", "--duration", "4", "--top", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = view.stderr.readline()  # printed once the BPF programs are attached
        assert "watching" in line, line + view.stderr.read()
        for _ in range(23):
            subprocess.run([curl, "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/index.html"], check=True, timeout=10)
        for i in range(7):
            subprocess.run([curl, "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/missing/{i}"], check=True,
                           timeout=10)
        out, err = view.communicate(timeout=60)
    finally:
        if view.poll() is None:
            view.kill()
    assert view.returncode == 0, err
    rows = [line.split("│") for line in out.splitlines() if "nginx" in line]
    cells = [[c.strip() for c in row] for row in rows]
    red = {row[2]: row[3] for row in cells if len(row) > 7 and row[2].startswith("GET ")}
    assert red.get("GET /index.html") == "23", out
    assert red.get("GET /missing/{id}") == "7", out
    assert "Slowest requests" in out
