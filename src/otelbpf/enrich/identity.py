"""Who a process is, once per process for every sensor: its executable, its container, pod and
service, and the resource its telemetry carries. Read from /proc (enrich.procfs, the cgroup
path: enrich.cgroups, the environment: enrich.service) the first time a pid is met, while it
is there to be read; a process already gone is named by the kernel's command name.

One table is shared by the sensors of an agent, so a process is read once however many
sensors see it, and every sensor names it alike. The container runtimes (enrich.runtime) are
asked off the data path: a process whose container is not known yet gets a resource without
the container's names (counted as `unresolved`), and the next lookup after the runtime has
answered gets the full one.
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from otelbpf.enrich import procfs
from otelbpf.enrich.cgroups import NONE, CgroupIdentity, cgroup_identity_of_pid, parse_cgroup_path
from otelbpf.enrich.containers import CgroupResolver
from otelbpf.enrich.pods import pod_attributes
from otelbpf.enrich.runtime import PENDING, Container, ContainerDirectory, Pending, RuntimeClient
from otelbpf.enrich.service import ServiceRules, environment_attributes, host_service, pod_service
from otelbpf.signals.model import Attributes, Resource
from otelbpf.signals.registry import Registry

MAX_PROCESSES = 16384  # identities kept; the least recently used go first
NODE_NAME_ENV = "K8S_NODE_NAME"  # the chart sets it from spec.nodeName


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    pid: int
    executable_name: str
    executable_path: str | None = None
    container_id: str | None = None

    def attributes(self) -> Attributes:
        attrs: Attributes = {"process.pid": self.pid, "process.executable.name": self.executable_name}
        if self.executable_path:
            attrs["process.executable.path"] = self.executable_path
        if self.container_id:
            attrs["container.id"] = self.container_id
        return attrs


@dataclass(slots=True)
class _Entry:
    identity: ProcessIdentity
    resource: Resource
    read_ns: int  # when it was read: CLOCK_MONOTONIC ns, the kernel's clock
    cgroup: CgroupIdentity
    environment: Attributes
    unnamed: bool  # in a container no runtime has named yet: asked again on later lookups


class IdentityTable:
    def __init__(self, host: Resource, max_processes: int = MAX_PROCESSES, proc: str = procfs.PROC, *,
                 rules: ServiceRules | None = None, containers: ContainerDirectory | None = None,
                 node_name: str | None = None) -> None:
        """host: the resource every process's resource extends; containers: the runtimes to
        ask who a container is (None: the cgroup path only); node_name: k8s.node.name of
        processes in pods."""
        self._host = host.as_dict()
        self._max = max_processes
        self._proc = proc
        self.rules = rules or ServiceRules()
        self.containers = containers
        self.node_name = node_name
        self._known: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()  # sensors drain on threads of their own
        self.unresolved = 0  # resources handed out while the runtime had not named the container yet
        self._cgroups: CgroupResolver | None = None  # cgroup v2 ids to paths, for processes gone
        self._cgroups_lock = threading.Lock()

    @classmethod
    def configured(cls, host: Resource, *, containerd_socket: str | None, containerd_namespaces: list[str],
                   docker_socket: str | None, runtime_timeout: float, max_containers: int, node_name: str | None,
                   crio_socket: str | None = None, kubernetes_api: bool = False, **rules: bool) -> IdentityTable:
        """The table as the config's identity section describes it (its fields by name): the
        service.name rules, the runtimes' sockets to ask, the Kubernetes API (where a service
        account is mounted), the node's name (default: what the DaemonSet's downward API put in
        K8S_NODE_NAME, else the host name, as kubelet's)."""
        from otelbpf.enrich.containerd import ContainerdClient  # grpc only where a runtime is asked
        from otelbpf.enrich.crio import CrioClient
        from otelbpf.enrich.docker import DockerClient
        from otelbpf.enrich.kube import ApiClient, KubernetesSource

        known_rules = {f.name for f in fields(ServiceRules)}
        unknown = set(rules) - known_rules
        if unknown:  # before anything is started
            raise TypeError(f"unknown identity rules {sorted(unknown)} (known: {sorted(known_rules)})")
        node_name = node_name or os.environ.get(NODE_NAME_ENV) or socket.gethostname()
        clients: list[RuntimeClient] = []
        api = ApiClient.in_cluster() if kubernetes_api else None
        if api is not None:  # first: the API knows owners by reference and the pod's annotations
            source = KubernetesSource(api, node_name)
            source.start()
            clients.append(source)
        if containerd_socket:
            clients.append(ContainerdClient(containerd_socket, tuple(containerd_namespaces), runtime_timeout))
        if crio_socket:
            clients.append(CrioClient(crio_socket, runtime_timeout))
        if docker_socket:
            clients.append(DockerClient(docker_socket, runtime_timeout))
        return cls(host, rules=ServiceRules(**rules),
                   containers=ContainerDirectory(clients, max_entries=max_containers) if clients else None,
                   node_name=node_name)

    def register_metrics(self, registry: Registry) -> None:
        """The table's counts as the agent's own metrics."""
        registry.gauge("otelbpf.identity.unresolved",
                       "Resources handed out before the container runtime named the process's container",
                       "{lookup}", lambda: [({}, self.unresolved)])
        containers = self.containers
        if containers is not None:
            registry.gauge("otelbpf.identity.runtime_lookups",
                           "Container runtime lookups by result (found, not_found, dropped, failed:<runtime>:<reason>)",
                           "{lookup}", _count_points(containers.counts, "result"))
            from otelbpf.enrich.kube import KubernetesSource

            for client in containers.clients:
                if isinstance(client, KubernetesSource):
                    registry.gauge("otelbpf.identity.kubernetes_api",
                                   "Kubernetes API lists, watches, 410 Gone and failures by kind (pods, replicasets)",
                                   "{request}", _count_points(client.counts, "event"))

    def close(self) -> None:
        if self.containers is not None:
            self.containers.close()

    def of(self, pid: int, comm: bytes | str = b"", cgroup_id: int = 0) -> ProcessIdentity:
        """The identity of pid; comm: the kernel's command name, and cgroup_id: the cgroup v2
        id the kernel saw it in (bpf_get_current_cgroup_id), for a process already gone."""
        return self._entry(pid, comm, cgroup_id).identity

    def resource(self, pid: int, comm: bytes | str = b"", cgroup_id: int = 0) -> Resource:
        """The resource of pid's telemetry: the host's, the process's, its container's and
        pod's, and its service (comm and cgroup_id as for `of`)."""
        return self._entry(pid, comm, cgroup_id).resource

    def executed(self, pid: int, at_ns: int) -> None:
        """pid ran a new program at at_ns (the process sensor's exec event, kernel monotonic time):
        the next sensor to ask reads it again, from /proc/PID/exe as every other process is read
        (the kernel's resolved path, not execve's possibly symlinked one), and its environment
        once more. An entry read after the exec already names the new program and stays: the
        process sensor drains on its own thread, often after another sensor has named a
        short-lived process that is gone now."""
        with self._lock:
            entry = self._known.get(pid)
            if entry is not None and entry.read_ns < at_ns:
                del self._known[pid]

    def known(self, pid: int) -> bool:
        with self._lock:
            return pid in self._known

    def _entry(self, pid: int, comm: bytes | str, cgroup_id: int) -> _Entry:
        if pid == 0:  # no process known (a socket accepted before the agent): not one to remember
            return self._read(0, comm, cgroup_id, 0)
        with self._lock:
            entry = self._known.get(pid)
            if entry is not None:
                self._known.move_to_end(pid)
                if not entry.unnamed:
                    return entry
        if entry is not None:  # the runtime may have answered since
            self._complete(entry)
            return entry
        read_ns = time.monotonic_ns()  # before the read: an exec after this makes it stale
        fresh = self._read(pid, comm, cgroup_id, read_ns)
        with self._lock:
            entry = self._known.setdefault(pid, fresh)
            while len(self._known) > self._max:
                self._known.popitem(last=False)
        return entry

    def _read(self, pid: int, comm: bytes | str, cgroup_id: int, read_ns: int) -> _Entry:
        path = procfs.executable(pid, self._proc)
        # the name from the same read: a process that exits in between is not named by its comm
        name = os.path.basename(path) if path else procfs.executable_name(0, comm, self._proc)
        cgroup = cgroup_identity_of_pid(pid, self._proc)[0] if pid else NONE
        if cgroup is NONE and cgroup_id and path is None:  # gone: the kernel said where it was
            cgroup = self._cgroup_of_id(cgroup_id)
        identity = ProcessIdentity(pid, name, path, cgroup.container_id)
        environment = environment_attributes(pid, self._proc) if pid and self.rules.otel_environment else {}
        container = self._container(cgroup)
        if container is PENDING:
            self._count_unresolved()
        unnamed = cgroup.container_id is not None and self.containers is not None and not isinstance(container, Container)
        entry = _Entry(identity, Resource(), read_ns, cgroup, environment, unnamed)
        entry.resource = self._resource(entry, None if isinstance(container, Pending) else container)
        return entry

    def _count_unresolved(self) -> None:
        with self._lock:  # sensors' drain threads count at once
            self.unresolved += 1

    def _cgroup_of_id(self, cgroup_id: int) -> CgroupIdentity:
        with self._cgroups_lock:  # the resolver is not thread safe; sensors drain on their own threads
            if self._cgroups is None:
                self._cgroups = CgroupResolver()
            path = self._cgroups.resolve(cgroup_id)
        return parse_cgroup_path(path) if path else NONE

    def _complete(self, entry: _Entry) -> None:
        """An unnamed container's process: named once a runtime has answered (the directory
        asks again, at most every retry_after, for a container no runtime knew)."""
        container = self._container(entry.cgroup)
        if isinstance(container, Pending):
            self._count_unresolved()
        if not isinstance(container, Container):
            return
        resource = self._resource(entry, container)
        with self._lock:
            entry.resource, entry.unnamed = resource, False

    def _container(self, cgroup: CgroupIdentity) -> Container | Pending | None:
        if self.containers is None or cgroup.container_id is None:
            return None
        return self.containers.peek(cgroup.container_id)

    def _resource(self, entry: _Entry, container: Container | None) -> Resource:
        identity, cgroup = entry.identity, entry.cgroup
        attrs: Attributes = {**self._host, **identity.attributes()}
        runtime = container.runtime if container else cgroup.runtime
        if runtime:
            attrs["container.runtime"] = runtime
        if container and container.name:
            attrs["container.name"] = container.name
        if container and container.image_name:
            attrs["container.image.name"] = container.image_name
        if cgroup.pod_uid:
            attrs["k8s.pod.uid"] = cgroup.pod_uid
        if container and container.pod:
            attrs.update(pod_attributes(container.pod, container.pod_container_name, self.node_name))
            attrs.update(pod_service(self.rules, container.pod, container.pod_container_name, entry.environment))
        else:
            labels = container.labels if container else None
            attrs.update(host_service(self.rules, entry.environment, labels, cgroup.systemd_unit, identity.executable_name))
        return Resource.of(attrs)


def _count_points(counts: collections.Counter[str], label: str) -> Callable[[], list[tuple[Attributes, int | float]]]:
    return lambda: [({label: name}, n) for name, n in sorted(counts.items())]
