"""Network sensor overhead: iperf3 throughput and short-connection rate over loopback, without
and with the agent (`otelbpf run --sensors network`, exporting OTLP to a local receiver),
alternating in one run. Also: connections the agent reported vs made, agent CPU and peak RSS.
Bars: <= 2% throughput loss; <= 5% connection-rate loss with zero missed connections.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from bench_execstorm import cpu_seconds, rss_mb
from common import header, median, table
from otelbpf.receiver.otlp import OtlpReceiver

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
IPERF_SECONDS = 3
CONNECTIONS = 5_000


def iperf3_gbits() -> float:
    # Pinned, one CPU each: unpinned loopback iperf3 swings 2x between runs with where the
    # scheduler puts the two ends, which would drown the agent's effect.
    server = subprocess.Popen(["taskset", "-c", "0", "iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "5301"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = subprocess.run(["taskset", "-c", "1", "iperf3", "-c", "127.0.0.1", "-p", "5301", "-t",
                              str(IPERF_SECONDS), "-J"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    finally:
        server.wait(10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def connection_rate() -> tuple[float, int]:
    """Connections per second for CONNECTIONS short connections (connect, 1 byte each way, close)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(CONNECTIONS):
            c, _ = srv.accept()
            c.recv(1)
            c.sendall(b"y")
            c.close()

    t = threading.Thread(target=serve)
    t.start()
    start = time.perf_counter()
    for _ in range(CONNECTIONS):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"x")
        c.recv(1)
        c.close()
    elapsed = time.perf_counter() - start
    t.join()
    srv.close()
    return CONNECTIONS / elapsed, port


class ConnectionCounter:
    """Sums the agent's exported otelbpf.network.tcp.connections by server port and role."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latest: dict[tuple[int, str], float] = {}

    def __call__(self, signal_name, request):
        if signal_name != "metrics":
            return None
        with self.lock:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != "otelbpf.network.tcp.connections":
                            continue
                        for p in m.sum.data_points:
                            a = {kv.key: kv.value for kv in p.attributes}
                            key = (a["server.port"].int_value, a["otelbpf.network.role"].string_value)
                            self.latest[key] = p.as_int or p.as_double
        return None

    def count(self, port: int, role: str) -> int:
        with self.lock:
            return int(self.latest.get((port, role), 0))


def start_agent(receiver: OtlpReceiver) -> subprocess.Popen:
    return common.start_agent(receiver.http_endpoint, "network", "/tmp/otelbpf-bench-network.log")


def main() -> str:
    counter = ConnectionCounter()
    base_tp, agent_tp, base_cr, agent_cr, missed, cpu, rss = [], [], [], [], [], [], []
    with OtlpReceiver("127.0.0.1", None, 0, handler=counter, keep=1) as receiver:
        for round_no in range(ROUNDS):
            # Alternate which half goes first, so that order effects cancel out.
            if round_no % 2 == 0:
                base_tp.append(iperf3_gbits())
                base_cr.append(connection_rate()[0])
            agent = start_agent(receiver)
            try:
                cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
                agent_tp.append(iperf3_gbits())
                rate, port = connection_rate()
                agent_cr.append(rate)
                cpu.append((cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0))
                deadline = time.monotonic() + 25  # the next metrics export carries the counts
                while counter.count(port, "client") < CONNECTIONS and time.monotonic() < deadline:
                    time.sleep(0.2)
                missed.append(2 * CONNECTIONS - counter.count(port, "client") - counter.count(port, "server"))
                rss.append(rss_mb(agent.pid, "VmHWM"))
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(60)
            if round_no % 2 == 1:
                base_tp.append(iperf3_gbits())
                base_cr.append(connection_rate()[0])
    tp_loss = 1 - median(agent_tp) / median(base_tp)
    cr_loss = 1 - median(agent_cr) / median(base_cr)
    rows = [
        ["iperf3 loopback Gbit/s", median(base_tp), median(agent_tp), f"{100 * tp_loss:+.1f}%"],
        ["short connections/s", median(base_cr), median(agent_cr), f"{100 * cr_loss:+.1f}%"],
    ]
    out = header("Network sensor overhead")
    out += (f"\n{ROUNDS} rounds alternating without / with the agent (order swapped every other round); "
            f"iperf3 -t {IPERF_SECONDS} over 127.0.0.1 (server on CPU 0, client on CPU 1); "
            f"{CONNECTIONS:,} short TCP connections per round (Python client and server, 1 byte each way).\n\n")
    out += table(["workload", "without agent (median)", "with agent (median)", "loss"], rows)
    out += (f"\nConnections missed by the agent (client + server sides of {CONNECTIONS:,} per round): "
            f"{missed}. Agent CPU during the workloads: {', '.join(f'{c:.2f}' for c in cpu)} cores; "
            f"peak RSS: {', '.join(f'{r:.0f}' for r in rss)} MB.\n"
            f"Bars: throughput loss <= 2%: {'met' if tp_loss <= 0.02 else 'MISSED'}; connection-rate loss <= 5%: "
            f"{'met' if cr_loss <= 0.05 else 'MISSED'}; zero missed: {'met' if not any(missed) else 'MISSED'}.\n"
            "Loss is noisy at this scale (2 cores shared by load, server and agent): see the per-round spread.\n")
    out += f"\nper round, Gbit/s without: {[round(x, 2) for x in base_tp]}, with: {[round(x, 2) for x in agent_tp]}; "
    out += f"connections/s without: {[round(x) for x in base_cr]}, with: {[round(x) for x in agent_cr]}\n"
    return out


if __name__ == "__main__":
    print(main())
