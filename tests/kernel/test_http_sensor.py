"""The HTTP sensor against a Python HTTP/1.1 server the test starts: keep-alive, pipelining,
chunked, HEAD, 100-continue, a 1 MB response, a close mid-response, and curl's client spans.
The test process itself is the agent (its own traffic is not traced), so it can play clients
whose server spans are checked; curl plays the client whose CLIENT spans are checked."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from otelbpf.pipeline.span_metrics import DURATION_BOUNDS
from otelbpf.sensors.base import running
from otelbpf.sensors.http import HttpSensor, Selection, parse_ports
from otelbpf.signals.model import Resource, SpanKind, StatusCode
from otelbpf.signals.registry import Registry
from tests.conftest import require_tool, wait_for_port
from tests.http_pipeline import http_sensor


def traced_sensor(emit, registry, resource, **options) -> HttpSensor:
    """The sensor with no agent to leave out: the test process is a client here, and its
    servers are not the agent's peers (agent_pid=0)."""
    return http_sensor(emit, registry, resource, agent_pid=0, **options)

SERVER = textwrap.dedent("""
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args): pass
        def _body(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        def do_HEAD(self): self._body(200, b"x" * 10)
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._body(201, b"made")
        def do_GET(self):
            if self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (b"hello", b"world"):
                    self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
                self.wfile.write(b"0\\r\\n\\r\\n")
            elif self.path == "/big":
                self._body(200, b"y" * (1 << 20))
            elif self.path == "/front":  # calls its own /back on this thread, then answers
                import http.client
                down = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
                down.request("GET", "/back")
                down.getresponse().read()
                down.close()
                self._body(200, b"front")
            elif self.path == "/hangup":
                self.wfile.flush(); self.connection.shutdown(2); self.close_connection = True
            else:
                self._body(404 if "missing" in self.path else 200, b"ok")

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    wait_for_port(port)
    yield proc, port
    proc.terminate()
    proc.wait(timeout=10)


def spans_of(batches, pid: int, kind: SpanKind) -> list:
    return sorted((s for b in batches if dict(b.resource.attributes).get("process.pid") == pid
                   for s in b.spans if s.kind is kind), key=lambda s: s.start_time_unix_nano)


def exchange(port: int, payload: bytes, expect_responses: int) -> bytes:
    """Sends payload on one connection and reads until expect_responses status lines came."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"HTTP/1.1 ") < expect_responses and time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        return data


def test_keep_alive_pipelining_chunked_head_continue_big(server):
    proc, port = server
    batches: list = []
    registry = Registry()
    # Only the test's server is traced: the machine is shared, and the histogram below counts
    # by executable name, so every other Python process serving HTTP here would add to it
    # (the cause of this test's old flake: 12 histogram counts for 10 spans).
    selection = Selection(parse_ports(str(port)))
    with running(traced_sensor(batches.append, registry, Resource.of({"host.name": "t"}), selection=selection)):
        pipelined = b"".join(f"GET /p/{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(5))
        exchange(port, pipelined, 5)
        exchange(port, b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\nHEAD /h HTTP/1.1\r\nHost: a\r\n\r\n", 2)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # 100-continue, then the body
            s.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 100")
            s.sendall(b"body")
            assert b"201" in s.recv(4096)
        exchange(port, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /missing/7 HTTP/1.1\r\nHost: a\r\n\r\n", 2)
        time.sleep(0.3)
    spans = spans_of(batches, proc.pid, SpanKind.SERVER)
    got = [(s.attributes["url.path"], s.attributes.get("http.response.status_code")) for s in spans]
    assert sorted(got) == sorted([(f"/p/{i}", 200) for i in range(5)] + [
        ("/chunked", 200), ("/h", 200), ("/up", 201), ("/big", 200), ("/missing/7", 404)])
    assert {s.attributes["http.route"] for s in spans if s.attributes["url.path"].startswith("/p/")} == {"/p/{id}"}
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano for s in spans)
    assert all(s.status_code is StatusCode.UNSET for s in spans)  # 404 is no server error
    points = [p for p in registry.histogram("http.server.request.duration", "", "s", DURATION_BOUNDS).points()
              if p.attributes["process.executable.name"].startswith("python")]
    assert sum(p.count for p in points) == len(spans)


def test_a_request_sent_while_serving_is_a_child_of_the_server_span(server):
    """The same-thread heuristic end to end: the kernel must hand such a server request to the
    agent before the client exchange it contains (it keeps requests for pairing otherwise)."""
    proc, port = server
    registry = Registry()
    batches: list = []
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with running(traced_sensor(batches.append, registry, Resource.of({"host.name": "t"}))):
        for i in range(3):
            header = f"traceparent: {incoming}\r\n" if i == 0 else ""
            exchange(port, f"GET /front HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n".encode(), 1)
        # and plain keep-alive requests, which the kernel pairs itself
        exchange(port, b"GET /k/1 HTTP/1.1\r\nHost: x\r\n\r\n", 1)
        time.sleep(0.3)
    servers = spans_of(batches, proc.pid, SpanKind.SERVER)
    fronts = [s for s in servers if s.attributes["url.path"] == "/front"]
    downs = [s for s in spans_of(batches, proc.pid, SpanKind.CLIENT) if s.attributes["url.full"].endswith("/back")]
    assert len(fronts) == 3 and len(downs) == 3
    children = {d.parent_span_id: d for d in downs}
    for front in fronts:
        down = children[front.span_id]
        assert down.trace_id == front.trace_id
        assert front.start_time_unix_nano <= down.start_time_unix_nano <= down.end_time_unix_nano \
            <= front.end_time_unix_nano
    assert fronts[0].trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    backs = [s for s in servers if s.attributes["url.path"] == "/back"]
    assert len(backs) == 3
    assert registry.counter("otelbpf.http.kernel_exchanges").value() > 0


def test_a_server_in_a_container_cgroup_has_its_container_id(server):
    """A real cgroup v2 directory named as Docker names a container's scope, the server moved
    into it: its spans' resource carries that id."""
    from otelbpf.enrich.containers import find_cgroup2_root

    proc, port = server
    root = find_cgroup2_root()
    assert root, "no cgroup v2 hierarchy mounted"
    container = "c0ffee" * 10 + "abcd"
    scope = Path(root, f"docker-{container}.scope")
    scope.mkdir()
    try:
        Path(scope, "cgroup.procs").write_text(str(proc.pid))
        batches: list = []
        with running(traced_sensor(batches.append, Registry(), Resource.of({"host.name": "t"}))):
            exchange(port, b"GET /in-container HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1)
            time.sleep(0.3)
        resources = [dict(b.resource.attributes) for b in batches
                     if any(s.attributes.get("url.path") == "/in-container" for s in b.spans)]
        assert [r.get("container.id") for r in resources] == [container]
        assert resources[0]["process.pid"] == proc.pid
    finally:
        Path(root, "cgroup.procs").write_text(str(proc.pid))  # back to the root, so the scope can go
        scope.rmdir()


@pytest.mark.parametrize("capture_bytes", [8192, 64])
def test_capture_size_is_what_is_copied(server, capture_bytes):
    """The largest capture carries a 6,000-byte header whole; a small one still gives the span."""
    proc, port = server
    agent = "probe/" + "u" * 6000
    batches: list = []
    with running(traced_sensor(batches.append, Registry(), Resource.of({"host.name": "t"}),
                            capture_bytes=capture_bytes)):
        exchange(port, f"GET /long HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\n\r\n".encode(), 1)
        time.sleep(0.3)
    spans = [s for s in spans_of(batches, proc.pid, SpanKind.SERVER) if s.attributes["url.path"] == "/long"]
    assert len(spans) == 1
    assert spans[0].attributes.get("http.response.status_code") == 200
    if capture_bytes == 8192:
        assert spans[0].attributes["user_agent.original"] == agent
    else:
        assert len(spans[0].attributes.get("user_agent.original", "")) < 64


def test_curl_client_spans_and_a_hangup(server):
    proc, port = server
    curl = require_tool("curl")
    batches: list = []
    with running(traced_sensor(batches.append, Registry(), Resource.of({"host.name": "t"}))):
        for i in range(3):
            subprocess.run([curl, "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/c/{i}"], check=True, timeout=10)
        subprocess.run([curl, "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/hangup"], timeout=10)
        time.sleep(0.3)
    clients = sorted((s for b in batches if dict(b.resource.attributes)["service.name"] == "curl"
                      for s in b.spans if s.attributes.get("server.port") == port), key=lambda s: s.start_time_unix_nano)
    assert [s.kind for s in clients] == [SpanKind.CLIENT] * 4
    assert [s.attributes["url.full"] for s in clients[:3]] == [f"http://127.0.0.1:{port}/c/{i}" for i in range(3)]
    assert clients[3].attributes["error.type"] == "connection_closed"
    servers = spans_of(batches, proc.pid, SpanKind.SERVER)
    assert [s.attributes["url.path"] for s in servers] == ["/c/0", "/c/1", "/c/2", "/hangup"]


def test_selection_by_port_traces_only_the_selected_server(server):
    _proc, port = server
    other_proc = subprocess.Popen([sys.executable, "-c", SERVER, str(other := free_port())])
    try:
        time.sleep(0.5)
        batches: list = []
        selection = Selection(parse_ports(f"{port}"))
        with running(traced_sensor(batches.append, Registry(), Resource.of({}), selection=selection)):
            exchange(port, b"GET /yes HTTP/1.1\r\nHost: a\r\n\r\n", 1)
            exchange(other, b"GET /no HTTP/1.1\r\nHost: a\r\n\r\n", 1)
            time.sleep(0.3)
        paths = {s.attributes.get("url.path") for b in batches for s in b.spans}
        assert "/yes" in paths and "/no" not in paths
    finally:
        other_proc.terminate()
        other_proc.wait(timeout=10)


def test_parse_ports_errors_name_the_part():
    assert parse_ports("80,443,8000-8002") == {80, 443, 8000, 8001, 8002}
    with pytest.raises(ValueError, match="'9-1'"):
        parse_ports("9-1")


AIOHTTP_SERVER = textwrap.dedent("""
    import sys
    from aiohttp import web

    async def item(request):
        return web.Response(text="item " + request.match_info["n"])

    async def chunked(request):
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"hello", b"world"):
            await response.write(part)
        await response.write_eof()
        return response

    async def fail(request):
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_get("/items/{n}", item)  # also answers HEAD
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/fail", fail)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""")


def test_aiohttp_keep_alive_and_pipelining():
    """An asyncio server (aiohttp): pipelined requests on keep-alive connections, a chunked
    response, HEAD, and a 503 as a server error."""
    pytest.importorskip("aiohttp")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", AIOHTTP_SERVER, str(port)])
    try:
        wait_for_port(port, timeout=15)
        batches: list = []
        selection = Selection(parse_ports(str(port)))
        with running(traced_sensor(batches.append, Registry(), Resource.of({}), selection=selection)):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # one keep-alive connection
                for batch in (range(7), range(7, 13)):  # 7 then 6 pipelined requests
                    s.sendall(b"".join(f"GET /items/{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in batch))
                    data = b""
                    while data.count(b"HTTP/1.1 200") < len(batch):
                        chunk = s.recv(65536)
                        assert chunk, data
                        data += chunk
                s.sendall(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\nHEAD /items/99 HTTP/1.1\r\nHost: a\r\n\r\n"
                          b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\n")
                data = b""
                while b"HTTP/1.1 503" not in data:
                    chunk = s.recv(65536)
                    assert chunk, data
                    data += chunk
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    spans = spans_of(batches, proc.pid, SpanKind.SERVER)
    got = [(s.attributes["http.request.method"], s.attributes["url.path"], s.attributes.get("http.response.status_code"))
           for s in spans]
    assert got == [("GET", f"/items/{i}", 200) for i in range(13)] + [
        ("GET", "/chunked", 200), ("HEAD", "/items/99", 200), ("GET", "/fail", 503)]
    assert {s.attributes["http.route"] for s in spans[:13]} == {"/items/{id}"}
    # The kernel sends a connection's addresses with its first message only: every span of the
    # one connection still has them.
    assert {(s.attributes["network.peer.address"], s.attributes["client.address"]) for s in spans} == \
        {("127.0.0.1", "127.0.0.1")}
    assert len({s.attributes["network.peer.port"] for s in spans}) == 1 and spans[0].attributes["network.peer.port"]
    assert spans[-1].status_code is StatusCode.ERROR and spans[-1].attributes["error.type"] == "503"
    assert all(s.status_code is StatusCode.UNSET for s in spans[:-1])


SENDFILE_CLIENT = textwrap.dedent("""
    import os, socket, sys, tempfile
    listener = socket.create_server(("127.0.0.1", 0))
    out = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    with tempfile.TemporaryFile() as f:
        f.write(b"z" * 100); f.flush()
        for _ in range(23):
            os.sendfile(out.fileno(), f.fileno(), 0, 100)
            peer.recv(100)
        r, w = os.pipe()
        for _ in range(7):  # file -> pipe -> socket: only the splice into the socket counts
            os.splice(f.fileno(), w, 100, offset_src=0)
            os.splice(r, out.fileno(), 100)
            peer.recv(100)
""")


def test_sendfile_and_splice_into_sockets_are_counted():
    registry = Registry()
    with running(traced_sensor(lambda batch: None, registry, Resource.of({}))):
        subprocess.run([sys.executable, "-c", SENDFILE_CLIENT], check=True, timeout=30)
        time.sleep(0.2)
    counter = registry.counter("otelbpf.http.zero_copy_sends")
    # Other processes on the machine may send files too: at least ours are there.
    assert counter.value({"syscall": "sendfile"}) >= 23
    assert counter.value({"syscall": "splice"}) >= 7


def test_libssl_uprobes_attach_all_or_none(tmp_path, caplog):
    """A libssl without SSL_read_ex: the uprobes that did attach are taken off again, and the
    warning names the library and the symbol."""
    import logging

    gcc = require_tool("gcc")
    source = tmp_path / "fakessl.c"
    source.write_text("int SSL_read(void *s, void *b, int n) { return n; }\n"
                      "int SSL_write(void *s, const void *b, int n) { return n; }\n")
    library = tmp_path / "libfakessl.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True, timeout=60)
    sensor = traced_sensor(lambda batch: None, Registry(), Resource.of({}), libssl=str(library))
    with caplog.at_level(logging.WARNING, logger="otelbpf"), running(sensor):
        uprobes = [link for link in sensor._obj.links if "uprobe" in link.description]
        assert not sensor.tls_attached and uprobes == []
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "otelbpf"]
    assert f"{library}:SSL_read_ex" in warning and "none of the 8 libssl uprobes" in warning
