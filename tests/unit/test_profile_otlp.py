"""The OTLP profiles signal: a profile sent to a tiny HTTP server, decoded there with the
official opentelemetry-proto messages and walked back to its stacks."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
    ExportProfilesServiceResponse,
)

from otelbpf.profiling.otlp import OtlpProfilesExporter
from otelbpf.signals.model import Resource
from tests.unit.test_profile_formats import sample_profile


class Server:
    def __init__(self, status: int = 200):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers["Content-Type"], body))
                reply = ExportProfilesServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def decoded_stacks(req: ExportProfilesServiceRequest):
    d = req.dictionary
    s = d.string_table
    assert s[0] == "" and not d.stack_table[0].location_indices  # the zero entries
    profile = req.resource_profiles[0].scope_profiles[0].profiles[0]
    out = {}
    for sample in profile.samples:
        names = tuple(s[d.function_table[d.location_table[i].lines[0].function_index].name_strindex]
                      for i in d.stack_table[sample.stack_index].location_indices)
        attrs = {s[d.attribute_table[i].key_strindex]: d.attribute_table[i].value for i in sample.attribute_indices}
        key = (attrs["process.pid"].int_value, attrs["thread.name"].string_value, names)
        out[key] = out.get(key, 0) + sample.values[0]
    return profile, out


def test_profile_reaches_the_endpoint_and_decodes(server):
    OtlpProfilesExporter(server.url, Resource.of({"host.name": "h1"})).export(sample_profile())
    [(path, content_type, body)] = server.received
    assert path == "/v1development/profiles" and content_type == "application/x-protobuf"
    req = ExportProfilesServiceRequest.FromString(body)
    assert req.resource_profiles[0].resource.attributes[0].key == "host.name"
    profile, stacks = decoded_stacks(req)
    assert stacks == {(7, "worker", ("hot", "caller", "main")): 23,
                      (7, "worker", ("vfs_write", "write_loop", "main")): 5,
                      (9, "other", ("main",)): 3}
    s = req.dictionary.string_table
    assert (s[profile.period_type.type_strindex], s[profile.period_type.unit_strindex]) == ("cpu", "nanoseconds")
    assert profile.period == 1_000_000_000 // 99


def test_refusal_names_the_endpoint_and_status():
    s = Server(status=400)
    try:
        with pytest.raises(OSError, match=r"v1development/profiles refused: HTTP 400"):
            OtlpProfilesExporter(s.url + "/v1development/profiles", Resource()).export(sample_profile())
    finally:
        s.close()
