"""/healthz and /readyz on a local port: the probes of a Kubernetes DaemonSet.

/healthz answers 200 while every loop of the agent (the main loop and each sensor's drain)
has gone round within STALE_AFTER seconds: a hung loop makes the kubelet restart the pod.
/readyz answers 200 once every sensor is attached, while no sensor's drains keep failing,
the exporter is not stuck (items queued and none accepted for STUCK_AFTER seconds), and the
config and policy files took effect. Otherwise 503, one reason a line, which
`kubectl describe pod` shows as the probe's message.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from otelbpf.signals.registry import Registry

STALE_AFTER = 30.0  # seconds a loop may go without a round before /healthz fails
STUCK_AFTER = 60.0  # seconds with items queued and none accepted before /readyz fails


class HealthState:
    """What the agent's loops tell about themselves; read by the probes (thread-safe)."""

    def __init__(self, registry: Registry | None = None, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self._problems: dict[str, str] = {}
        self._started = False
        self._exporter = ExportProgress(registry, clock) if registry is not None else None

    def beat(self, loop: str) -> None:
        """A loop went round."""
        with self._lock:
            self._beats[loop] = self._clock()

    def started(self) -> None:
        """Every sensor is attached."""
        with self._lock:
            self._started = True

    def problem(self, key: str, message: str | None) -> None:
        """Set (or with None clear) the reason `key` keeps the agent from being ready."""
        with self._lock:
            if message is None:
                self._problems.pop(key, None)
            else:
                self._problems[key] = message

    def liveness(self) -> list[str]:
        now = self._clock()
        with self._lock:
            return [f"{loop}: no round for {now - at:.0f} s" for loop, at in sorted(self._beats.items())
                    if now - at > STALE_AFTER]

    def readiness(self) -> list[str]:
        reasons = self.liveness()
        with self._lock:
            if not self._started:
                reasons.append("starting: sensors not attached yet")
            reasons += [f"{key}: {message}" for key, message in sorted(self._problems.items())]
        if self._exporter is not None:
            stuck = self._exporter.stuck()
            if stuck:
                reasons.append(stuck)
        return reasons


class ExportProgress:
    """Whether the exporter is stuck, from its own counters: items queued, and no item
    accepted by the receiver (otelbpf.exporter.sent) for STUCK_AFTER seconds."""

    def __init__(self, registry: Registry, clock=time.monotonic) -> None:
        self._registry, self._clock = registry, clock
        self._sent = -1.0
        self._progress_at = clock()

    def _total(self, name: str) -> float:
        # Looked up, not asked for: asking would create the exporter's counters without their descriptions.
        found = next((i for i in self._registry.instruments() if i.name == name), None)
        return float(sum(p.value for p in found.points())) if found is not None else 0.0

    def stuck(self) -> str | None:
        now = self._clock()
        sent, queued = self._total("otelbpf.exporter.sent"), self._total("otelbpf.exporter.queue.size")
        if sent != self._sent or queued <= 0:
            self._sent, self._progress_at = sent, now
            return None
        if now - self._progress_at <= STUCK_AFTER:
            return None
        return (f"exporter: {queued:.0f} items queued and none accepted for {now - self._progress_at:.0f} s "
                "(is the collector reachable? see otelbpf.exporter.failed)")


class HealthServer:
    """Serves a HealthState on host:port; start() raises OSError when the port is taken."""

    def __init__(self, state: HealthState, host: str, port: int) -> None:
        self.state = state

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    reasons = state.liveness()
                elif path == "/readyz":
                    reasons = state.readiness()
                else:
                    self._reply(404, "not found: /healthz or /readyz\n")
                    return
                if reasons:
                    self._reply(503, "".join(f"{r}\n" for r in reasons))
                else:
                    self._reply(200, "ok\n")

            def _reply(self, code: int, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # probes every few seconds: not worth a line each
                pass

        server_class = _Ipv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


class _Ipv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6  # a pod's address on an IPv6 cluster
