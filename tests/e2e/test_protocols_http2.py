"""HTTP/2 and gRPC exchanges, through a recording relay: a grpcio server and client with a
service and methods named by the test (unary calls, one failing with a known status, an
unknown method, a server stream), and nginx's h2c with curl --http2-prior-knowledge against
nginx's access log. A recording cut mid-connection (HPACK table unknown) still gives the
later calls, its undecodable header blocks counted."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from otelbpf.protocols.l7 import Connection
from tests.conftest import require, wait_for_port
from tests.l7_relay import Relay, free_port, replay

SERVICE = "otelbpf.test.Echo"
CALLS = 23


class Recorder(grpc.ServerInterceptor):
    """The server's own record of the methods it was asked for."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_service(self, continuation, handler_call_details):
        self.methods.append(handler_call_details.method)
        return continuation(handler_call_details)


@pytest.fixture
def grpc_server():
    def ping(request: bytes, context) -> bytes:
        if request == b"fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"pong:" + request

    def watch(request: bytes, context):
        for i in range(5):
            yield b"tick %d" % i

    recorder = Recorder()
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Ping": grpc.unary_unary_rpc_method_handler(ping),
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
    })
    server = grpc.server(ThreadPoolExecutor(max_workers=2), interceptors=[recorder])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, recorder
    server.stop(0)


def test_grpc_calls_are_exchanges_with_method_and_status(grpc_server):
    port, recorder = grpc_server
    with Relay(port) as relay:
        channel = grpc.insecure_channel(f"127.0.0.1:{relay.port}")
        ping = channel.unary_unary(f"/{SERVICE}/Ping")
        for i in range(CALLS):
            assert ping(b"call %d" % i) == b"pong:call %d" % i
        with pytest.raises(grpc.RpcError) as failed:
            ping(b"fail")
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary(f"/{SERVICE}/Nope")(b"")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert len(list(channel.unary_stream(f"/{SERVICE}/Watch")(b""))) == 5
        channel.close()
        relay.wait_idle()
    [records] = relay.connections
    exchanges, connection = replay(records)
    assert connection.protocol == "http2" and dict(connection.counters) == {}

    assert ["/" + e.operation for e in exchanges] == recorder.methods
    assert len(exchanges) == CALLS + 3
    statuses = [e.attributes["rpc.response.status_code"] for e in exchanges]
    assert statuses == ["OK"] * (CALLS) + ["NOT_FOUND", "UNIMPLEMENTED", "OK"]
    assert [e.error_type for e in exchanges[CALLS:]] == ["NOT_FOUND", "UNIMPLEMENTED", None]
    first = exchanges[0].attributes
    assert first["rpc.system.name"] == "grpc" and first["rpc.method"] == f"{SERVICE}/Ping"
    assert first["network.protocol.version"] == "2" and first["http.response.status_code"] == 200
    assert all(e.complete and e.end_ns > e.start_ns for e in exchanges)

    # Seen from the tenth call on: the dynamic table of the first calls is missing.
    cut = next(i for i, (_, ts, _) in enumerate(records) if ts >= exchanges[9].start_ns)
    late = Connection("http2")
    later = [e for d, t, c in records[cut:] for e in late.feed(d, t, c)]
    assert len(later) == len(exchanges) - 9
    assert late.counters["mid_stream"] == 1 and late.counters["hpack_fields_missing"] >= 1
    assert "hpack_errors" not in late.counters and "malformed" not in late.counters
    # Fields of the static table and literals decode; those of entries added before the cut
    # are missing, and say so.
    assert all(e.attributes["http.request.method"] == "POST" and e.attributes["http.response.status_code"] == 200
               and e.attributes.get("otelbpf.http2.headers_partial") == 1 and e.end_ns > e.start_ns for e in later)
    assert [e.attributes.get("url.path") for e in later if "Nope" in str(e.attributes.get("url.path"))] == \
        [f"/{SERVICE}/Nope"]  # a path first sent after the cut is a literal: it decodes


NGINX_H2C = """
daemon off;
master_process off;
worker_processes 1;
user root;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    log_format h2 '$request_method $uri $status $server_protocol';
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port} http2;
        root {prefix}/www;
        access_log {prefix}/access.log h2;
    }}
}}
"""


def test_h2c_requests_match_nginx_access_log(tmp_path):
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    require(os.path.exists(binary), "nginx is not installed")
    curl = shutil.which("curl")
    require(curl is not None, "curl is not installed")
    (tmp_path / "www").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "www" / "index.html").write_text("hello\n")
    port = free_port()
    (tmp_path / "nginx.conf").write_text(NGINX_H2C.format(prefix=tmp_path, port=port))
    proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        assert wait_for_port(port), "nginx did not start"
        paths = [f"/index.html?n={i}" if i % 4 else f"/missing-{i}" for i in range(CALLS)]
        with Relay(port) as relay:
            for path in paths:  # one connection each: curl 7.88 fails to reuse an h2c prior-knowledge one
                subprocess.run([curl, "-s", "--http2-prior-knowledge", "-o", "/dev/null", f"http://127.0.0.1:{relay.port}{path}"],
                               check=True, timeout=30)
            relay.wait_idle()
    finally:
        proc.terminate()
        proc.wait(10)
    logged = [line.split() for line in (tmp_path / "access.log").read_text().splitlines()]
    assert len(logged) == CALLS and {line[3] for line in logged} == {"HTTP/2.0"}
    exchanges = [e for records in relay.connections for e in replay(records)[0]]
    got = [[e.attributes["http.request.method"], e.attributes["url.path"], str(e.attributes["http.response.status_code"])]
           for e in exchanges]
    assert got == [line[:3] for line in logged]
    assert [e.attributes["http.response.status_code"] for e in exchanges].count(404) == 6
    assert all(e.attributes["network.protocol.version"] == "2" and "rpc.system.name" not in e.attributes for e in exchanges)
