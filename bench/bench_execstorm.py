"""Exec storm: 10,000 short-lived processes while the agent runs as a user would run it.

The agent (`otelbpf run`, a separate process) exports OTLP/HTTP to a receiver in this
process, which counts every exec and exit of the storm's children. Reported: captured vs
expected, kernel drops, agent CPU seconds and peak RSS at idle and during the storm.
Bar: every exec and exit captured, zero drops, RSS <= 100 MB.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table
from otelbpf.receiver.otlp import OtlpReceiver

STORM = 10_000
IDLE_SECONDS = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Counter:
    """Counts the exec and exit records of the storm's binary among what the agent exports."""

    def __init__(self, binary: str):
        self.lock = threading.Lock()
        self.binary = binary
        self.records = {"process.exec": 0, "process.exit": 0}
        self.drops = 0.0

    def __call__(self, signal_name, request):
        if signal_name == "logs":
            with self.lock:
                for rl in request.resource_logs:
                    for sl in rl.scope_logs:
                        for r in sl.log_records:
                            for kv in r.attributes:
                                if kv.key == "process.executable.path":
                                    if kv.value.string_value == self.binary:
                                        self.records[r.event_name] += 1
                                    break
        elif signal_name == "metrics":
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name == "otelbpf.sensor.dropped":
                            self.drops = sum(p.as_int or p.as_double for p in m.sum.data_points)
        return None


def main() -> str:
    # A copy of /bin/true under a name of its own: its records are the storm's, whatever the pids.
    binary = f"/tmp/otelbpf-storm-{uuid.uuid4().hex[:8]}"
    shutil.copy("/bin/true", binary)
    counter = Counter(binary)
    with OtlpReceiver("127.0.0.1", None, 0, handler=counter, keep=1) as receiver:
        env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint,
                   OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTELBPF_METRICS_INTERVAL="1")
        log = open("/tmp/otelbpf-bench-agent.log", "w")
        agent = subprocess.Popen([sys.executable, "-m", "otelbpf", "run", "--sensors", "process"], env=env, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while "running" not in Path(log.name).read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            cpu0 = cpu_seconds(agent.pid)
            time.sleep(IDLE_SECONDS)
            idle_cpu = cpu_seconds(agent.pid) - cpu0
            idle_rss = rss_mb(agent.pid, "VmRSS")

            # The storm: one shell forks and execs /bin/true STORM times, as fast as it can.
            storm = subprocess.Popen(["/bin/sh", "-c", f"i=0; while [ $i -lt {STORM} ]; do {binary}; "
                                      "i=$((i+1)); done"])
            cpu1 = cpu_seconds(agent.pid)
            t0 = time.monotonic()
            storm.wait(timeout=300)
            storm_seconds = time.monotonic() - t0
            deadline = time.monotonic() + 60
            while counter.records["process.exit"] < STORM and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)  # one more metrics interval for the drop counter
            storm_cpu = cpu_seconds(agent.pid) - cpu1
            peak_rss = rss_mb(agent.pid, "VmHWM")
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
            os.unlink(binary)
    rows = [
        ["execs captured", f"{counter.records['process.exec']:,} / {STORM:,}"],
        ["exits captured", f"{counter.records['process.exit']:,} / {STORM:,}"],
        ["kernel drops", int(counter.drops)],
        ["storm duration s", round(storm_seconds, 2)],
        ["storm rate (processes/s)", round(STORM / storm_seconds)],
        ["agent CPU s, idle 5 s", round(idle_cpu, 2)],
        ["agent CPU s, storm", round(storm_cpu, 2)],
        ["agent CPU ms per 1,000 processes", round(storm_cpu / STORM * 1000 * 1000)],
        ["agent RSS idle MB", round(idle_rss, 1)],
        ["agent peak RSS MB", round(peak_rss, 1)],
    ]
    ok = counter.records == {"process.exec": STORM, "process.exit": STORM} and counter.drops == 0
    out = header("Exec storm")
    out += (f"\n{STORM:,} processes (a copy of `/bin/true` run by one shell loop), "
            "`otelbpf run --sensors process` exporting OTLP/HTTP.\n\n")
    out += table(["measure", "value"], rows)
    out += (f"\nAll captured with zero drops: {'met' if ok else 'MISSED'}; "
            f"peak RSS <= 100 MB: {'met' if peak_rss <= 100 else 'MISSED'}.\n")
    return out


if __name__ == "__main__":
    print(main())
