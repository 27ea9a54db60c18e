import os
import subprocess
import sys
import time

import pytest

from otelbpf.sensors.proctable import NS_PER_SEC, ProcessTable

S = NS_PER_SEC


def table(capacity=100, **kw):
    return ProcessTable(capacity, boot_id="b007b007", **kw)


def test_fork_inherits_parent_image_until_exec():
    t = table()
    t.on_exec(100, 1 * S, exe_path="/bin/bash", args=["bash"], ppid=1, uid=1000, gid=1000, cwd="/home/u",
              cgroup_id=77, container_id="c" * 64)
    child = t.on_fork(101, 100, 2 * S)
    assert (child.exe_path, child.exe_name, child.args) == ("/bin/bash", "bash", ["bash"])
    assert (child.uid, child.gid, child.cwd, child.cgroup_id, child.container_id) == (1000, 1000, "/home/u", 77, "c" * 64)
    assert child.ppid == 100 and child.start_time_ns == 2 * S
    assert child.exec_id == f"b007b007:{2 * S}:101"
    parent_exec_id = t.get(100).exec_id
    assert child.exec_id != parent_exec_id

    execed = t.on_exec(101, 3 * S, exe_path="/usr/bin/ls", args=["ls", "-la"])
    assert (execed.exe_name, execed.args, execed.ppid, execed.uid) == ("ls", ["ls", "-la"], 100, 1000)
    assert execed.start_time_ns == 2 * S  # exec keeps the process start time
    assert execed.exec_id == f"b007b007:{3 * S}:101"
    assert child.exe_name == "bash"  # the object handed out before the exec is unchanged
    assert t.get(101) is execed


def test_fork_of_unknown_parent_and_exec_of_unknown_pid():
    t = table()
    orphan = t.on_fork(5, 4, 1 * S, uid=0)
    assert orphan.exe_path == "" and orphan.args == [] and orphan.uid == 0
    late = t.on_exec(9, 2 * S, exe_path="/usr/sbin/nginx", args=["nginx"], ppid=1)
    assert late.ppid == 1 and late.exe_name == "nginx" and t.get(9) is late


def test_repeated_execs_get_distinct_exec_ids():
    t = table()
    ids = {t.on_exec(7, i * S, exe_path="/bin/sh", args=["sh"], ppid=1).exec_id for i in range(1, 24)}
    assert len(ids) == 23


def test_exit_keeps_entry_for_grace_period():
    t = table(exit_grace_ns=5 * S)
    t.on_exec(10, 1 * S, exe_path="/bin/true", args=["true"], ppid=1)
    info = t.on_exit(10, 2 * S, exit_code=3)
    assert info.exited and info.exit_code == 3
    t.on_fork(11, 1, 6 * S)  # 4 s later: still there
    assert t.get(10) is info
    t.on_fork(12, 1, 7 * S)  # 5 s later: gone
    assert t.get(10) is None
    assert t.evictions == 0  # expiry is not an eviction
    assert t.on_exit(999, 8 * S) is None


def test_exited_entries_are_bounded():
    t = table(max_exited=2, exit_grace_ns=1000 * S)
    for pid in (1, 2, 3):
        t.on_fork(pid, 0, pid)
        t.on_exit(pid, 10 + pid)
    assert t.get(1) is None and t.get(2) is not None and t.get(3) is not None


def test_pid_reuse_is_not_dropped_by_old_tombstone():
    t = table(exit_grace_ns=5 * S)
    t.on_fork(20, 1, 1 * S)
    t.on_exit(20, 2 * S)
    reused = t.on_fork(20, 1, 3 * S)
    t.on_fork(21, 1, 10 * S)  # the old tombstone expires now
    assert t.get(20) is reused and not reused.exited


def test_ancestry_chain():
    t = table()
    t.on_fork(1, 0, 0)
    t.on_exec(1, 1, exe_path="/sbin/init", args=["init"])
    for pid, ppid in ((100, 1), (200, 100), (300, 200), (400, 300)):
        t.on_fork(pid, ppid, pid)
    assert [p.pid for p in t.ancestry(400)] == [300, 200, 100, 1]
    assert [p.pid for p in t.ancestry(400, max_depth=2)] == [300, 200]
    assert t.ancestry(1) == []
    assert t.ancestry(12345) == []


def test_ancestry_stops_on_missing_and_cycles():
    t = table()
    t.on_fork(2, 99, 5)  # parent 99 unknown
    t.on_fork(3, 2, 6)
    assert [p.pid for p in t.ancestry(3)] == [2]
    t.on_fork(50, 51, 0)
    t.on_fork(51, 50, 0)  # corrupt data: each is the other's parent
    assert [p.pid for p in t.ancestry(50)] == [51]


