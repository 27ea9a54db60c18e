"""The Helm chart, rendered and linted by Helm itself (helm-python-sdk: Helm v4 as a library),
every manifest checked against the Kubernetes schemas (kubernetes-validate) of the oldest
and the newest Kubernetes it ships, and what the pods get read back: the agent must accept
the rendered config, the policies must compile, and deploy/ must be a fresh render."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from otelbpf.config import load_config
from otelbpf.security.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("deploy_render", ROOT / "deploy" / "render.py")
assert _spec is not None and _spec.loader is not None
render_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_module)
render = render_module.render
CHART = render_module.CHART

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
KUBE_VERSIONS = ("1.25.0", "1.37.0")
# Kinds no Kubernetes schema covers (CRDs of other projects): checked by hand below.
CRD_KINDS = {"ServiceMonitor"}

EXTRA_POLICY = """\
name: no-curl-to-shadow
severity: error
rules:
  - hook: file_open
    paths:
      - {op: Equal, values: [/etc/shadow]}
    binaries: {op: In, values: [/usr/bin/curl]}
    action: post
"""

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "capabilities": {"privileged": False, "sysAdmin": True},
    "api-off": {"kubernetesApi": {"enabled": False}, "hostNetwork": False},
    "tls": {
        "otlp": {"endpoint": "https://collector.example:4317",
                 "headersSecret": {"name": "otlp-headers", "key": "headers"},
                 "tls": {"enabled": True, "secretName": "otlp-tls", "clientCert": True}},
        "prometheus": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "policies": {"no-curl-to-shadow.yaml": EXTRA_POLICY},
        "config": {"http": {"open_ports": "80,443,8080"}, "profile": {"hz": 49}},
    },
}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def the(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} documents"
    return found[0]


def agent_container(docs: list[dict]) -> dict:
    (container,) = the(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return container


def pod_env(container: dict, pod_ip: str = "10.1.2.3") -> dict[str, str]:
    """The environment the kubelet gives the container: literal values, $(VAR) expanded;
    values from the downward API and Secrets are stood in for."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            value = var["value"]
            for name, known in env.items():
                value = value.replace(f"$({name})", known)
            env[var["name"]] = value
        elif var["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[var["name"]] = pod_ip
        else:
            env[var["name"]] = "from-" + next(iter(var["valueFrom"]))
    return env


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(copy.deepcopy(VALUE_SETS[request.param]))


def test_lint_has_no_warnings(rendered):
    name, _ = rendered
    report = helm.lint(CHART, copy.deepcopy(VALUE_SETS[name]), strict=True, namespace="otelbpf")
    assert report["errors"] == []
    # Severity 1 is "info" (Helm's "icon is recommended"); warnings (2) and errors (3) fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_match_kubernetes_schemas(rendered, kube_version):
    _, docs = rendered
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, kube_version, strict=True)  # raises, naming the field
        checked += 1
    assert checked >= 3  # at least the two ConfigMaps and the DaemonSet


def test_daemonset_runs_on_every_node_with_host_pids(rendered):
    _, docs = rendered
    pod = the(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    container = agent_container(docs)
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}, "name": "K8S_NODE_NAME"} in container["env"]


def test_host_mounts_and_their_volumes(rendered):
    _, docs = rendered
    pod = the(docs, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in agent_container(docs)["volumeMounts"]}
    host = {path: v["hostPath"]["path"] for path, v in mounts.items() if "hostPath" in v}
    assert host == {"/sys/fs/bpf": "/sys/fs/bpf", "/sys/kernel/tracing": "/sys/kernel/tracing",
                    "/sys/fs/cgroup": "/sys/fs/cgroup", "/host/proc": "/proc",
                    "/var/lib/otelbpf": "/var/lib/otelbpf", "/run/containerd": "/run/containerd",
                    "/run/crio": "/run/crio"}
    # ConfigMaps as whole directories (no subPath): the kubelet's updates reach the agent.
    assert mounts["/etc/otelbpf/config"]["configMap"]["name"] == "otelbpf-config"
    assert mounts["/etc/otelbpf/policies"]["configMap"]["name"] == "otelbpf-policies"
    assert not any("subPath" in m for m in agent_container(docs)["volumeMounts"])


def test_privileged_or_listed_capabilities(rendered):
    name, docs = rendered
    security = agent_container(docs)["securityContext"]
    if name != "capabilities":
        assert security["privileged"] is True
        return
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE", "NET_ADMIN", "SYS_RESOURCE",
                                                     "DAC_READ_SEARCH", "CHECKPOINT_RESTORE", "SYS_ADMIN"}
    assert security["seccompProfile"] == {"type": "Unconfined"}


def test_rbac_only_with_api_enrichment(rendered):
    name, docs = rendered
    pod = the(docs, "DaemonSet")["spec"]["template"]["spec"]
    rbac = by_kind(docs, "ServiceAccount") + by_kind(docs, "ClusterRole") + by_kind(docs, "ClusterRoleBinding")
    if name == "api-off":
        assert rbac == []
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod
        return
    assert len(rbac) == 3
    assert pod["serviceAccountName"] == the(docs, "ServiceAccount")["metadata"]["name"]
    rules = {(group, resource): rule["verbs"] for rule in the(docs, "ClusterRole")["rules"]
             for group in rule["apiGroups"] for resource in rule["resources"]}
    assert rules == {("", "pods"): ["get", "list", "watch"], ("apps", "replicasets"): ["get", "list", "watch"]}


