"""containerd's containers service over its gRPC socket: who a container is, as kubelet's CRI
plugin left it (the keys are containerd's, see pkg/cri in its source).

Only Containers.Get is used. Its messages are declared here from containerd's public API
definition (api/services/containers/v1/containers.proto) as a descriptor built at import, not
generated code: no protoc step, and no generated module tied to one protobuf release.

What the CRI plugin writes, and what is read of it:
  labels of every container   io.cri-containerd.kind: sandbox | container
  labels of a container       kubelet's: io.kubernetes.pod.name, io.kubernetes.pod.namespace,
                              io.kubernetes.pod.uid, io.kubernetes.container.name
  labels of a sandbox         the pod's own labels, and the three io.kubernetes.pod.* above
  spec annotations            io.kubernetes.cri.sandbox-id, -name, -namespace, -uid,
                              io.kubernetes.cri.container-name, io.kubernetes.cri.image-name
  sandbox extension           io.cri-containerd.sandbox.metadata: JSON of the sandbox's
                              metadata, whose Config (kubelet's PodSandboxConfig) carries the
                              pod's annotations
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from otelbpf.enrich.pods import Pod
from otelbpf.enrich.runtime import Container, RuntimeUnavailable

if TYPE_CHECKING:
    import grpc

SOCKET = "/run/containerd/containerd.sock"
CRI_NAMESPACE = "k8s.io"  # where the CRI plugin keeps kubelet's containers
NAMESPACE_HEADER = "containerd-namespace"
GET_METHOD = "/containerd.services.containers.v1.Containers/Get"
MAX_RESPONSE_BYTES = 4 << 20  # an OCI spec is a few KiB; a bigger answer is not containerd's
SANDBOX_TTL = 60.0  # seconds a pod's sandbox (its labels and annotations) is reused
MAX_SANDBOXES = 1024

KIND_LABEL = "io.cri-containerd.kind"
SANDBOX_KIND = "sandbox"
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME_ANNOTATION = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE_ANNOTATION = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID_ANNOTATION = "io.kubernetes.cri.sandbox-uid"
CONTAINER_NAME_ANNOTATION = "io.kubernetes.cri.container-name"
IMAGE_NAME_ANNOTATION = "io.kubernetes.cri.image-name"
SANDBOX_METADATA_EXTENSION = "io.cri-containerd.sandbox.metadata"
# Labels kubelet and the CRI plugin add to a sandbox that are not the pod's own
_NOT_POD_LABELS = (POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL, KIND_LABEL)


def _api_messages() -> tuple[type[Any], type[Any]]:
    """GetContainerRequest and GetContainerResponse, declared as containers.proto does (the
    fields read here; unknown fields of newer containerd releases are skipped by protobuf)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="otelbpf/containerd/containers.proto", package="containerd.services.containers.v1", syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/timestamp.proto"])
    string, message, repeated = (descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                                 descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                                 descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)

    def add(msg: Any, name: str, number: int, kind: int, type_name: str = "", label: int = 1) -> None:
        field = msg.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name

    container = file.message_type.add(name="Container")
    for entry_name, value_kind, value_type in (("LabelsEntry", string, ""), ("ExtensionsEntry", message, ".google.protobuf.Any")):
        entry = container.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        add(entry, "key", 1, string)
        add(entry, "value", 2, value_kind, value_type)
    runtime = container.nested_type.add(name="Runtime")
    add(runtime, "name", 1, string)
    add(runtime, "options", 2, message, ".google.protobuf.Any")
    prefix = ".containerd.services.containers.v1.Container"
    add(container, "id", 1, string)
    add(container, "labels", 2, message, f"{prefix}.LabelsEntry", repeated)
    add(container, "image", 3, string)
    add(container, "runtime", 4, message, f"{prefix}.Runtime")
    add(container, "spec", 5, message, ".google.protobuf.Any")
    add(container, "snapshotter", 6, string)
    add(container, "snapshot_key", 7, string)
    add(container, "created_at", 8, message, ".google.protobuf.Timestamp")
    add(container, "updated_at", 9, message, ".google.protobuf.Timestamp")
    add(container, "extensions", 10, message, f"{prefix}.ExtensionsEntry", repeated)
    add(container, "sandbox", 11, string)
    add(file.message_type.add(name="GetContainerRequest"), "id", 1, string)
    add(file.message_type.add(name="GetContainerResponse"), "container", 1, message, prefix)

    pool = descriptor_pool.DescriptorPool()
    for dependency in (any_pb2, timestamp_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    pool.Add(file)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("containerd.services.containers.v1.GetContainerRequest")),
            get(pool.FindMessageTypeByName("containerd.services.containers.v1.GetContainerResponse")))


GetContainerRequest, GetContainerResponse = _api_messages()


