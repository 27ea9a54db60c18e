"""A container's Kubernetes identity as the node sees it: pod, namespace, container, the pod's
labels and annotations, and the workload that owns the pod.

Without the API server the owner is read from what the pod itself carries: the labels its
controller stamps on it (pod-template-hash, controller-revision-hash, job-name, the
StatefulSet's pod-name) and, failing those, the name a ReplicaSet gives its pods
(<deployment>-<template hash>-<5 random>, both in the alphabet of Kubernetes' name
generator). The API source (enrich.kube) gives owners by reference when it is on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from otelbpf.signals.model import Attributes

# kubernetes' rand.String and SafeEncodeString draw from these (no vowels, no 0, 1, 3)
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_REPLICASET_POD = re.compile(rf"^(.+)-([{_SAFE}]{{6,10}})-([{_SAFE}]{{5}})$")
_GENERATED_SUFFIX = re.compile(rf"^(.+)-[{_SAFE}]{{5}}$")
_ORDINAL = re.compile(r"^(.+)-(\d+)$")
_CRONJOB_JOB = re.compile(r"^(.+)-(\d{8,})$")  # a CronJob names its Jobs <cronjob>-<scheduled minute>

# Labels every owner kind stamps on the pods it makes
POD_TEMPLATE_HASH = "pod-template-hash"
CONTROLLER_REVISION_HASH = "controller-revision-hash"
POD_TEMPLATE_GENERATION = "pod-template-generation"  # DaemonSet pods
STATEFULSET_POD_NAME = "statefulset.kubernetes.io/pod-name"
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")

# service.name and service.namespace a pod gives itself (semantic conventions, k8s attributes)
SERVICE_NAME_ANNOTATION = "resource.opentelemetry.io/service.name"
SERVICE_NAMESPACE_ANNOTATION = "resource.opentelemetry.io/service.namespace"
INSTANCE_LABEL = "app.kubernetes.io/instance"
NAME_LABEL = "app.kubernetes.io/name"
OWNER_ORDER = ("deployment", "replicaset", "statefulset", "daemonset", "cronjob", "job")


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    namespace: str
    uid: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    owners: Mapping[str, str] | None = None  # kind -> name, when the API said; else derived

    def workload(self) -> dict[str, str]:
        """kind -> name of the controllers above the pod (deployment, replicaset, ...)."""
        return dict(self.owners) if self.owners is not None else owners_from_pod(self.name, self.labels)


def owners_from_pod(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The pod's owners as its own name and labels tell them (see the module's doc)."""
    template_hash = labels.get(POD_TEMPLATE_HASH)
    if template_hash:
        generated = _GENERATED_SUFFIX.match(name)
        replicaset = generated.group(1) if generated else None
        if replicaset and replicaset.endswith("-" + template_hash):
            return {"replicaset": replicaset, "deployment": replicaset[: -len(template_hash) - 1]}
    if labels.get(STATEFULSET_POD_NAME) == name and (ordinal := _ORDINAL.match(name)):
        return {"statefulset": ordinal.group(1)}
    if CONTROLLER_REVISION_HASH in labels and POD_TEMPLATE_GENERATION in labels:
        generated = _GENERATED_SUFFIX.match(name)
        if generated:
            return {"daemonset": generated.group(1)}
    job = next((labels[key] for key in JOB_NAME_LABELS if labels.get(key)), None)
    if job:
        cron = _CRONJOB_JOB.match(job)
        return {"job": job, "cronjob": cron.group(1)} if cron else {"job": job}
    # No label says otherwise (a DaemonSet's or a Job's pods have the same random suffix, but
    # not the template hash before it): the name's form is the clue.
    replicaset_form = _REPLICASET_POD.match(name)
    if replicaset_form and not (labels.keys() & {CONTROLLER_REVISION_HASH, STATEFULSET_POD_NAME, *JOB_NAME_LABELS}):
        return {"replicaset": f"{replicaset_form.group(1)}-{replicaset_form.group(2)}",
                "deployment": replicaset_form.group(1)}
    return {}


def pod_attributes(pod: Pod, container_name: str | None, node_name: str | None) -> Attributes:
    """k8s.* attributes of a container in pod."""
    attrs: Attributes = {"k8s.pod.name": pod.name, "k8s.namespace.name": pod.namespace}
    if pod.uid:
        attrs["k8s.pod.uid"] = pod.uid
    if container_name:
        attrs["k8s.container.name"] = container_name
    if node_name:
        attrs["k8s.node.name"] = node_name
    for kind, owner in pod.workload().items():
        attrs[f"k8s.{kind}.name"] = owner
    return attrs
