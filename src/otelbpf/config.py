"""Agent configuration: defaults < YAML file < environment < command-line flags.

YAML file: keys are the field names below; nested models are nested mappings; unknown keys
are errors.

    sensors: [process]
    otlp_endpoint: http://collector:4317
    process:
      max_args_bytes: 8192

Environment: ``OTELBPF_<FIELD>`` sets a top-level field and ``OTELBPF_<MODEL>__<FIELD>`` a
nested one (``OTELBPF_DURATION=30``, ``OTELBPF_PROCESS__MAX_ARGS_BYTES=8192``). Lists are
comma separated (``OTELBPF_SENSORS=process,network``). The OpenTelemetry variables
``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_PROTOCOL`` set ``otlp_endpoint``
and ``otlp_protocol``; ``OTELBPF_OTLP_ENDPOINT``/``OTELBPF_OTLP_PROTOCOL`` win over them.
As in the OpenTelemetry SDKs, a variable set to the empty string counts as unset. An
``OTELBPF_`` variable that names no field is an error, like an unknown key in the file.

Flags: a mapping from dotted field path (``"duration"``, ``"process.max_args_bytes"``) or
field name to value, as the CLI parsed them; ``None`` means "flag not given". Errors name
them as ``--process.max-args-bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

# Add a sensor's name here when its sensor lands; the default is to run all of them.
KNOWN_SENSORS: frozenset[str] = frozenset({"process", "profile", "network", "http", "security"})

ENV_PREFIX = "OTELBPF_"
# Standard OpenTelemetry variables, read before the OTELBPF_ ones so those override them.
OTEL_ENV_ALIASES: dict[str, str] = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otlp_endpoint",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "otlp_protocol",
}

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ConfigError(ValueError):
    """Invalid configuration; the message names the source, the field and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcessSensorConfig(_Model):
    max_args_bytes: int = Field(4096, ge=64, le=32768)
    keep_secret_args: bool = False  # True exports arguments without redaction
    table_size: int = Field(32768, ge=64, le=4_194_304)


class NetworkSensorConfig(_Model):
    sample_interval: float = Field(10.0, gt=0, le=3600)  # seconds between counter reads of open connections
    capture_dns: bool = True  # copy UDP port 53 payloads to parse DNS lookups
    connection_logs: bool = False  # a log record per closed connection, not only metrics


class HttpSensorConfig(_Model):
    capture_bytes: int = Field(256, ge=16, le=8192)  # first bytes of each HTTP message copied from the kernel
    open_ports: str | None = None  # e.g. "80,443,8000-8999": processes with one of these ports open
    executable: str | None = None  # glob on the executable path or name, e.g. "*/nginx"
    tls: bool = True  # uprobes on libssl for HTTPS

    @field_validator("open_ports")
    @classmethod
    def _ports(cls, spec: str | None) -> str | None:
        if spec is not None:
            from otelbpf.sensors.http import parse_ports  # validated where it is used

            parse_ports(spec)
        return spec


class StoreConfig(_Model):
    """The embedded store, on when no collector is configured."""

    path: str = "otelbpf.duckdb"
    retention_age: float = Field(86400.0, gt=0)  # seconds rows are kept
    retention_bytes: int = Field(1 << 30, ge=64 << 20)  # bytes in use before the oldest rows go
    flush_interval: float = Field(1.0, gt=0, le=60)  # seconds; a crash loses at most this much


class ProfileSensorConfig(_Model):
    hz: int = Field(19, ge=1, le=1000)  # samples per second per CPU
    interval: float = Field(10.0, ge=1, le=3600)  # seconds covered by each profile
    max_stacks: int = Field(16384, ge=256, le=262144)  # distinct stacks kept in the kernel per interval
    output_dir: str | None = None  # each profile as DIR/cpu-<time>.pb.gz (pprof); not written when None
    otlp_endpoint: str | None = None  # OTLP/HTTP profiles endpoint; None: derived from otlp_endpoint when set


class SecuritySensorConfig(_Model):
    """Security policies (otelbpf.security.policy); reloaded on SIGHUP or when a file changes."""

    shipped_policies: bool = True  # the shipped report-only defaults (sensitive files, outbound, modules, setuid)
    policies: list[str] = Field(default_factory=list)  # policy files
    policy_dir: str | None = None  # every *.yaml in it
    enforce: bool = False  # sigkill/signal actions act only when true; otherwise they are reported


