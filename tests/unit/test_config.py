import re

import pydantic
import pytest

from otelbpf.config import KNOWN_SENSORS, AgentConfig, ConfigError, load_config, parse_host_port


def write(tmp_path, text):
    path = tmp_path / "otelbpf.yaml"
    path.write_text(text)
    return str(path)


def test_defaults():
    cfg = load_config(None, {}, {})
    assert cfg == AgentConfig()
    assert cfg.sensors == sorted(KNOWN_SENSORS)
    assert cfg.otlp_protocol == "grpc"
    assert cfg.prometheus is None and cfg.otlp_endpoint is None and cfg.duration is None
    assert cfg.process.max_args_bytes == 4096
    assert cfg.process.keep_secret_args is False
    assert cfg.process.table_size == 32768
    assert cfg.ringbuf_bytes == 4 * 1024 * 1024
    assert cfg.drain_interval == 0.2 and cfg.metrics_interval == 10.0


def test_precedence_flags_over_env_over_file(tmp_path):
    path = write(tmp_path, "duration: 1\nconsole: true\nprocess:\n  max_args_bytes: 128\n  table_size: 1000\n")
    env = {"OTELBPF_DURATION": "2", "OTELBPF_PROCESS__MAX_ARGS_BYTES": "256"}
    cfg = load_config(path, env, {"duration": 3.5, "console": None})
    assert cfg.duration == 3.5  # flag
    assert cfg.process.max_args_bytes == 256  # env over file
    assert cfg.process.table_size == 1000  # file, untouched by others
    assert cfg.console is True  # a None flag means "not given"


def test_nested_flags_dotted_and_dict():
    assert load_config(None, {}, {"process.max_args_bytes": 999}).process.max_args_bytes == 999
    cfg = load_config(None, {}, {"process": {"keep_secret_args": True}})
    assert cfg.process.keep_secret_args is True and cfg.process.max_args_bytes == 4096


def test_otel_env_vars_and_prefix_override():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    cfg = load_config(None, env, {})
    assert cfg.otlp_endpoint == "http://collector:4318" and cfg.otlp_protocol == "http/protobuf"
    env["OTELBPF_OTLP_PROTOCOL"] = "http/json"
    assert load_config(None, env, {}).otlp_protocol == "http/json"


def test_empty_env_counts_as_unset():
    assert load_config(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTELBPF_DURATION": ""}, {}) == AgentConfig()


def test_env_types():
    env = {"OTELBPF_SENSORS": " process , process", "OTELBPF_CONSOLE": "true", "OTELBPF_PROMETHEUS": "0.0.0.0:9464"}
    cfg = load_config(None, env, {})
    assert cfg.sensors == ["process"] and cfg.console is True and cfg.prometheus == "0.0.0.0:9464"


def test_file_error_names_file_field_and_reason(tmp_path):
    path = write(tmp_path, "process:\n  max_args_bytes: 100000\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, {}, {})
    assert str(exc.value) == f"config file {path}: process.max_args_bytes: must be <= 32768 (got 100000)"


def test_env_error_names_variable():
    with pytest.raises(ConfigError, match=r"environment variable OTELBPF_PROCESS__MAX_ARGS_BYTES: "
                                          r"process.max_args_bytes: must be >= 64 \(got '10'\)"):
        load_config(None, {"OTELBPF_PROCESS__MAX_ARGS_BYTES": "10"}, {})
    with pytest.raises(ConfigError, match="environment variable OTELBPF_DURATION: duration: must be a number"):
        load_config(None, {"OTELBPF_DURATION": "soon"}, {})


def test_flag_error_names_flag():
    with pytest.raises(ConfigError, match="flag --otlp-protocol: otlp_protocol: must be one of"):
        load_config(None, {}, {"otlp_protocol": "udp"})


def test_unknown_keys_are_errors(tmp_path):
    path = write(tmp_path, "sensors: [process]\nprocess:\n  max_arg_bytes: 10\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: process.max_arg_bytes: unknown setting"):
        load_config(path, {}, {})
    with pytest.raises(ConfigError, match="environment variable OTELBPF_SENSOR: sensor: unknown setting"):
        load_config(None, {"OTELBPF_SENSOR": "process"}, {})


def test_unknown_sensor():
    known = ", ".join(sorted(KNOWN_SENSORS))  # sensors land concurrently: do not hard-code them
    with pytest.raises(ConfigError, match=re.escape(f"flag --sensors: sensors: unknown sensor teleport (known: {known})")):
        load_config(None, {}, {"sensors": ["process", "teleport"]})
    with pytest.raises(ConfigError, match="needs at least one sensor"):
        load_config(None, {}, {"sensors": []})


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "duration: 1\nprocess:\n  max_args_bytes: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: line \d+, column \d+: invalid YAML"):
        load_config(path, {}, {})
    path = write(tmp_path, "duration: 1\n  bad: indent\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: line 2, column \d+: invalid YAML"):
        load_config(path, {}, {})


def test_file_must_be_mapping_and_readable(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- process\n"), {}, {})
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(str(tmp_path / "missing.yaml"), {}, {})
    assert load_config(write(tmp_path, "# nothing\n"), {}, {}) == AgentConfig()


@pytest.mark.parametrize("size", [0, 3 * 4096, 1000, 2048])
def test_ringbuf_must_be_power_of_two_page_multiple(size):
    with pytest.raises(ConfigError, match="ringbuf_bytes: must be a power of two"):
        load_config(None, {}, {"ringbuf_bytes": size})


def test_ringbuf_accepts_larger_power_of_two():
    assert load_config(None, {"OTELBPF_RINGBUF_BYTES": str(1 << 24)}, {}).ringbuf_bytes == 1 << 24


@pytest.mark.parametrize("bad", ["9464", "host:", "host:70000", "host:http"])
def test_prometheus_address_validated(bad):
    with pytest.raises(ConfigError, match="environment variable OTELBPF_PROMETHEUS: prometheus: must be host:port"):
        load_config(None, {"OTELBPF_PROMETHEUS": bad}, {})


def test_parse_host_port():
    assert parse_host_port("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_host_port(":9464") == ("", 9464)
    assert parse_host_port("[::1]:9464") == ("::1", 9464)


@pytest.mark.parametrize("bad", ["collector:4317", "ftp://x", "http://"])
def test_otlp_endpoint_must_be_url(bad):
    with pytest.raises(ConfigError, match="environment variable OTEL_EXPORTER_OTLP_ENDPOINT: otlp_endpoint: "
                                          "must be a URL"):
        load_config(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": bad}, {})


def test_several_errors_reported_together(tmp_path):
    path = write(tmp_path, "duration: -1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, {"OTELBPF_DRAIN_INTERVAL": "0"}, {})
    lines = str(exc.value).splitlines()
    assert lines == [
        f"config file {path}: duration: must be > 0 (got -1)",
        "environment variable OTELBPF_DRAIN_INTERVAL: drain_interval: must be > 0 (got '0')",
    ]


def test_config_is_frozen():
    cfg = load_config(None, {}, {})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.duration = 3
