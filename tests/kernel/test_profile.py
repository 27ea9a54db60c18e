"""The CPU profiler on the running kernel, against C programs the tests compile with frame
pointers: known hot functions, known callers, a syscall loop, JIT code named by a perf map."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import pytest

from otelbpf.profiling.model import Profile
from otelbpf.profiling.profiler import Profiler
from otelbpf.sensors.base import running
from otelbpf.sensors.profile import ProfileSensor
from otelbpf.signals.registry import Registry
from tests.conftest import require_tool

HZ = 99
HOT_SECONDS = 2.0

HOT = r"""
#include <stdlib.h>
#include <time.h>
volatile unsigned long sink;
__attribute__((noinline)) void hot_leaf_spin(unsigned long n) { for (unsigned long i = 0; i < n; i++) sink += i * i; }
__attribute__((noinline)) void middle_caller(unsigned long n) { hot_leaf_spin(n); sink++; }
__attribute__((noinline)) void outer_caller(unsigned long n) { middle_caller(n); sink++; }
int main(int argc, char **argv) {
    double secs = atof(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do { outer_caller(2000000); clock_gettime(CLOCK_MONOTONIC, &b); }
    while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < secs);
    return 0;
}
"""

# The syscall is made inline: libc's write() has no frame pointer, so unwinding through it
# would skip its caller (a limit of frame-pointer unwinding that every FP profiler shares).
SYSCALLS = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
static inline __attribute__((always_inline)) long raw_write(long fd, const void *buf, long n) {
    long ret;
#if defined(__x86_64__)
    __asm__ volatile("syscall" : "=a"(ret) : "a"((long)SYS_write), "D"(fd), "S"(buf), "d"(n) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = SYS_write, x0 __asm__("x0") = fd, x1 __asm__("x1") = (long)buf, x2 __asm__("x2") = n;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    ret = x0;
#endif
    return ret;
}
__attribute__((noinline)) void syscall_loop(int fd, double secs) {
    struct timespec a, b;
    char c = 'x';
    clock_gettime(CLOCK_MONOTONIC, &a);
    do { for (int i = 0; i < 1000; i++) raw_write(fd, &c, 1); clock_gettime(CLOCK_MONOTONIC, &b); }
    while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < secs);
}
int main(int argc, char **argv) { syscall_loop(open("/dev/null", O_WRONLY), atof(argv[1])); return 0; }
"""

# A tiny "JIT": machine code for an endless loop in anonymous executable memory, named in
# /tmp/perf-PID.map as python -X perf or node --perf-basic-prof would name their code.
JIT = r"""
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(code, 0x90, 64);            /* nops, then jmp back to the start: a loop of 66 bytes */
    code[64] = 0xEB; code[65] = (unsigned char)-66;
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    FILE *f = fopen(path, "w");
    fprintf(f, "%lx 42 jit_compiled_hot_loop\n", (unsigned long)code);
    fclose(f);
    ((void (*)(void))code)();
    return 0;
}
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    gcc = require_tool("gcc")
    d = tmp_path_factory.mktemp("profile")
    out = {}
    for name, source in (("hotprog", HOT), ("sysloop", SYSCALLS), ("jitprog", JIT)):
        (d / f"{name}.c").write_text(source)
        subprocess.run([gcc, "-O0", "-g", "-fno-omit-frame-pointer", "-o", str(d / name), str(d / f"{name}.c")],
                       check=True)
        out[name] = d / name
    return out


def user_names(stack) -> list[str]:
    """Function names of a stack's user frames, root first."""
    return [f.name for f in reversed(stack.frames) if not f.kernel]


def profile_while(commands: list[list[str]], seconds: float, after_exit=None):
    """Profile every process while `commands` run (each for `seconds`, or killed then);
    drain only after they have all exited. Returns (profile, pids, rusage by pid, registry)."""
    registry = Registry()
    profiler = Profiler(registry, HZ)
    profiler.start()
    try:
        procs = [subprocess.Popen(c) for c in commands]
        kill_at = time.monotonic() + seconds + 0.3
        usage = {}
        while len(usage) < len(procs) and time.monotonic() < kill_at + 10:
            profiler.poll(0.05)
            for p in procs:
                if p.pid in usage:
                    continue
                if time.monotonic() > kill_at:
                    os.kill(p.pid, signal.SIGKILL)  # endless workloads end here
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)  # wait4: the child's own CPU time
                if pid:
                    usage[p.pid] = ru
                    p.returncode = status
        assert len(usage) == len(procs), "a workload did not finish"
        if after_exit:
            after_exit()
        time.sleep(0.3)  # the processes are gone, and so is anything /proc knew of them
        profile = profiler.collect()
    finally:
        profiler.stop()
    return profile, [p.pid for p in procs], usage, registry


