from __future__ import annotations

import pytest

from otelbpf.export.otlp_settings import OtlpSettings


def test_defaults():
    s = OtlpSettings.from_env({})
    assert s.logs.protocol == "http/protobuf"
    assert s.logs.endpoint == "http://localhost:4318/v1/logs"
    assert s.metrics.endpoint == "http://localhost:4318/v1/metrics"
    assert (s.logs.timeout, s.logs.compression, s.max_batch_size, s.batch_timeout) == (10.0, "none", 8192, 0.2)
    assert (s.retry.initial_interval, s.retry.multiplier, s.retry.max_interval, s.retry.max_elapsed) == (5.0, 1.5, 30.0, 300.0)


def test_generic_endpoint_gets_signal_path_and_per_signal_endpoint_is_used_as_given():
    s = OtlpSettings.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318/",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://other:9000/custom",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret, X-Tenant = a ",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "only=logs",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
    })
    assert s.logs.endpoint == "https://collector:4318/v1/logs"
    assert s.traces.endpoint == "https://collector:4318/v1/traces"
    assert s.metrics.endpoint == "http://other:9000/custom"
    assert s.metrics.headers == (("api-key", "s=cret"), ("x-tenant", "a"))
    assert s.logs.headers == (("only", "logs"),)
    assert s.logs.compression == "gzip" and s.logs.timeout == 2.5
    assert s.traces.protocol == "http/json" and s.logs.protocol == "http/protobuf"


def test_grpc_endpoints_and_insecure():
    s = OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",
                               "OTEL_EXPORTER_OTLP_INSECURE": "TRUE"})
    assert s.logs.endpoint == "collector:4317" and s.logs.grpc_target == "collector:4317" and s.logs.insecure
    s = OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert s.logs.endpoint == "http://localhost:4317" and s.logs.insecure
    s = OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c"})
    assert not s.logs.insecure and s.logs.grpc_target == "c:4317"


def test_overrides_win_over_environment():
    s = OtlpSettings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc"},
        {"endpoint": "http://cfg:4318", "logs_protocol": "http/json", "timeout": 3, "headers": {"A": "b"},
         "max_batch_size": 100, "queue_size": 7, "retry_initial_interval": 0.1},
    )
    assert s.logs.endpoint == "http://cfg:4318/v1/logs" and s.logs.protocol == "http/json"
    assert s.logs.timeout == 3.0 and s.logs.headers == (("a", "b"),)
    assert (s.max_batch_size, s.queue_size, s.retry.initial_interval) == (100, 7, 0.1)


def test_certificate_files_must_exist(tmp_path):
    cert = tmp_path / "ca.pem"
    cert.write_text("x")
    s = OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_CERTIFICATE": str(cert)})
    assert s.logs.certificate == str(cert)


@pytest.mark.parametrize(
    ("environ", "overrides", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, {}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'thrift' is not one of grpc"),
        ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "collector:4318"}, {}, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: 'collector:4318' needs "
         "an http:// or https://"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:port"}, {},
         "OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:port' has an invalid port"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://"}, {}, "has no host"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c:1"}, {}, "has scheme ftp"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, {}, "OTEL_EXPORTER_OTLP_TIMEOUT: 'soon' is not a number"),
        ({"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "0"}, {}, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: '0' must be a "
         "positive number of milliseconds"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, {}, "OTEL_EXPORTER_OTLP_COMPRESSION: 'zstd' is not one of gzip, none"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "a=b,broken"}, {}, "OTEL_EXPORTER_OTLP_HEADERS: entry 'broken' is not key=value"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "yes"},
         {}, "OTEL_EXPORTER_OTLP_INSECURE: 'yes' is not true or false"),
        ({"OTEL_EXPORTER_OTLP_CLIENT_KEY": "/nonexistent/key.pem"}, {},
         "OTEL_EXPORTER_OTLP_CLIENT_KEY: file '/nonexistent/key.pem' does not exist"),
        ({}, {"max_batch_size": "many"}, "max_batch_size: 'many' is not an integer"),
        ({}, {"queue_size": 0}, "queue_size: 0 must be at least 1"),
        ({}, {"endpiont": "x"}, "unknown OTLP setting(s) endpiont"),
    ],
)
def test_invalid_values_name_the_variable_and_the_reason(environ, overrides, message):
    with pytest.raises(ValueError) as error:
        OtlpSettings.from_env(environ, overrides)
    assert message in str(error.value)
