"""Parallel exec storm against the process sensor alone (no export): does anything get lost
when many CPUs exec at once? Several shells each run a private copy of /bin/true in a loop;
every exec and exit record of that binary is counted, with the kernel's drop counter.

Usage: .venv/bin/python bench/bench_parallel_storm.py [SHELLS] [EACH]  (default: CPUs x 2000)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table
from otelbpf.enrich.host import host_resource
from otelbpf.sensors.base import running
from otelbpf.sensors.process import ProcessSensor
from otelbpf.signals.registry import Registry


def storm(shells: int, each: int) -> list:
    binary = f"/tmp/otelbpf-pstorm-{uuid.uuid4().hex[:8]}"
    shutil.copy("/bin/true", binary)
    counts = {"process.exec": 0, "process.exit": 0}
    lock = threading.Lock()

    def emit(batch):
        with lock:
            for r in batch.records:
                if r.attributes.get("process.executable.path") == binary:
                    counts[r.event_name] += 1

    registry = Registry()
    with running(ProcessSensor(emit, registry, host_resource())):
        cpu0 = time.process_time()
        t0 = time.monotonic()
        loop = f"i=0; while [ $i -lt {each} ]; do {binary}; i=$((i+1)); done"
        procs = [subprocess.Popen(["/bin/sh", "-c", loop]) for _ in range(shells)]
        for p in procs:
            p.wait(timeout=600)
        wall = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while counts["process.exit"] < shells * each and time.monotonic() < deadline:
            time.sleep(0.1)
    os.unlink(binary)
    drops = sum(p.value for p in registry.counter("otelbpf.sensor.dropped").points())
    return [f"{shells} x {each:,}", round(shells * each / wall), f"{counts['process.exec']:,}",
            f"{counts['process.exit']:,}", f"{shells * each:,}", int(drops), round(time.process_time() - cpu0, 2)]


def main(shells: int, each: int) -> str:
    out = header("Parallel exec storm (process sensor only)")
    out += "\n" + table(["shells x processes", "processes/s", "exec records", "exit records", "expected",
                         "kernel drops", "sensor CPU s"], [storm(1, each), storm(shells, each)])
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2 * (os.cpu_count() or 1)
    print(main(n, int(sys.argv[2]) if len(sys.argv) > 2 else 2000))
