"""What a process's cgroup path says about it: the container, the runtime that made it, the
Kubernetes pod and QoS class it belongs to, or the systemd unit that runs it.

Layouts recognised (the innermost container wins, so a nested container names the inner one):

  kubelet, cgroupfs driver     /kubepods/pod<uid>/<id>                      (Guaranteed)
                               /kubepods/burstable/pod<uid>/<id>
                               /kubepods/besteffort/pod<uid>/crio-<id>      (CRI-O)
  kubelet, systemd driver      /kubepods.slice/kubepods-pod<uid_>.slice/cri-containerd-<id>.scope
                               /kubepods.slice/kubepods-burstable.slice/
                                   kubepods-burstable-pod<uid_>.slice/crio-<id>.scope
                               (the uid's dashes become underscores; kind and other custom
                               cgroup roots prefix the slices, e.g. kubelet-kubepods-...)
  docker                       /docker/<id>, /system.slice/docker-<id>.scope
  containerd (CRI, systemd)    .../cri-containerd-<id>.scope
  CRI-O                        .../crio-<id>.scope, .../crio-<id>
  podman                       .../libpod-<id>.scope[/container], /libpod_parent/libpod-<id>
  systemd service              /system.slice/nginx.service, /user.slice/.../user@1000.service/
                                   app.slice/foo.service

Not containers: host paths, the runtimes' monitors (crio-conmon-<id>.scope,
libpod-conmon-<id>.scope run outside the container), systemd-nspawn machines
(machine-<name>.scope: a name, not a runtime's container id). A bare id under kubepods does
not say which runtime made it (containerd, CRI-O with cgroupfs, cri-dockerd): runtime None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from otelbpf.enrich import procfs

_ID = r"([0-9a-f]{64})"
_BARE_ID = re.compile(f"^{_ID}$")
# prefix of a container's scope -> container.runtime (values as in the semantic conventions)
_SCOPE = re.compile(rf"^(docker|cri-containerd|crio|libpod)-{_ID}(?:\.scope)?$")
_RUNTIME_OF_PREFIX = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman"}
# kubelet's pod cgroups: uids are UUIDs, or 32 hex digits for static pods (a hash of the manifest)
_POD_UID = r"([0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12})"
_POD_CGROUPFS = re.compile(f"^pod{_POD_UID}$")
_POD_SYSTEMD = re.compile(rf"kubepods(?:-(burstable|besteffort))?-pod{_POD_UID}\.slice$")
_QOS_CGROUPFS = ("burstable", "besteffort")
_QOS_SYSTEMD = re.compile(r"kubepods-(burstable|besteffort)\.slice$")
_KUBEPODS = re.compile(r"^(?:.+-)?kubepods(?:\.slice)?$")
_SERVICE_UNIT = re.compile(r"^(.+)\.service$")
_USER_MANAGER = re.compile(r"^user@\d+\.service$")  # the user's systemd, not an application


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    container_id: str | None = None
    runtime: str | None = None  # docker | containerd | cri-o | podman; None: not said by the path
    pod_uid: str | None = None  # with dashes, as the API shows it
    qos: str | None = None  # guaranteed | burstable | besteffort, for a pod's cgroups
    systemd_unit: str | None = None  # "nginx.service", only for a process in no container

    @property
    def in_pod(self) -> bool:
        return self.pod_uid is not None


NONE = CgroupIdentity()


def parse_cgroup_path(path: str) -> CgroupIdentity:
    """What one cgroup path (as /proc/PID/cgroup shows it, relative to the hierarchy's root)
    says; NONE for the root or a path that says nothing."""
    container_id = runtime = pod_uid = qos = unit = None
    in_kubepods = False
    parent = ""
    for part in path.split("/"):
        if not part:
            continue
        scope = _SCOPE.match(part)
        bare = _BARE_ID.match(part)
        if scope:
            container_id, runtime = scope.group(2), _RUNTIME_OF_PREFIX[scope.group(1)]
        elif bare:
            container_id = bare.group(1)
            runtime = "docker" if parent == "docker" else None
        elif _KUBEPODS.match(part):
            in_kubepods, qos = True, "guaranteed"  # pods directly under kubepods are Guaranteed
        elif in_kubepods and part in _QOS_CGROUPFS:
            qos = part
        elif in_kubepods and (match := _QOS_SYSTEMD.search(part)):
            qos = match.group(1)
        elif in_kubepods and (match := _POD_CGROUPFS.match(part) or _POD_SYSTEMD.search(part)):
            pod_uid = _dashed_uid(match.group(match.lastindex or 1))
        elif container_id is None and (match := _SERVICE_UNIT.match(part)) and not _USER_MANAGER.match(part):
            unit = part
        parent = part
    if container_id is None and pod_uid is None and unit is None:
        return NONE
    return CgroupIdentity(container_id, runtime, pod_uid, qos if pod_uid else None,
                          unit if container_id is None and pod_uid is None else None)


def _dashed_uid(uid: str) -> str:
    """A pod uid as the API writes it: the systemd driver's underscores become dashes again."""
    return uid.replace("_", "-")


def cgroup_paths(pid: int, proc: str = procfs.PROC) -> list[str]:
    """The process's cgroup paths, the unified (v2) hierarchy's first; [] when it is gone."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb", buffering=0) as f:
            lines = f.read(65536).decode("utf-8", "replace").splitlines()  # a line per hierarchy: a few hundred bytes
    except OSError:
        return []
    paths = [line.split(":", 2)[2] for line in lines if line.count(":") >= 2]
    unified = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    return unified + [p for p in paths if p not in unified]


def cgroup_identity_of_pid(pid: int, proc: str = procfs.PROC) -> tuple[CgroupIdentity, str | None]:
    """What the process's cgroups say, and the path that said it (the unified one when none
    does), for process.linux.cgroup. A hybrid host's v1 controllers may place the process
    where the unified hierarchy does not: the first path that names something wins."""
    paths = cgroup_paths(pid, proc)
    for path in paths:
        found = parse_cgroup_path(path)
        if found is not NONE and found.container_id is not None:
            return found, path
    for path in paths:  # no container: a pod cgroup or a service unit
        found = parse_cgroup_path(path)
        if found is not NONE:
            return found, path
    return NONE, paths[0] if paths else None