def test_ancestry_stops_at_reused_parent_pid():
    t = table()
    t.on_fork(10, 1, 1 * S)
    t.on_fork(11, 10, 2 * S)
    t.on_exit(10, 3 * S)
    t.on_fork(10, 1, 4 * S)  # pid 10 reused by a process younger than 11
    assert t.ancestry(11) == []


def test_capacity_evicts_exited_first_then_lru():
    t = table(capacity=3, exit_grace_ns=1000 * S)
    for pid in (1, 2, 3):
        t.on_fork(pid, 0, pid)
    t.on_exit(2, 10)
    t.on_fork(4, 0, 11)
    assert 2 not in t and len(t) == 3 and t.evictions == 1
    t.get(1)  # 1 is now more recent than 3
    t.on_fork(5, 0, 12)
    assert 3 not in t and 1 in t and t.evictions == 2
    assert len(t) == 3
    for pid in range(100, 123):
        t.on_fork(pid, 0, pid)
    assert len(t) == 3 and t.evictions == 25


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        ProcessTable(0)


def test_seed_from_real_proc_finds_this_process():
    t = ProcessTable(100_000)
    added = t.seed_from_proc()
    assert added == len(t) > 1
    me = t.get(os.getpid())
    assert me is not None
    assert me.ppid == os.getppid()
    assert me.exe_path == os.readlink("/proc/self/exe") == os.path.realpath(sys.executable)
    assert me.exe_name == os.path.basename(me.exe_path)
    with open("/proc/self/cmdline", "rb") as f:
        assert me.args == [a.decode() for a in f.read().split(b"\0")[:-1]]
    assert me.uid == os.getuid() and me.gid == os.getgid()
    assert me.cwd == os.getcwd()
    assert 0 < me.start_time_ns <= time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert me.exec_id == f"{t.boot_id}:{me.start_time_ns}:{os.getpid()}"
    assert [p.pid for p in t.ancestry(os.getpid())][:1] == [os.getppid()]
    assert t.seed_from_proc() == 0  # already known pids are left alone


def test_seed_sees_a_child_with_known_args_and_start_time():
    child = subprocess.Popen(["sleep", "23"])
    try:
        time.sleep(0.1)
        t = ProcessTable(100_000)
        t.seed_from_proc()
        info = t.get(child.pid)
        assert info.ppid == os.getpid()
        assert info.args == ["sleep", "23"]
        assert info.exe_name == "sleep"
        assert info.start_time_ns >= t.get(os.getpid()).start_time_ns
    finally:
        child.kill()
        child.wait()


def test_seed_with_cgroup_root_and_container_mapping(tmp_path):
    proc = tmp_path / "proc"
    pid_dir = proc / "4242"
    pid_dir.mkdir(parents=True)
    (pid_dir / "stat").write_text("4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 " + "0 " * 12 + "500 0 0\n")
    (pid_dir / "cmdline").write_bytes(b"app\0--flag\0")
    (pid_dir / "status").write_text("Name:\tapp\nUid:\t1000\t0\t0\t0\nGid:\t100\t0\t0\t0\n")
    (pid_dir / "cgroup").write_text("1:cpu:/\n0::/system.slice/docker-" + "a" * 64 + ".scope\n")
    os.symlink("/usr/bin/app (deleted)", pid_dir / "exe")
    cgroot = tmp_path / "cg"
    (cgroot / "system.slice" / ("docker-" + "a" * 64 + ".scope")).mkdir(parents=True)
    (proc / "self").mkdir()  # not a pid: ignored

    t = ProcessTable(10, boot_id="b")
    assert t.seed_from_proc(str(proc), cgroup_root=str(cgroot), container_id_of=lambda p: p[-70:-6]) == 1
    info = t.get(4242)
    assert (info.ppid, info.uid, info.gid) == (1, 1000, 100)
    assert info.start_time_ns == 500 * S // os.sysconf("SC_CLK_TCK")
    assert (info.exe_path, info.exe_name, info.args) == ("/usr/bin/app", "app", ["app", "--flag"])
    assert info.cgroup_id == os.stat(cgroot / "system.slice" / ("docker-" + "a" * 64 + ".scope")).st_ino
    assert info.container_id == "a" * 64
    assert info.cwd is None


def test_exec_with_kernel_start_time():
    t = table()
    t.on_fork(30, 1, 1 * S)
    info = t.on_exec(30, 5 * S, exe_path="/bin/sh", args=["sh"], start_time_ns=1 * S + 7)
    assert info.start_time_ns == 1 * S + 7 and info.exec_id == f"b007b007:{5 * S}:30"
    # An event without the exec time still works; the start time stands in for it.
    unknown = t.on_exec(31, exe_path="/bin/sh", args=["sh"], start_time_ns=2 * S, ppid=30)
    assert unknown.start_time_ns == 2 * S and unknown.exec_id == f"b007b007:{2 * S}:31"
    with pytest.raises(ValueError, match="needs time_ns"):
        t.on_exec(32, exe_path="/bin/sh", args=["sh"])
