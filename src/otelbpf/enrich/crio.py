"""CRI-O's inspect API over its socket (GET /containers/<id>, what `crictl inspect` and
cAdvisor read): a container's labels (kubelet's io.kubernetes.* ones), image and sandbox id;
the sandbox's labels and annotations are the pod's."""

from __future__ import annotations

from typing import Any

from otelbpf.enrich.containerd import (
    CONTAINER_NAME_LABEL,
    POD_NAME_LABEL,
    POD_NAMESPACE_LABEL,
    POD_UID_LABEL,
)
from otelbpf.enrich.pods import Pod
from otelbpf.enrich.runtime import Container, RuntimeUnavailable
from otelbpf.enrich.unixhttp import get_json, string_map

SOCKET = "/var/run/crio/crio.sock"
CONTAINER_TYPE_ANNOTATION = "io.kubernetes.cri-o.ContainerType"  # sandbox | container
_NOT_POD_LABELS = (POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL, CONTAINER_NAME_LABEL)


class CrioClient:
    name = "cri-o"

    def __init__(self, socket_path: str = SOCKET, timeout: float = 0.5) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def container(self, container_id: str) -> Container | None:
        info = get_json(self.name, self.socket, f"/containers/{container_id}", self.timeout)
        if info is None:
            return None
        labels = string_map(info.get("labels"))
        image = info.get("image") if isinstance(info.get("image"), str) else None
        pod = None
        if labels.get(POD_NAME_LABEL) and labels.get(POD_NAMESPACE_LABEL):
            sandbox_id = info.get("sandbox") if isinstance(info.get("sandbox"), str) else None
            sandbox = info if sandbox_id in (None, "", container_id) else self._sandbox(sandbox_id)
            pod = Pod(labels[POD_NAME_LABEL], labels[POD_NAMESPACE_LABEL], labels.get(POD_UID_LABEL),
                      {k: v for k, v in string_map(sandbox.get("labels")).items() if k not in _NOT_POD_LABELS}
                      if sandbox else {},
                      string_map(sandbox.get("annotations")) if sandbox else {})
        is_sandbox = string_map(info.get("crio_annotations")).get(CONTAINER_TYPE_ANNOTATION) == "sandbox"
        name = None if is_sandbox else labels.get(CONTAINER_NAME_LABEL)
        return Container(container_id, self.name, name=name, image_name=image or None, labels=labels, pod=pod,
                         pod_container_name=name if pod else None)

    def close(self) -> None:
        pass

    def _sandbox(self, sandbox_id: str) -> dict[str, Any] | None:
        """The pod's sandbox; None when it cannot be read (the pod is still named, without labels)."""
        try:
            return get_json(self.name, self.socket, f"/containers/{sandbox_id}", self.timeout)
        except RuntimeUnavailable:
            return None
