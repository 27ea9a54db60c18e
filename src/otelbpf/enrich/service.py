"""service.name, service.namespace and service.instance.id of a process, by the first rule
that gives one (each rule can be turned off: ServiceRules, the config's identity section).

In Kubernetes (semantic conventions, k8s attributes):
  1. the pod annotation resource.opentelemetry.io/service.name;
  2. OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES in the process's own environment (as OBI
     does: the OpenTelemetry Operator and users set it on the container to name it);
  3. the label app.kubernetes.io/instance, then app.kubernetes.io/name;
  4. the owner: deployment, replicaset, statefulset, daemonset, cronjob, job, then the pod;
  5. the container name.
  service.namespace: the annotation resource.opentelemetry.io/service.namespace, else the
  pod's namespace; service.instance.id: <namespace>.<pod>.<container>.
Elsewhere:
  1. OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES in the process's environment;
  2. docker compose labels: com.docker.compose.service (com.docker.compose.project is the
     service.namespace);
  3. the systemd unit of the process's cgroup (nginx.service -> nginx);
  4. the executable's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from otelbpf.enrich import procfs
from otelbpf.enrich.pods import (
    INSTANCE_LABEL,
    NAME_LABEL,
    OWNER_ORDER,
    SERVICE_NAME_ANNOTATION,
    SERVICE_NAMESPACE_ANNOTATION,
    Pod,
)
from otelbpf.signals.model import Attributes

ENVIRON_LIMIT = 256 * 1024  # bytes of /proc/PID/environ read; the kernel's ARG_MAX is far above any real need
SERVICE_NAME_ENV = b"OTEL_SERVICE_NAME="
RESOURCE_ATTRIBUTES_ENV = b"OTEL_RESOURCE_ATTRIBUTES="
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
# What a process may not say of itself through OTEL_RESOURCE_ATTRIBUTES: what the kernel and
# the node say better (its pid, executable, host, container and pod).
_KERNEL_OWNED_PREFIXES = ("process.", "host.", "os.", "container.", "k8s.")


@dataclass(frozen=True, slots=True)
class ServiceRules:
    otel_environment: bool = True  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES of the process
    compose_labels: bool = True
    systemd_unit: bool = True
    pod_annotations: bool = True  # resource.opentelemetry.io/service.{name,namespace}
    well_known_labels: bool = True  # app.kubernetes.io/instance and /name
    owners: bool = True


def environment_attributes(pid: int, proc: str = procfs.PROC) -> Attributes:
    """The resource attributes a process gives itself in its environment as the OpenTelemetry
    SDKs read them: OTEL_RESOURCE_ATTRIBUTES, with OTEL_SERVICE_NAME over its service.name.
    The environment is the one the process was started with (/proc/PID/environ): read once
    per exec. {} when there is none, or the process is gone."""
    chunks: list[bytes] = []
    try:
        with open(f"{proc}/{pid}/environ", "rb", buffering=0) as f:
            # in small reads: one read of the whole limit allocates it, for an environment of a few KiB
            while sum(map(len, chunks)) < ENVIRON_LIMIT and (chunk := f.read(16384)):
                chunks.append(chunk)
    except OSError:
        return {}
    environ = b"".join(chunks)
    attrs: Attributes = {}
    service_name = None
    for entry in environ.split(b"\0"):
        if entry.startswith(RESOURCE_ATTRIBUTES_ENV):
            attrs.update(parse_resource_attributes(entry[len(RESOURCE_ATTRIBUTES_ENV):].decode("utf-8", "replace")))
        elif entry.startswith(SERVICE_NAME_ENV):
            service_name = entry[len(SERVICE_NAME_ENV):].decode("utf-8", "replace").strip()
    if service_name:
        attrs["service.name"] = service_name
    return attrs


def parse_resource_attributes(text: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES: key1=value1,key2=value2 with percent-encoded values; entries
    without '=' and keys the kernel knows better are left out."""
    attrs: dict[str, str] = {}
    for entry in text.split(","):
        key, sep, value = entry.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith(_KERNEL_OWNED_PREFIXES):
            continue
        attrs[key] = unquote(value.strip())
    return attrs


def unit_service_name(unit: str) -> str:
    """nginx.service -> nginx; getty@tty1.service -> getty@tty1."""
    return unit.removesuffix(".service")


def host_service(rules: ServiceRules, environment: Attributes, labels: Mapping[str, str] | None,
                 unit: str | None, executable_name: str) -> Attributes:
    """service.* of a process outside Kubernetes, by the rules in the module's doc."""
    if rules.otel_environment and environment.get("service.name"):
        return environment
    if rules.compose_labels and labels and labels.get(COMPOSE_SERVICE):
        attrs: Attributes = {**environment, "service.name": labels[COMPOSE_SERVICE]}
        if labels.get(COMPOSE_PROJECT):
            attrs["service.namespace"] = labels[COMPOSE_PROJECT]
        return attrs
    if rules.systemd_unit and unit:
        return {**environment, "service.name": unit_service_name(unit)}
    return {**environment, "service.name": executable_name}


def pod_service(rules: ServiceRules, pod: Pod, container_name: str | None, environment: Attributes) -> Attributes:
    """service.* of a process in a pod's container, by the rules in the module's doc."""
    attrs: Attributes = dict(environment) if rules.otel_environment else {}
    name = pod.annotations.get(SERVICE_NAME_ANNOTATION) if rules.pod_annotations else None
    if not name and rules.otel_environment:
        name = environment.get("service.name")  # type: ignore[assignment]
    if not name and rules.well_known_labels:
        name = pod.labels.get(INSTANCE_LABEL) or pod.labels.get(NAME_LABEL)
    if not name and rules.owners:
        workload = pod.workload()
        name = next((workload[kind] for kind in OWNER_ORDER if workload.get(kind)), None) or pod.name
    attrs["service.name"] = name or container_name or pod.name
    namespace = pod.annotations.get(SERVICE_NAMESPACE_ANNOTATION) if rules.pod_annotations else None
    attrs["service.namespace"] = namespace or attrs.get("service.namespace") or pod.namespace
    attrs["service.instance.id"] = f"{pod.namespace}.{pod.name}.{container_name or ''}".rstrip(".")
    return attrs
