import os

import pytest

from otelbpf.enrich.containers import (
    CgroupResolver,
    container_id_from_cgroup,
    find_cgroup2_root,
)
from tests.conftest import require

CID = "3f4e" + "a1" * 30
POD = "pod5c2d9a1e-7b1f-4c4e-9a55-0123456789ab"


@pytest.mark.parametrize(
    "path",
    [
        f"/docker/{CID}",
        f"/system.slice/docker-{CID}.scope",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD.replace('-', '_')}.slice/"
        f"cri-containerd-{CID}.scope",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{POD}.slice/crio-{CID}.scope",
        f"/machine.slice/libpod-{CID}.scope/container",
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
        f"/kubepods/besteffort/{POD}/{CID}",
        f"/kubepods/burstable/{POD}/{CID}",
        f"/docker/{CID}/init.scope",  # systemd running inside the container
    ],
)
def test_container_paths(path):
    assert container_id_from_cgroup(path) == CID


def test_innermost_container_wins():
    inner = "b" * 64
    assert container_id_from_cgroup(f"/docker/{CID}/docker/{inner}") == inner


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/user.slice/user-1000.slice/session-3.scope",
        "/system.slice/sshd.service",
        "/init.scope",
        "/machine.slice/machine-debian.scope",  # systemd-nspawn: a name, not a container id
        f"/machine.slice/libpod-conmon-{CID}.scope",  # the runtime monitor, outside the container
        f"/system.slice/crio-conmon-{CID}.scope",
        f"/kubepods/besteffort/{POD}",  # the pod, not a container
        "/docker/" + "A" * 64,  # not lowercase hex
        "/docker/" + "a" * 63,
    ],
)
def test_not_container_paths(path):
    assert container_id_from_cgroup(path) is None


def test_find_cgroup2_root(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "41 30 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert find_cgroup2_root(str(info)) == "/sys/fs/cgroup/unified"
    info.write_text(
        "41 30 0:38 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n"
        "42 30 0:39 / /other rw - cgroup2 cgroup2 rw\n"
    )
    assert find_cgroup2_root(str(info)) == "/sys/fs/cgroup"
    assert find_cgroup2_root(str(tmp_path / "missing")) is None


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_resolver_logic_on_a_plain_tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "file").write_text("not a cgroup")
    clock = FakeClock()
    resolver = CgroupResolver(str(tmp_path), min_rescan_interval=5, clock=clock)
    assert resolver.resolve(os.stat(tmp_path / "a" / "b").st_ino) == "/a/b"
    assert resolver.resolve(os.stat(tmp_path).st_ino) == "/"
    assert resolver.resolve(os.stat(tmp_path / "c").st_ino) == "/c"
    assert resolver.rescans == 1  # one walk served all three

    (tmp_path / "new").mkdir()
    new_id = os.stat(tmp_path / "new").st_ino
    assert resolver.resolve(new_id) is None  # rescan rate limited
    assert resolver.rescans == 1 and resolver.misses == 1
    clock.now += 5
    assert resolver.resolve(new_id) == "/new"
    assert resolver.rescans == 2

    unknown = 1 << 60
    for _ in range(100):
        assert resolver.resolve(unknown) is None
    assert resolver.rescans == 2  # a flood of unknown ids costs no walks


def test_resolver_cache_is_bounded_and_keeps_the_wanted_id(tmp_path):
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    resolver = CgroupResolver(str(tmp_path), max_entries=3, clock=FakeClock())
    for i in range(10):
        path = tmp_path / f"d{i}"
        resolver.resolve(os.stat(path).st_ino)
        resolver.min_rescan_interval = 0
    wanted = os.stat(tmp_path / "d4").st_ino
    assert resolver.resolve(wanted) == "/d4"
    assert len(resolver._paths) <= 3
    assert resolver.evictions > 0


def test_resolver_forgets_removed_cgroups(tmp_path):
    (tmp_path / "gone").mkdir()
    gone = os.stat(tmp_path / "gone").st_ino
    clock = FakeClock()
    resolver = CgroupResolver(str(tmp_path), min_rescan_interval=1, clock=clock)
    assert resolver.resolve(gone) == "/gone"
    (tmp_path / "gone").rmdir()
    clock.now += 1
    assert resolver.resolve(1 << 60) is None  # a miss rescans
    assert resolver.rescans == 2
    assert gone not in resolver._paths


def _real_cgroup2_root():
    root = find_cgroup2_root()
    reason = None
    if root is None:
        reason = "no cgroup2 hierarchy mounted"
    elif os.geteuid() != 0:
        reason = "creating cgroups needs root"
    require(reason is None, reason or "")
    return root


@pytest.fixture
def real_cgroups():
    root = _real_cgroup2_root()
    top = os.path.join(root, f"otelbpf-test-{os.getpid()}")
    dirs = [top, os.path.join(top, "a"), os.path.join(top, "a", f"docker-{CID}.scope")]
    for d in dirs:
        os.mkdir(d)
    try:
        yield root, dirs
    finally:
        for d in reversed(dirs):
            os.rmdir(d)


def test_resolver_on_real_cgroups(real_cgroups):
    root, dirs = real_cgroups
    resolver = CgroupResolver(root)
    assert resolver.root == root
    for d in dirs:
        rel = "/" + os.path.relpath(d, root)
        assert resolver.resolve(os.stat(d).st_ino) == rel
    leaf = resolver.resolve(os.stat(dirs[-1]).st_ino)
    assert container_id_from_cgroup(leaf) == CID
    # Our own cgroup, as /proc/self/cgroup names it, resolves from its inode.
    own = next(line.split("::", 1)[1].strip() for line in open("/proc/self/cgroup") if line.startswith("0::"))
    assert resolver.resolve(os.stat(root + own.rstrip("/")).st_ino if own != "/" else os.stat(root).st_ino) == own
