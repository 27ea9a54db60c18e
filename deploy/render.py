"""Render the Helm chart into plain manifests for `kubectl apply` (deploy/otelbpf.yaml).

    .venv/bin/python deploy/render.py > deploy/otelbpf.yaml      # or: make deploy

Helm's own template engine (helm-python-sdk, Helm as a library: no helm binary) renders
charts/otelbpf with its default values, release "otelbpf" in namespace "otelbpf", and the
documents are ordered as `helm install` would apply them, after the Namespace.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "otelbpf"
RELEASE = NAMESPACE = "otelbpf"
# Helm's install order (pkg/release/util/kind_sorter.go), for the kinds this chart has.
INSTALL_ORDER = ("Namespace", "ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding",
                 "Role", "RoleBinding", "Service", "DaemonSet", "ServiceMonitor")
HEADER = "# Generated from charts/otelbpf by deploy/render.py (make deploy): do not edit, change the chart.\n"


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The chart's manifests as documents, in install order (NOTES.txt and empty templates left out)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    docs = [doc for name, text in sorted(rendered.items()) if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]
    return sorted(docs, key=lambda d: INSTALL_ORDER.index(d["kind"]))


def plain_manifests() -> str:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    docs = [namespace, *render()]
    return HEADER + "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)


if __name__ == "__main__":
    sys.stdout.write(plain_manifests())
