"""service.name by the rules (enrich.service) and pod owners from names and labels (enrich.pods)."""

import pytest

from otelbpf.config import load_config
from otelbpf.enrich.pods import Pod, owners_from_pod, pod_attributes
from otelbpf.enrich.service import (
    ServiceRules,
    environment_attributes,
    host_service,
    parse_resource_attributes,
    pod_service,
)

ALL = ServiceRules()
COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "cart"}


def test_resource_attributes_are_percent_decoded_and_malformed_entries_skipped():
    parsed = parse_resource_attributes("service.namespace=shop, deployment.environment=eu%2Cprod,broken,=x,team=a=b")
    assert parsed == {"service.namespace": "shop", "deployment.environment": "eu,prod", "team": "a=b"}


def test_a_process_cannot_rename_its_pid_host_or_pod():
    parsed = parse_resource_attributes("process.pid=1,host.name=evil,k8s.pod.name=x,container.id=y,service.version=2")
    assert parsed == {"service.version": "2"}


def test_environment_read_from_proc(tmp_path):
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "environ").write_bytes(
        b"PATH=/bin\0OTEL_RESOURCE_ATTRIBUTES=service.name=ignored,service.namespace=shop\0OTEL_SERVICE_NAME=checkout\0")
    assert environment_attributes(41, str(tmp_path)) == {"service.name": "checkout", "service.namespace": "shop"}
    assert environment_attributes(43, str(tmp_path)) == {}  # gone


@pytest.mark.parametrize(
    ("rules", "environment", "labels", "unit", "expected"),
    [
        (ALL, {"service.name": "checkout"}, COMPOSE, "nginx.service", {"service.name": "checkout"}),
        (ALL, {}, COMPOSE, "nginx.service", {"service.name": "cart", "service.namespace": "shop"}),
        (ALL, {}, None, "nginx.service", {"service.name": "nginx"}),
        (ALL, {}, None, None, {"service.name": "python3.11"}),
        (ServiceRules(otel_environment=False), {"service.name": "checkout"}, None, None,
         {"service.name": "python3.11"}),
        (ServiceRules(compose_labels=False), {}, COMPOSE, "nginx.service", {"service.name": "nginx"}),
        (ServiceRules(systemd_unit=False), {}, None, "nginx.service", {"service.name": "python3.11"}),
        (ALL, {"service.namespace": "team"}, None, "getty@tty1.service",
         {"service.name": "getty@tty1", "service.namespace": "team"}),
    ],
)
def test_host_rules_in_order(rules, environment, labels, unit, expected):
    assert host_service(rules, environment, labels, unit, "python3.11") == expected


LABELLED = Pod("web-6c8f9d7b5-k2x9z", "shop", "u1",
               labels={"app.kubernetes.io/instance": "web-eu", "app.kubernetes.io/name": "web",
                       "pod-template-hash": "6c8f9d7b5"},
               annotations={"resource.opentelemetry.io/service.name": "storefront"})


@pytest.mark.parametrize(
    ("rules", "pod", "environment", "name"),
    [
        (ALL, LABELLED, {"service.name": "env-name"}, "storefront"),
        (ServiceRules(pod_annotations=False), LABELLED, {"service.name": "env-name"}, "env-name"),
        (ServiceRules(pod_annotations=False), LABELLED, {}, "web-eu"),
        (ServiceRules(pod_annotations=False),
         Pod("web-6c8f9d7b5-k2x9z", "shop", labels={"app.kubernetes.io/name": "web"}), {}, "web"),
        (ServiceRules(pod_annotations=False, well_known_labels=False), LABELLED, {}, "web"),  # the deployment
        (ServiceRules(pod_annotations=False, well_known_labels=False, owners=False), LABELLED, {}, "httpd"),
        (ALL, Pod("burner", "ops"), {}, "burner"),  # no owner: the pod
    ],
)
def test_kubernetes_rules_in_order(rules, pod, environment, name):
    attrs = pod_service(rules, pod, "httpd", environment)
    assert attrs["service.name"] == name
    assert attrs["service.instance.id"] == f"{pod.namespace}.{pod.name}.httpd"


def test_service_namespace_from_the_annotation_else_the_pod_namespace():
    pod = Pod("p", "shop", annotations={"resource.opentelemetry.io/service.namespace": "retail"})
    assert pod_service(ALL, pod, "c", {})["service.namespace"] == "retail"
    assert pod_service(ALL, Pod("p", "shop"), "c", {})["service.namespace"] == "shop"


@pytest.mark.parametrize(
    ("name", "labels", "owners"),
    [
        ("checkout-7d4b9c8f6d-x2k9p", {"pod-template-hash": "7d4b9c8f6d"},
         {"replicaset": "checkout-7d4b9c8f6d", "deployment": "checkout"}),
        ("checkout-7d4b9c8f6d-x2k9p", {}, {"replicaset": "checkout-7d4b9c8f6d", "deployment": "checkout"}),
        ("my-api-v2-5f6b7c8d9-qrst2", {"app": "x"}, {"replicaset": "my-api-v2-5f6b7c8d9", "deployment": "my-api-v2"}),
        ("db-2", {"statefulset.kubernetes.io/pod-name": "db-2", "controller-revision-hash": "db-6b7c"},
         {"statefulset": "db"}),
        ("node-exporter-x7k2p", {"controller-revision-hash": "5d8f", "pod-template-generation": "3"},
         {"daemonset": "node-exporter"}),
        ("migrate-8k2lp", {"batch.kubernetes.io/job-name": "migrate"}, {"job": "migrate"}),
        ("backup-29001234-9xk2p", {"job-name": "backup-29001234"}, {"job": "backup-29001234", "cronjob": "backup"}),
        ("burner", {}, {}),
        ("web-abcdefgh-x2k9p", {}, {}),  # vowels: not a template hash
    ],
)
def test_owners_from_the_pod(name, labels, owners):
    assert owners_from_pod(name, labels) == owners


def test_pod_attributes():
    attrs = pod_attributes(LABELLED, "httpd", "node-1")
    assert attrs == {"k8s.pod.name": "web-6c8f9d7b5-k2x9z", "k8s.namespace.name": "shop", "k8s.pod.uid": "u1",
                     "k8s.container.name": "httpd", "k8s.node.name": "node-1",
                     "k8s.replicaset.name": "web-6c8f9d7b5", "k8s.deployment.name": "web"}


def test_each_rule_can_be_turned_off_in_the_config():
    config = load_config(None, {"OTELBPF_IDENTITY__SYSTEMD_UNIT": "false",
                                "OTELBPF_IDENTITY__CONTAINERD_NAMESPACES": "k8s.io,moby"}, {})
    assert config.identity.systemd_unit is False and config.identity.otel_environment is True
    assert config.identity.containerd_namespaces == ["k8s.io", "moby"]
    rules = ServiceRules(**{name: getattr(config.identity, name) for name in ServiceRules.__dataclass_fields__})
    assert not rules.systemd_unit and rules.owners
