"""The OTLP profiles signal through the agent's one OTLP exporter: a profile sent to a tiny
HTTP server, decoded there with the official opentelemetry-proto messages and walked back to
its stacks; the same over gRPC."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
    ExportProfilesServiceResponse,
)

from otelbpf.export.otlp import OtlpExporter
from otelbpf.export.otlp_settings import OtlpSettings
from otelbpf.signals.model import ProfileBatch, Resource
from otelbpf.signals.otlp_profiles import profiles_request
from otelbpf.signals.registry import Registry
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


def export(endpoint: str, *batches: ProfileBatch, protocol: str = "http/protobuf", **overrides) -> Registry:
    registry = Registry()
    settings = OtlpSettings.from_env({}, {"endpoint": endpoint, "protocol": protocol, **overrides})
    exporter = OtlpExporter(settings, registry, signals=("profiles",))
    for batch in batches:
        exporter.export_profiles(batch)
    exporter.shutdown(10)
    return registry


def sent(registry: Registry, counter: str = "otelbpf.exporter.sent") -> int | float:
    return registry.counter(counter).value(signal="profiles", exporter="otlp")


def test_profile_reaches_the_endpoint_and_decodes(server):
    registry = export(server.url, ProfileBatch(Resource.of({"host.name": "h1"}), "otelbpf.sensors.profile",
                                               sample_profile()))
    assert sent(registry) == 3  # items are the profile's samples
    [(path, content_type, body)] = server.received
    assert path == "/v1development/profiles" and content_type == "application/x-protobuf"
    req = ExportProfilesServiceRequest.FromString(body)
    assert req.resource_profiles[0].resource.attributes[0].key == "host.name"
    assert req.resource_profiles[0].scope_profiles[0].scope.name == "otelbpf.sensors.profile"
    profile, stacks = decoded_stacks(req)
    assert stacks == {(7, "worker", ("hot", "caller", "main")): 23,
                      (7, "worker", ("vfs_write", "write_loop", "main")): 5,
                      (9, "other", ("main",)): 3}
    s = req.dictionary.string_table
    assert (s[profile.period_type.type_strindex], s[profile.period_type.unit_strindex]) == ("cpu", "nanoseconds")
    assert profile.period == 1_000_000_000 // 99


def test_profiles_of_two_resources_share_one_dictionary():
    request = profiles_request([ProfileBatch(Resource.of({"host.name": "a"}), "s", sample_profile()),
                                ProfileBatch(Resource.of({"host.name": "b"}), "s", sample_profile())])
    assert [r.resource.attributes[0].value.string_value for r in request.resource_profiles] == ["a", "b"]
    first, second = (r.scope_profiles[0].profiles[0] for r in request.resource_profiles)
    assert [x.stack_index for x in first.samples] == [x.stack_index for x in second.samples]
    assert len(request.dictionary.stack_table) == 1 + 3  # the zero entry and three stacks, once


def test_a_refusal_is_counted_and_names_the_endpoint_and_status(caplog):
    s = Server(status=400)
    try:
        registry = export(s.url, ProfileBatch(Resource(), "s", sample_profile()))
    finally:
        s.close()
    assert sent(registry) == 0 and sent(registry, "otelbpf.exporter.failed") == 3
    assert "v1development/profiles" in caplog.text and "HTTP 400" in caplog.text


def test_profiles_over_grpc_reach_a_grpc_server():
    """A grpcio server with the ProfilesService method (a collector with profiles enabled)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    received = []

    def handle(request: ExportProfilesServiceRequest, context) -> ExportProfilesServiceResponse:
        received.append(request)
        return ExportProfilesServiceResponse()

    method = grpc.unary_unary_rpc_method_handler(handle, ExportProfilesServiceRequest.FromString,
                                                 ExportProfilesServiceResponse.SerializeToString)
    service = "opentelemetry.proto.collector.profiles.v1development.ProfilesService"
    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {"Export": method})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        registry = export(f"http://127.0.0.1:{port}", ProfileBatch(Resource(), "s", sample_profile()), protocol="grpc")
    finally:
        server.stop(0)
    assert sent(registry) == 3
    [request] = received
    assert decoded_stacks(request)[1][(9, "other", ("main",))] == 3
