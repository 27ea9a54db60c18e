"""Cgroup paths as kubelet, docker, containerd, CRI-O and podman leave them, parsed."""

import pytest

from otelbpf.enrich.cgroups import NONE, CgroupIdentity, cgroup_identity_of_pid, cgroup_paths, parse_cgroup_path

CID = "4a1f0c2b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b"
UID = "7f3c2a10-5b6e-4d8f-9a1b-2c3d4e5f6a7b"
UID_ = UID.replace("-", "_")
STATIC_UID = "0c3b6f1e2d4a5b6c7d8e9f0a1b2c3d4e"  # kubelet's hash for a static pod's manifest


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # kubelet, cgroupfs driver: Guaranteed pods sit directly under kubepods
        (f"/kubepods/pod{UID}/{CID}", CgroupIdentity(CID, None, UID, "guaranteed")),
        (f"/kubepods/burstable/pod{UID}/{CID}", CgroupIdentity(CID, None, UID, "burstable")),
        (f"/kubepods/besteffort/pod{UID}/{CID}", CgroupIdentity(CID, None, UID, "besteffort")),
        (f"/kubepods/besteffort/pod{UID}/crio-{CID}", CgroupIdentity(CID, "cri-o", UID, "besteffort")),
        (f"/kubepods/burstable/pod{STATIC_UID}/{CID}", CgroupIdentity(CID, None, STATIC_UID, "burstable")),
        # kubelet, systemd driver
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
         CgroupIdentity(CID, "containerd", UID, "guaranteed")),
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
         CgroupIdentity(CID, "containerd", UID, "burstable")),
        (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
         CgroupIdentity(CID, "cri-o", UID, "besteffort")),
        (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope",
         CgroupIdentity(CID, "docker", UID, "besteffort")),  # cri-dockerd
        # kind and other nodes whose kubelet has a cgroup root of its own
        (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
         f"kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
         CgroupIdentity(CID, "containerd", UID, "burstable")),
        # docker, both drivers; containerd and CRI-O outside Kubernetes; podman, rootful and rootless
        (f"/docker/{CID}", CgroupIdentity(CID, "docker")),
        (f"/system.slice/docker-{CID}.scope", CgroupIdentity(CID, "docker")),
        (f"/system.slice/cri-containerd-{CID}.scope", CgroupIdentity(CID, "containerd")),
        (f"/system.slice/crio-{CID}.scope", CgroupIdentity(CID, "cri-o")),
        (f"/machine.slice/libpod-{CID}.scope/container", CgroupIdentity(CID, "podman")),
        (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", CgroupIdentity(CID, "podman")),
        (f"/libpod_parent/libpod-{CID}", CgroupIdentity(CID, "podman")),
        (f"/docker/{CID}/init.scope", CgroupIdentity(CID, "docker")),  # systemd inside the container
    ],
)
def test_layouts(path, expected):
    assert parse_cgroup_path(path) == expected


def test_the_innermost_container_wins():
    inner = "b" * 64
    assert parse_cgroup_path(f"/docker/{CID}/docker/{inner}") == CgroupIdentity(inner, "docker")


def test_a_pod_cgroup_without_a_container_names_the_pod():
    found = parse_cgroup_path(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice")
    assert found == CgroupIdentity(None, None, UID, "burstable")
    assert found.in_pod


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/nginx.service", "nginx.service"),
        ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"),
        ("/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service", "syncthing.service"),
    ],
)
def test_systemd_services(path, unit):
    assert parse_cgroup_path(path) == CgroupIdentity(systemd_unit=unit)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/init.scope",
        "/user.slice/user-1000.slice/session-3.scope",
        "/user.slice/user-1000.slice/user@1000.service/init.scope",  # the user's systemd itself
        "/machine.slice/machine-debian.scope",  # systemd-nspawn: a name, not a container id
        f"/machine.slice/libpod-conmon-{CID}.scope",  # the runtime's monitor, outside the container
        f"/system.slice/crio-conmon-{CID}.scope",
        "/docker/" + "c" * 63,
        "/docker/" + "A" * 64,
        "/kubepods.slice/kubepods-besteffort.slice",  # a QoS slice, no pod
    ],
)
def test_paths_that_name_nothing(path):
    assert parse_cgroup_path(path) is NONE


def test_no_unit_is_taken_for_a_container():
    """A container started from a service's cgroup is named as a container, not as the unit."""
    assert parse_cgroup_path(f"/system.slice/containerd.service/{CID}") == CgroupIdentity(CID)


HYBRID = (
    "12:pids:/system.slice/nginx.service\n"
    f"4:memory:/kubepods/besteffort/pod{UID}/{CID}\n"
    "1:name=systemd:/system.slice/nginx.service\n"
    "0::/system.slice/nginx.service\n"
)


def _proc_with(tmp_path, pid, text):
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "cgroup").write_text(text)
    return str(tmp_path)


def test_unified_path_first_and_a_container_found_in_any_hierarchy(tmp_path):
    proc = _proc_with(tmp_path, 23, HYBRID)
    assert cgroup_paths(23, proc)[0] == "/system.slice/nginx.service"
    found, path = cgroup_identity_of_pid(23, proc)
    assert (found.container_id, found.pod_uid, path) == (CID, UID, f"/kubepods/besteffort/pod{UID}/{CID}")


def test_a_gone_process_names_nothing(tmp_path):
    assert cgroup_identity_of_pid(23, str(tmp_path)) == (NONE, None)


def test_a_process_at_the_root_keeps_its_path(tmp_path):
    proc = _proc_with(tmp_path, 41, "0::/\n")
    assert cgroup_identity_of_pid(41, proc) == (NONE, "/")