class ContainerdClient:
    """Containers.Get on containerd's socket, in the namespaces given (CRI's first)."""

    name = "containerd"

    def __init__(self, socket: str = SOCKET, namespaces: tuple[str, ...] = (CRI_NAMESPACE,), timeout: float = 0.5) -> None:
        self.socket = socket
        self.namespaces = namespaces
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self._get: Any = None
        # A pod's containers share its sandbox: read once a minute, not once a container.
        # Used from the directory's one worker thread only.
        self._sandboxes: collections.OrderedDict[str, tuple[float, Any]] = collections.OrderedDict()
        self.requests = 0  # Get calls made, per namespace tried

    def container(self, container_id: str) -> Container | None:
        """The container, None when no namespace has it; RuntimeUnavailable when the socket
        does not answer as containerd (missing, slow, or not speaking its API)."""
        if not os.path.exists(self.socket):
            raise RuntimeUnavailable(self.name, "missing", f"containerd socket {self.socket}: not there")
        found = self._get_container(container_id)
        if found is None:
            return None
        namespace, record = found
        labels = dict(record.labels)
        annotations = _spec_annotations(record.spec)
        if labels.get(KIND_LABEL) == SANDBOX_KIND:
            return Container(container_id, self.name, labels=labels, pod=_pod(labels, annotations, record), namespace=namespace)
        pod = None
        sandbox_id = annotations.get(SANDBOX_ID_ANNOTATION) or record.sandbox
        pod_name = labels.get(POD_NAME_LABEL) or annotations.get(SANDBOX_NAME_ANNOTATION)
        if pod_name:
            sandbox = self._sandbox(sandbox_id) if sandbox_id and sandbox_id != container_id else None
            pod = _pod(labels, annotations, sandbox)
        name = labels.get(CONTAINER_NAME_LABEL) or annotations.get(CONTAINER_NAME_ANNOTATION)
        image = annotations.get(IMAGE_NAME_ANNOTATION) or record.image or None
        return Container(container_id, self.name, name=name, image_name=image, labels=labels, pod=pod,
                         pod_container_name=name if pod else None, namespace=namespace)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _sandbox(self, sandbox_id: str) -> Any | None:
        now = time.monotonic()
        cached = self._sandboxes.get(sandbox_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = self._get_container(sandbox_id)
        self._sandboxes[sandbox_id] = (now + SANDBOX_TTL, found[1] if found else None)
        self._sandboxes.move_to_end(sandbox_id)
        while len(self._sandboxes) > MAX_SANDBOXES:
            self._sandboxes.popitem(last=False)
        return found[1] if found else None

    def _get_container(self, container_id: str) -> tuple[str, Any] | None:
        import grpc  # on the first container met: an agent on a host without containers never loads it (about 10 MB)

        if self._get is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}", options=[
                ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)])
            self._get = self._channel.unary_unary(GET_METHOD, request_serializer=GetContainerRequest.SerializeToString,
                                                  response_deserializer=GetContainerResponse.FromString)
        for namespace in self.namespaces:
            self.requests += 1
            try:
                response = self._get(GetContainerRequest(id=container_id), timeout=self.timeout,
                                     metadata=((NAMESPACE_HEADER, namespace),))
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                if code == grpc.StatusCode.NOT_FOUND:
                    continue
                reason = {grpc.StatusCode.UNAVAILABLE: "unavailable", grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
                          grpc.StatusCode.INTERNAL: "garbage", grpc.StatusCode.UNIMPLEMENTED: "not containerd"}
                raise RuntimeUnavailable(self.name, reason.get(code, "error"),
                                         f"containerd socket {self.socket}: {code.name if code else exc}") from None
            return namespace, response.container
        return None


def _spec_annotations(spec: Any) -> dict[str, str]:
    """The OCI spec's annotations (the spec is JSON in an Any); {} when it is not JSON."""
    return _string_map(_json(spec.value).get("annotations"))


def _pod(labels: Mapping[str, str], annotations: Mapping[str, str], sandbox: Any | None) -> Pod | None:
    """The pod of a container (its labels and spec annotations) or of a sandbox (sandbox is
    the sandbox itself then): the pod's labels are on the sandbox, its annotations in the
    sandbox's metadata extension."""
    name = labels.get(POD_NAME_LABEL) or annotations.get(SANDBOX_NAME_ANNOTATION)
    namespace = labels.get(POD_NAMESPACE_LABEL) or annotations.get(SANDBOX_NAMESPACE_ANNOTATION)
    if not name or not namespace:
        return None
    uid = labels.get(POD_UID_LABEL) or annotations.get(SANDBOX_UID_ANNOTATION)
    pod_labels: dict[str, str] = {}
    pod_annotations: dict[str, str] = {}
    if sandbox is not None:
        pod_labels = {k: v for k, v in sandbox.labels.items() if k not in _NOT_POD_LABELS}
        if SANDBOX_METADATA_EXTENSION in sandbox.extensions:
            metadata = _json(sandbox.extensions[SANDBOX_METADATA_EXTENSION].value)
            inner = metadata.get("Metadata", metadata)  # {"Version": "v1", "Metadata": {...}}
            config = inner.get("Config") if isinstance(inner, dict) else None
            pod_annotations = _string_map(config.get("annotations") if isinstance(config, dict) else None)
    return Pod(name, namespace, uid or None, pod_labels, pod_annotations)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}