class IdentityConfig(_Model):
    """Who each process is (enrich.identity): the service.name rules and the container runtimes."""

    otel_environment: bool = True  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES in the process's environment
    compose_labels: bool = True  # com.docker.compose.service/project of the process's container
    systemd_unit: bool = True  # the unit of the process's cgroup: nginx.service -> nginx
    pod_annotations: bool = True  # resource.opentelemetry.io/service.name and .namespace
    well_known_labels: bool = True  # app.kubernetes.io/instance, then app.kubernetes.io/name
    owners: bool = True  # the pod's deployment, replicaset, statefulset, daemonset, cronjob, job
    containerd_socket: str | None = "/run/containerd/containerd.sock"  # None: not asked
    containerd_namespaces: list[str] = Field(default_factory=lambda: ["k8s.io"])
    docker_socket: str | None = "/var/run/docker.sock"  # None: not asked
    crio_socket: str | None = "/var/run/crio/crio.sock"  # None: not asked
    runtime_timeout: float = Field(0.5, gt=0, le=10)  # seconds a runtime may take to answer
    max_containers: int = Field(4096, ge=16, le=1_000_000)  # containers remembered
    node_name: str | None = None  # k8s.node.name; None: K8S_NODE_NAME, else the host name (kubelet's default)
    kubernetes_api: bool = True  # this node's pods and their owners from the API, where a service account is mounted

    @field_validator("containerd_namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value


class AgentConfig(_Model):
    sensors: list[str] = Field(default_factory=lambda: sorted(KNOWN_SENSORS))
    duration: float | None = Field(None, gt=0)  # seconds; None runs until stopped
    otlp_endpoint: str | None = None
    otlp_protocol: Literal["grpc", "http/protobuf", "http/json"] = "grpc"
    prometheus: str | None = None  # "host:port" serving /metrics; off when None
    health: str | None = None  # "host:port" serving /healthz and /readyz (Kubernetes probes); off when None
    jsonl_path: str | None = None
    console: bool | None = None  # one line per event on stdout; None: on only without a collector
    console_view: Literal["compact", "full"] = "compact"  # full: every attribute, and the metrics
    process: ProcessSensorConfig = Field(default_factory=ProcessSensorConfig)
    network: NetworkSensorConfig = Field(default_factory=NetworkSensorConfig)
    profile: ProfileSensorConfig = Field(default_factory=ProfileSensorConfig)
    security: SecuritySensorConfig = Field(default_factory=SecuritySensorConfig)
    http: HttpSensorConfig = Field(default_factory=HttpSensorConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    ui: str = "127.0.0.1:4380"  # the local web UI (with the store); loopback only
    # Shared by all sensors: size of each BPF ring buffer and how often it is drained.
    ringbuf_bytes: int = 4 * 1024 * 1024
    drain_interval: float = Field(0.2, gt=0, le=60)
    metrics_interval: float = Field(10.0, gt=0)
    # The memory limiter in front of the sinks: above the limit less the spike allowance
    # (a fifth of it unless set), events, spans and profiles are refused and counted.
    memory_limit_mib: int = Field(512, ge=64)
    memory_spike_mib: int | None = Field(None, ge=0)

    @field_validator("sensors", mode="before")
    @classmethod
    def _split_sensor_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("sensors")
    @classmethod
    def _known_sensors(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError(f"needs at least one sensor (known: {', '.join(sorted(KNOWN_SENSORS))})")
        unknown = [n for n in names if n not in KNOWN_SENSORS]
        if unknown:
            raise ValueError(
                f"unknown sensor {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_SENSORS))})"
            )
        return list(dict.fromkeys(names))  # drop duplicates, keep order

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_is_url(cls, url: str | None) -> str | None:
        if url is not None:
            scheme, sep, rest = url.partition("://")
            if not sep or scheme not in ("http", "https") or not rest.strip("/"):
                raise ValueError("must be a URL like http://collector:4317 (scheme http or https)")
        return url

    @field_validator("prometheus", "health")
    @classmethod
    def _prometheus_is_host_port(cls, address: str | None) -> str | None:
        if address is not None:
            parse_host_port(address)
        return address

    @field_validator("ui")
    @classmethod
    def _ui_is_loopback(cls, address: str) -> str:
        parse_ui_address(address)
        return address

    @field_validator("ringbuf_bytes")
    @classmethod
    def _ringbuf_size(cls, size: int) -> int:
        if size <= 0 or size & (size - 1) or size % PAGE_SIZE:
            raise ValueError(f"must be a power of two and a multiple of the page size {PAGE_SIZE}")
        return size

    @field_validator("memory_spike_mib")
    @classmethod
    def _spike_below_limit(cls, spike: int | None, info: ValidationInfo) -> int | None:
        limit = info.data.get("memory_limit_mib")
        if spike is not None and limit is not None and spike >= limit:
            raise ValueError(f"must be below memory_limit_mib ({limit})")
        return spike


def parse_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" ("[::1]:9464", ":9464" for all interfaces) or raise ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port with a port in 1..65535, e.g. 0.0.0.0:9464")
    return host.strip("[]"), int(port)


def parse_ui_address(address: str) -> tuple[str, int]:
    """Split a loopback "host:port" for the UI (port 0 picks a free one) or raise ValueError."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:4380 (port 0 picks a free one)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the UI serves loopback only: use 127.0.0.1:PORT (tunnel with ssh -L to reach it remotely)")
    return host, int(port)


def load_config(path: str | None, env: Mapping[str, str], flags: dict[str, Any]) -> AgentConfig:
    """Merge the sources by precedence and validate; raise ConfigError naming the source."""
    merged: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    if path is not None:
        file_label = f"config file {path}"
        _merge(merged, sources, _read_file(path), (), lambda keys: file_label)
    for name, value in _env_settings(env):
        _set(merged, sources, _env_path(name), value, f"environment variable {name}")
    for key, value in flags.items():
        if value is not None:
            _merge(merged, sources, {key: value}, (), _flag_label)
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(err, sources) for err in exc.errors())) from None


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}: {where}invalid YAML: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of settings, got {type(data).__name__}")
    return data


def _env_settings(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable name, value) pairs in the order they apply; empty values count as unset."""
    found = [(name, env[name]) for name in OTEL_ENV_ALIASES if env.get(name)]
    found += sorted((n, v) for n, v in env.items() if n.startswith(ENV_PREFIX) and v)
    return found


def _env_path(name: str) -> tuple[str, ...]:
    if name in OTEL_ENV_ALIASES:
        return (OTEL_ENV_ALIASES[name],)
    return tuple(name[len(ENV_PREFIX):].lower().split("__"))


def _merge(
    merged: dict[str, Any],
    sources: dict[tuple[str, ...], str],
    layer: dict[str, Any],
    prefix: tuple[str, ...],
    label_of: Callable[[tuple[str, ...]], str],
) -> None:
    """Deep-merge one nested mapping (dotted keys allowed), recording who set each leaf."""
    for key, value in layer.items():
        keys = (*prefix, *str(key).split("."))
        if isinstance(value, dict) and value:
            _merge(merged, sources, value, keys, label_of)
        else:
            _set(merged, sources, keys, value, label_of(keys))


def _set(
    merged: dict[str, Any], sources: dict[tuple[str, ...], str], keys: tuple[str, ...], value: Any, label: str
) -> None:
    node = merged
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    sources[keys] = label


def _flag_label(keys: tuple[str, ...]) -> str:
    return "flag --" + ".".join(keys).replace("_", "-")


def _describe(err: Any, sources: dict[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in err["loc"])
    field = ".".join(loc)
    source = "default"
    for end in range(len(loc), 0, -1):  # the source that set this field or its parent
        if loc[:end] in sources:
            source = sources[loc[:end]]
            break
    return f"{source}: {field}: {_reason(err)}"


def _reason(err: Any) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    bounds = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}
    if kind == "extra_forbidden":
        return "unknown setting (check the spelling; see otelbpf.config for the known ones)"
    if kind in bounds:
        limit = next(iter(ctx.values()))
        shown = f"{limit:g}" if isinstance(limit, float) else limit  # 0.0 reads as 0
        return f"must be {bounds[kind]} {shown} (got {got!r})"
    if kind == "value_error":
        return f"{ctx['error']} (got {got!r})"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']} (got {got!r})"
    readable = {
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_parsing": "must be a number",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "model_type": "must be a mapping of settings",
    }
    return f"{readable.get(kind, err['msg'])} (got {got!r})"
