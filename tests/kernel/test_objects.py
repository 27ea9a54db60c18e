"""The kernel layer on the running kernel: load errors, layouts, read-only config, maps."""

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from otelbpf.kernel import BpfObject, LayoutMismatchError, LoadError, loading
from otelbpf.kernel.objects import possible_cpus
from tests.synthetic import BENCH_EVENT
from tests.synthetic import BPF_OBJECT as BENCH_OBJECT

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
INCLUDE = REPO / "src" / "otelbpf" / "bpf"
PROCESS_OBJECT = INCLUDE / "process.bpf.o"

TEST_PROGRAM = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
const volatile __u32 multiplier = 1;
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096);
         __type(key, __u32); __type(value, __u64); } counts SEC(".maps");
struct fill_args { __u32 n; };
static long fill_one(__u64 i, void *ctx) {
    __u32 key = i; __u64 value = i * multiplier;
    bpf_map_update_elem(&counts, &key, &value, BPF_ANY); return 0; }
SEC("syscall") int fill(struct fill_args *a) { bpf_loop(a->n, fill_one, 0, 0); return 0; }
"""

BAD_PROGRAM = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u64); } values SEC(".maps");
SEC("tracepoint/syscalls/sys_enter_getpid")
int skips_null_check(void *ctx) { __u32 k = 0; __u64 *v = bpf_map_lookup_elem(&values, &k); return *v; }
"""


def compile_bpf(tmp_path: Path, name: str, source: str) -> Path:
    src = tmp_path / f"{name}.bpf.c"
    src.write_text(source)
    out = tmp_path / f"{name}.bpf.o"
    subprocess.run(["clang", "-target", "bpf", "-D__TARGET_ARCH_x86", "-O2", "-g", f"-I{BUILD}", f"-I{INCLUDE}",
                    "-c", str(src), "-o", str(out)], check=True, capture_output=True)
    return out


def test_verifier_rejection_names_program_and_shows_log(tmp_path):
    obj = BpfObject(compile_bpf(tmp_path, "bad", BAD_PROGRAM))
    with pytest.raises(LoadError) as err:
        obj.load()
    obj.close()
    assert err.value.program == "skips_null_check"
    assert "skips_null_check" in str(err.value)
    assert "map_value_or_null" in str(err.value)  # the verifier's own reason is shown


def test_layout_mismatch_is_an_error():
    wrong = np.dtype([("seq", "<u8"), ("ktime_ns", "<u4"), ("cpu", "<u4"), ("batch", "<u4"),
                      ("a", "<u8"), ("b", "<u8")], align=True)
    with BpfObject(BENCH_OBJECT) as obj:
        obj.check_layout("bench_event", BENCH_EVENT)  # the real mirror passes
        with pytest.raises(LayoutMismatchError, match="ktime_ns"):
            obj.check_layout("bench_event", wrong)


def test_rodata_and_batch_lookup_and_delete(tmp_path):
    with BpfObject(compile_bpf(tmp_path, "maps", TEST_PROGRAM)) as obj:
        obj.set_rodata(multiplier=7)
        obj.load()
        obj.programs["fill"].test_run((1231).to_bytes(4, "little"))
        counts = obj.maps["counts"]
        assert counts.lookup((5).to_bytes(4, "little")) == (35).to_bytes(8, "little")
        keys, values = counts.lookup_and_delete_batch(np.dtype("<u4"), np.dtype("<u8"), batch=100)
        order = np.argsort(keys)
        assert np.array_equal(keys[order], np.arange(1231))
        assert np.array_equal(values[order], np.arange(1231) * 7)
        assert counts.keys() == []  # drained


def test_unknown_rodata_variable_is_refused(tmp_path):
    with BpfObject(compile_bpf(tmp_path, "maps", TEST_PROGRAM)) as obj:
        with pytest.raises(Exception, match="no read-only variable 'nope'"):
            obj.set_rodata(nope=1)


def test_missing_object_says_how_to_build(tmp_path):
    with pytest.raises(Exception, match="make bpf"):
        BpfObject(tmp_path / "absent.bpf.o")


def _our_programs() -> set[str]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    return {p.get("name", "") for p in json.loads(out)}


def test_close_detaches_everything():
    obj = BpfObject(PROCESS_OBJECT)
    obj.maps["exec_scratch_map"].set_max_entries(possible_cpus())
    obj.load()
    obj.attach_all()
    assert {"handle_exec", "handle_fork", "handle_exit"} <= _our_programs()
    obj.close()
    deadline = time.monotonic() + 5  # the kernel frees programs after an RCU grace period
    while {"handle_exec", "handle_fork", "handle_exit"} & _our_programs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not {"handle_exec", "handle_fork", "handle_exit"} & _our_programs()


def _gone(names: set[str]) -> bool:
    deadline = time.monotonic() + 5  # the kernel frees programs after an RCU grace period
    while names & _our_programs() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not names & _our_programs()


def test_a_sensor_start_that_fails_midway_leaves_nothing_in_the_kernel():
    from otelbpf.sensors import process_events as ev

    names = {"handle_exec", "handle_fork", "handle_exit"}
    with pytest.raises(RuntimeError, match="setup after attach failed"):
        with loading(PROCESS_OBJECT, layouts={"process_event": ev.PROCESS_EVENT, "exec_event": ev.EXEC_EVENT},
                     rodata={"max_args_bytes": 1024}, max_entries={"exec_scratch_map": possible_cpus()}) as obj:
            obj.load()
            obj.attach_all()
            assert names <= _our_programs()
            raise RuntimeError("setup after attach failed")
    assert _gone(names)
    wrong = np.dtype([("pid", "<u4")])
    with pytest.raises(LayoutMismatchError, match="process_event"):  # refused before anything loads
        with loading(PROCESS_OBJECT, layouts={"process_event": wrong}) as obj:
            obj.load()


def test_program_run_statistics_when_the_kernel_keeps_them():
    stats_knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = stats_knob.read_text().strip()
    stats_knob.write_text("1")
    try:
        with BpfObject(PROCESS_OBJECT) as obj:
            obj.maps["exec_scratch_map"].set_max_entries(possible_cpus())
            obj.load()
            obj.attach_all()
            for _ in range(5):
                subprocess.run(["/bin/true"], check=True)
            run_time, runs = obj.programs["handle_exec"].stats()
            assert runs >= 5 and run_time > 0
    finally:
        stats_knob.write_text(before)