@pytest.fixture(scope="module")
def hot_run(programs, tmp_path_factory):
    # A copy of the binary, deleted before the drain: symbols must come from what was
    # captured while the process lived.
    exe = tmp_path_factory.mktemp("hot") / "hotprog"
    shutil.copy(programs["hotprog"], exe)
    profile, [pid], usage, registry = profile_while([[str(exe), str(HOT_SECONDS)]], HOT_SECONDS,
                                                    after_exit=exe.unlink)
    return profile.for_pid(pid), usage[pid], registry


def test_sample_count_matches_cpu_time_times_frequency(hot_run):
    profile, ru, registry = hot_run
    cpu_seconds = ru.ru_utime + ru.ru_stime
    expected = cpu_seconds * HZ
    print(f"samples {profile.total}, expected {expected:.0f} ({cpu_seconds:.2f} s CPU at {HZ} Hz)")
    assert abs(profile.total - expected) <= 0.15 * expected
    assert registry.counter("otelbpf.profile.samples").value() >= profile.total


def test_hot_function_is_the_top_leaf_and_callers_are_in_order(hot_run):
    profile, _, _ = hot_run
    leaves = Counter()
    for stack, n in profile.counts.items():
        names = user_names(stack)
        leaves[names[-1] if names else "[none]"] += n
    top, count = leaves.most_common(1)[0]
    assert top == "hot_leaf_spin", leaves
    assert count >= 0.8 * profile.total, leaves
    for stack in profile.counts:
        names = user_names(stack)
        if names and names[-1] == "hot_leaf_spin":
            assert names[-4:] == ["main", "outer_caller", "middle_caller", "hot_leaf_spin"], names


def test_process_that_exited_before_the_drain_is_symbolized(hot_run):
    profile, _, _ = hot_run
    frames = [f for stack in profile.counts for f in stack.frames if not f.kernel]
    named = [f for f in frames if f.module.endswith("hotprog")]
    assert named and all(f.resolved for f in named)
    assert all(f.build_id for f in named)


def test_kernel_frames_of_the_syscall_path_sit_on_the_user_loop(programs):
    profile, [pid], _, _ = profile_while([[str(programs["sysloop"]), "1.5"]], 1.5)
    profile = profile.for_pid(pid)
    in_kernel = Counter()
    for stack, n in profile.counts.items():
        kernel = [f.name for f in stack.frames if f.kernel]
        if kernel and user_names(stack)[-2:] == ["main", "syscall_loop"]:  # right under the loop
            in_kernel[tuple(kernel)] += n
    assert sum(in_kernel.values()) >= 0.3 * profile.total, profile.counts
    flat = {name for stack in in_kernel for name in stack}
    assert flat & {"ksys_write", "__x64_sys_write", "vfs_write", "__arm64_sys_write"}, flat
    for kernel_frames in in_kernel:  # leaf first: the syscall entry is the outermost kernel frame
        entry = [i for i, name in enumerate(kernel_frames) if name.startswith(("entry_SYSCALL", "do_syscall"))]
        writes = [i for i, name in enumerate(kernel_frames) if "write" in name]
        if entry and writes:
            assert min(writes) < max(entry)


def test_jit_code_is_named_from_its_perf_map(programs):
    profile, [pid], _, _ = profile_while([[str(programs["jitprog"])]], 1.0)
    os.unlink(f"/tmp/perf-{pid}.map")
    profile = profile.for_pid(pid)
    leaves = Counter()
    for stack, n in profile.counts.items():
        names = user_names(stack)
        leaves[names[-1] if names else "[none]"] += n
    assert leaves.most_common(1)[0][0] == "jit_compiled_hot_loop", leaves


def test_sensor_emits_a_profile_per_interval_and_drains_at_stop(programs):
    profiles: list[Profile] = []
    registry = Registry()
    with running(ProfileSensor(profiles.append, registry, hz=HZ, interval=1.0)):
        proc = subprocess.Popen([str(programs["hotprog"]), "1.6"])
        _, _, usage = os.wait4(proc.pid, 0)  # the loop's own CPU time: what a busy machine left it
    total = sum(p.for_pid(proc.pid).total for p in profiles)
    assert len(profiles) >= 2  # at least one interval, then the rest at stop
    cpu_seconds = usage.ru_utime + usage.ru_stime
    assert cpu_seconds > 0.2
    assert total >= 0.85 * cpu_seconds * HZ, (total, cpu_seconds)
    assert registry.counter("otelbpf.profile.samples").value() == sum(p.total for p in profiles)