def test_agent_accepts_the_rendered_config(rendered, tmp_path):
    """The config file and environment the pod gets load with the agent's own loader."""
    name, docs = rendered
    config_map = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config"))
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    container = agent_container(docs)
    assert container["args"] == ["run", "--config", "/etc/otelbpf/config/config.yaml"]
    config = load_config(str(path), pod_env(container), {})
    assert config.health == "10.1.2.3:4381"
    assert config.security.policy_dir == "/etc/otelbpf/policies"
    assert config.store.path == "/var/lib/otelbpf/otelbpf.duckdb"
    assert config.identity.kubernetes_api is (name != "api-off")  # only with the ServiceAccount's token
    if name == "tls":
        assert config.otlp_endpoint == "https://collector.example:4317"
        assert config.http.open_ports == "80,443,8080" and config.profile.hz == 49
        assert config.prometheus == "10.1.2.3:9464"
    else:
        assert config.otlp_endpoint == "http://otel-collector.otelbpf.svc:4317"
        assert config.prometheus is None


def test_probes_are_the_health_endpoints(rendered):
    _, docs = rendered
    container = agent_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert pod_env(container)["OTELBPF_HEALTH"].endswith(f":{ports['health']}")


def test_otlp_headers_and_tls_from_secrets(rendered):
    name, docs = rendered
    container = agent_container(docs)
    env = {v["name"]: v for v in container["env"]}
    if name != "tls":
        assert not any(k.startswith("OTEL_EXPORTER_OTLP_") for k in env)
        return
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"] == {"secretKeyRef": {"name": "otlp-headers", "key": "headers"}}
    volumes = {v["name"]: v for v in the(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/otelbpf/tls"]]["secret"]["secretName"] == "otlp-tls"
    assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"]["value"] == "/etc/otelbpf/tls/ca.crt"
    assert env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"]["value"] == "/etc/otelbpf/tls/tls.crt"
    assert env["OTEL_EXPORTER_OTLP_CLIENT_KEY"]["value"] == "/etc/otelbpf/tls/tls.key"


def test_service_monitor_scrapes_the_metrics_port(rendered):
    name, docs = rendered
    if name != "tls":
        assert by_kind(docs, "ServiceMonitor") == [] and by_kind(docs, "Service") == []
        return
    monitor, service = the(docs, "ServiceMonitor"), the(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    pod_labels = the(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_policies_config_map_compiles(rendered, tmp_path):
    name, docs = rendered
    policies = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-policies"))
    files = policies.get("data") or {}
    assert sorted(files) == (["no-curl-to-shadow.yaml"] if name == "tls" else [])
    for file_name, body in files.items():
        (tmp_path / file_name).write_text(body)
        assert load_policy(tmp_path / file_name).name == "no-curl-to-shadow"


def checksum(values: dict) -> str:
    return the(render(values), "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_config_change_rolls_pods_policy_change_does_not():
    base = checksum({})
    assert checksum({"memoryLimitMiB": 300}) != base
    assert checksum({"sensors": ["process"]}) != base
    assert checksum({"policies": {"extra.yaml": EXTRA_POLICY}}) == base  # applied live by the agent


def test_chart_refuses_a_service_monitor_without_metrics():
    with pytest.raises(helm.HelmError, match=r"serviceMonitor\.enabled needs prometheus\.enabled"):
        render({"serviceMonitor": {"enabled": True}})


def test_plain_manifests_are_a_fresh_render():
    committed = (ROOT / "deploy" / "otelbpf.yaml").read_text()
    assert committed == render_module.plain_manifests(), "deploy/otelbpf.yaml is stale: run `make deploy`"
    docs = [d for d in yaml.safe_load_all(committed) if d]
    assert [d["kind"] for d in docs][:2] == ["Namespace", "ServiceAccount"]
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_collector_example():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "collector.yaml").read_text()) if d]
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    config = yaml.safe_load(the(docs, "ConfigMap")["data"]["config.yaml"])
    for signal, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(config[kind]), f"{signal}: undefined {kind}"
    assert {"traces", "metrics", "logs", "profiles"} <= set(config["service"]["pipelines"])
    # The Service the chart's default endpoint names.
    service = the(docs, "Service")
    default_endpoint = yaml.safe_load((CHART / "values.yaml").read_text())["otlp"]["endpoint"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert default_endpoint == f"http://{host}:4317"
    assert 4317 in [p["port"] for p in service["spec"]["ports"]]


def test_ui_mode_runs_the_local_store_on_loopback(tmp_path):
    docs = render({"ui": {"enabled": True}, "otlp": {"endpoint": ""}})
    config_map = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config"))
    (tmp_path / "config.yaml").write_text(config_map["data"]["config.yaml"])
    config = load_config(str(tmp_path / "config.yaml"), pod_env(agent_container(docs)), {})
    assert config.otlp_endpoint is None and config.ui == "127.0.0.1:4380"
    with pytest.raises(helm.HelmError, match=r"otlp\.endpoint is required"):
        render({"otlp": {"endpoint": ""}})


@pytest.mark.parametrize(("values", "where"), [
    ({"privilege": False}, "additional properties 'privilege' not allowed"),
    ({"capabilities": ["BPF", "SYS_MODULE"]}, "/capabilities/1"),
    ({"otlp": {"endpoint": "collector:4317"}}, "/otlp/endpoint"),
    ({"health": {"port": 0}}, "/health/port"),
    ({"policies": {"p.json": "name: x"}}, "invalid propertyName 'p.json'"),  # the agent reads *.yaml only
])
def test_values_schema_names_the_wrong_value(values, where):
    """values.schema.json: a typo or a wrong type is refused at install, naming the value."""
    with pytest.raises(helm.HelmError, match=re.escape(where)):
        render(values)
    report = helm.lint(CHART, values, strict=True)
    assert any(where in m["error"] for m in report["messages"] if m["severity"] == 3), report
