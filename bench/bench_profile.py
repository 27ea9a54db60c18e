"""CPU profiler overhead: a CPU-bound C workload (fixed work, single thread) timed with no
profiler, with `otelbpf profile` (every process, every CPU) at 19, 99 and 999 Hz, and with
`perf record -F 99 -g -a`, the modes alternating round by round in one run.

Reported: the workload's median wall time per mode and its slowdown against no profiler;
the profiler's own CPU (% of one CPU over its run) and peak RSS; the samples it took.
Bar: <= 1% slowdown at 99 Hz.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, median, table

ROUNDS = 5
WORK = r"""
#include <stdio.h>
#include <stdlib.h>
volatile unsigned long sink;
__attribute__((noinline)) unsigned long mix(unsigned long x) { return x * 6364136223846793005UL + 1442695040888963407UL; }
int main(int argc, char **argv) {
    unsigned long n = strtoul(argv[1], 0, 10), x = 1;
    for (unsigned long i = 0; i < n; i++) x = mix(x) ^ (x >> 17);
    sink = x;
    return 0;
}
"""
OTELBPF = [sys.executable, "-m", "otelbpf"]


def compile_workload(d: Path) -> Path:
    (d / "work.c").write_text(WORK)
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-o", str(d / "work"), str(d / "work.c")], check=True)
    return d / "work"


def time_workload(exe: Path, n: int) -> float:
    t = time.perf_counter()
    subprocess.run([str(exe), str(n)], check=True)
    return time.perf_counter() - t


def calibrate(exe: Path, seconds: float = 1.5) -> int:
    n = 50_000_000
    took = time_workload(exe, n)
    return int(n * seconds / took)


class Profiler:
    """A profiler as a separate process, started before the workload and stopped after it."""

    def __init__(self, mode: str, d: Path):
        self.mode = mode
        self.out = d / f"{mode}.folded"
        if mode == "perf":
            cmd = ["perf", "record", "-F", "99", "-g", "-a", "-q", "-o", str(d / "perf.data")]
        else:
            cmd = OTELBPF + ["profile", "--hz", mode, "--duration", "3600", "--out", str(self.out)]
        self.log = open(d / f"{mode}.log", "w+")
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=subprocess.DEVNULL)
        self._wait_ready()
        self.started = time.perf_counter()
        self.cpu_at_start = self._cpu_seconds()

    def _cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.mode} exited: {self.log.read()[-2000:]}")
            self.log.seek(0)
            if self.mode == "perf" or "profiling" in self.log.read():
                time.sleep(1.0 if self.mode == "perf" else 0.3)  # perf has no ready message
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.mode} did not start")

    def stop(self) -> tuple[float, float, float, int]:
        """(CPU seconds while sampling, wall seconds sampling, peak RSS MB, samples written);
        the CPU of start-up (imports, load) and of the final drain and output is left out."""
        cpu = self._cpu_seconds() - self.cpu_at_start
        wall = time.perf_counter() - self.started
        self.proc.send_signal(signal.SIGINT)
        _, _, ru = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        samples = 0
        if self.out.exists():
            samples = sum(int(line.rsplit(" ", 1)[1]) for line in self.out.read_text().splitlines() if line)
        return cpu, wall, ru.ru_maxrss / 1024, samples


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the profiler loads BPF programs")
    modes = ["none", "19", "99", "999"] + (["perf"] if shutil.which("perf") else [])
    times: dict[str, list[float]] = {m: [] for m in modes}
    usage: dict[str, list[tuple[float, float, float, int]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        exe = compile_workload(d)
        n = calibrate(exe)
        load_before = os.getloadavg()[0]
        for r in range(ROUNDS):
            order = modes if r % 2 == 0 else list(reversed(modes))  # no mode always runs first
            for mode in order:
                prof = Profiler(mode, d) if mode != "none" else None
                times[mode].append(time_workload(exe, n))
                if prof:
                    usage[mode].append(prof.stop())
        load_after = os.getloadavg()[0]
    base = median(times["none"])
    rows = []
    for mode in modes:
        t = median(times[mode])
        label = {"none": "no profiler", "perf": "perf record -F 99 -g -a"}.get(mode, f"otelbpf profile {mode} Hz")
        if usage[mode]:
            cpu = sum(u[0] for u in usage[mode]) / sum(u[1] for u in usage[mode]) * 100
            rss = max(u[2] for u in usage[mode])
            samples = median([u[3] for u in usage[mode]]) if mode != "perf" else "-"
        else:
            cpu, rss, samples = "-", "-", "-"
        rows.append([label, t, f"{(t / base - 1) * 100:+.2f}%", f"{min(times[mode]):.3f}-{max(times[mode]):.3f}",
                     cpu, rss, samples])
    print(header("profile: CPU profiler overhead on a CPU-bound workload"))
    print(f"Workload: one thread, fixed work (~{base:.1f} s), {ROUNDS} rounds, modes alternating "
          f"(order reversed every other round). Profilers sample every process on every CPU. "
          f"Load average {load_before:.2f} before, {load_after:.2f} after.\n")
    print(table(["mode", "workload s (median)", "slowdown", "range s", "profiler CPU % of 1 CPU while sampling",
                 "profiler peak RSS MB", "samples (median)"], rows))
    print("Bar: <= 1% slowdown at 99 Hz. Profiler CPU is measured from /proc between its start and its "
          "stop (start-up, the final drain and file output excluded). The kernel's cost of taking each sample is "
          "charged to the interrupted task, so it shows in the slowdown, not in the profiler's CPU.")


if __name__ == "__main__":
    main()
