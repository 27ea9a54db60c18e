"""Docker Engine's API over its socket (GET /containers/<id>/json): a container's name, image
and labels, among them docker compose's project and service, and the io.kubernetes.* labels
cri-dockerd puts on a pod's containers."""

from __future__ import annotations

from otelbpf.enrich.containerd import (
    CONTAINER_NAME_LABEL,
    POD_NAME_LABEL,
    POD_NAMESPACE_LABEL,
    POD_UID_LABEL,
)
from otelbpf.enrich.pods import Pod
from otelbpf.enrich.runtime import Container
from otelbpf.enrich.unixhttp import get_json, mapping, string_map

SOCKET = "/var/run/docker.sock"


class DockerClient:
    name = "docker"

    def __init__(self, socket_path: str = SOCKET, timeout: float = 0.5) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def container(self, container_id: str) -> Container | None:
        body = get_json(self.name, self.socket, f"/containers/{container_id}/json", self.timeout)
        if body is None:
            return None
        config = mapping(body.get("Config"))
        labels = string_map(config.get("Labels"))
        name = body.get("Name") if isinstance(body.get("Name"), str) else None
        image = config.get("Image") if isinstance(config.get("Image"), str) else None
        pod = None
        if labels.get(POD_NAME_LABEL) and labels.get(POD_NAMESPACE_LABEL):
            pod = Pod(labels[POD_NAME_LABEL], labels[POD_NAMESPACE_LABEL], labels.get(POD_UID_LABEL))
        return Container(container_id, self.name, name=name.lstrip("/") if name else None, image_name=image or None,
                         labels=labels, pod=pod, pod_container_name=labels.get(CONTAINER_NAME_LABEL) if pod else None)

    def close(self) -> None:
        pass
