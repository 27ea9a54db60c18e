"""Docker Engine's API over its socket (GET /containers/<id>/json): a container's name, image
and labels, among them docker compose's project and service, and the io.kubernetes.* labels
cri-dockerd puts on a pod's containers."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

from otelbpf.enrich.containerd import (
    CONTAINER_NAME_LABEL,
    POD_NAME_LABEL,
    POD_NAMESPACE_LABEL,
    POD_UID_LABEL,
)
from otelbpf.enrich.pods import Pod
from otelbpf.enrich.runtime import Container, RuntimeUnavailable

SOCKET = "/var/run/docker.sock"
MAX_RESPONSE_BYTES = 1 << 20


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerClient:
    name = "docker"

    def __init__(self, socket_path: str = SOCKET, timeout: float = 0.5) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def container(self, container_id: str) -> Container | None:
        if not os.path.exists(self.socket):
            raise RuntimeUnavailable(self.name, "missing", f"docker socket {self.socket}: not there")
        body = self._get(f"/containers/{container_id}/json")
        if body is None:
            return None
        config = _mapping(body.get("Config"))
        raw_labels = _mapping(config.get("Labels"))
        labels = {str(k): v for k, v in raw_labels.items() if isinstance(v, str)}
        name = body.get("Name") if isinstance(body.get("Name"), str) else None
        image = config.get("Image") if isinstance(config.get("Image"), str) else None
        pod = None
        if labels.get(POD_NAME_LABEL) and labels.get(POD_NAMESPACE_LABEL):
            pod = Pod(labels[POD_NAME_LABEL], labels[POD_NAMESPACE_LABEL], labels.get(POD_UID_LABEL))
        return Container(container_id, self.name, name=name.lstrip("/") if name else None, image_name=image or None,
                         labels=labels, pod=pod, pod_container_name=labels.get(CONTAINER_NAME_LABEL) if pod else None)

    def close(self) -> None:
        pass

    def _get(self, path: str) -> dict[str, Any] | None:
        conn = _UnixConnection(self.socket, self.timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            raw = response.read(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            raise RuntimeUnavailable(self.name, "timeout", f"docker socket {self.socket}: no answer in {self.timeout}s") from None
        except http.client.HTTPException as exc:
            raise RuntimeUnavailable(self.name, "garbage", f"docker socket {self.socket}: not an HTTP answer "
                                     f"({type(exc).__name__})") from None
        except OSError as exc:
            raise RuntimeUnavailable(self.name, "unavailable", f"docker socket {self.socket}: {exc.strerror or exc}") from None
        finally:
            conn.close()
        if response.status == 404:
            return None
        if response.status != 200 or len(raw) > MAX_RESPONSE_BYTES:
            raise RuntimeUnavailable(self.name, "garbage", f"docker socket {self.socket}: HTTP {response.status}")
        try:
            body = json.loads(raw)
        except ValueError:
            raise RuntimeUnavailable(self.name, "garbage", f"docker socket {self.socket}: not JSON") from None
        if not isinstance(body, dict):
            raise RuntimeUnavailable(self.name, "garbage", f"docker socket {self.socket}: not a container")
        return body


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
