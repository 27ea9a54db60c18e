"""Wiring and lifecycle: sensors -> sinks, self-telemetry, clean start and stop.

Start: probe the kernel, open the sinks, load and attach each sensor (progress on stderr).
Run: one thread per sensor drains its ring buffer; the main thread exports the agent's
own metrics every interval. Stop (duration, SIGINT or SIGTERM): detach every program,
drain what the kernel still holds, flush the sinks, then close.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from otelbpf.config import AgentConfig, parse_host_port, parse_ui_address
from otelbpf.config_watch import ConfigReport, ConfigWatch
from otelbpf.enrich.containers import find_cgroup2_root
from otelbpf.enrich.host import host_resource
from otelbpf.enrich.identity import IdentityTable
from otelbpf.enrich.stage import Enrichment
from otelbpf.export.base import Sink
from otelbpf.export.console import ConsoleSink, JsonLinesSink
from otelbpf.export.fanout import FanoutSink
from otelbpf.export.otlp import OtlpExporter
from otelbpf.export.otlp_settings import SIGNALS, OtlpSettings
from otelbpf.export.prometheus import PrometheusEndpoint
from otelbpf.health import HealthServer, HealthState
from otelbpf.kernel import features
from otelbpf.pipeline.memory_limiter import MemoryLimiter
from otelbpf.pipeline.span_metrics import SpanMetrics
from otelbpf.sensors.base import Sensor
from otelbpf.sensors.process import ProcessSensor
from otelbpf.signals.model import ProfileBatch, Resource, SpanColumns
from otelbpf.signals.otlp_profiles import HTTP_PATH as PROFILES_PATH
from otelbpf.signals.registry import Registry

if TYPE_CHECKING:  # imported when used: the receiver (grpcio) and duckdb only without a collector
    from otelbpf.receiver.otlp import OtlpReceiver
    from otelbpf.store.writer import StoreWriter
    from otelbpf.ui import UiServer

log = logging.getLogger("otelbpf")

PROBE_OBJECT = Path(__file__).resolve().parent / "bpf" / "probe.bpf.o"
SELF_SCOPE = "otelbpf.agent"
DEFAULT_JSONL = "otelbpf-events.jsonl"
POLICY_CHECK_INTERVAL = 2.0  # seconds between looks at the policy files for changes
MAX_DRAIN_BACKOFF = 5.0  # seconds between tries of a sensor whose drains keep failing
# Where the embedded receiver listens by default: the standard OTLP ports, so programs with
# an OpenTelemetry SDK can send to the agent as they would to a collector.
EMBEDDED_GRPC_PORT, EMBEDDED_HTTP_PORT = 4317, 4318


class AgentError(Exception):
    """The agent cannot run here; the message says why and what to do."""


def otlp_settings(cfg: AgentConfig) -> OtlpSettings:
    """The exporter's settings: the standard variables, the collector endpoint and protocol,
    and profile.otlp_endpoint (an OTLP/HTTP endpoint for profiles alone) where it is set."""
    overrides: dict[str, object] = {"endpoint": cfg.otlp_endpoint or "http://localhost:4318",
                                    "protocol": cfg.otlp_protocol}
    if cfg.profile.otlp_endpoint:
        endpoint = cfg.profile.otlp_endpoint.rstrip("/")
        if not endpoint.endswith(PROFILES_PATH):
            endpoint += PROFILES_PATH
        overrides.update(profiles_endpoint=endpoint, profiles_protocol="http/protobuf")
    return OtlpSettings.from_env(os.environ, overrides)


def span_path(enrichment: Enrichment, span_metrics: SpanMetrics,
              export: Callable[[SpanColumns], None]) -> Callable[[SpanColumns], None]:
    """Where a sensor's spans go: the enrichment stage names their processes, the span-metrics
    processor counts every one into the RED histograms (before anything could sample them
    out), then the sinks take them."""
    def emit(columns: SpanColumns) -> None:
        enrichment.spans(columns)
        span_metrics.record(columns)
        export(columns)
    return emit


def progress(message: str) -> None:
    print(f"otelbpf: {message}", file=sys.stderr, flush=True)


def check_host() -> list[features.Feature]:
    """The feature table; raises AgentError naming every missing requirement."""
    table = features.probe(PROBE_OBJECT, find_cgroup2_root())
    missing = features.missing_required(table)
    if missing:
        raise AgentError("this host cannot run the agent:\n" + "\n".join(
            f"  - {f.name}: {f.detail}" for f in missing))
    return table


@dataclass
class Agent:
    config: AgentConfig
    registry: Registry = field(default_factory=Registry)
    resource: Resource = field(default_factory=host_resource)
    config_path: str | None = None  # the config file, watched while the agent runs

    def __post_init__(self) -> None:
        self.sensors: list[Sensor] = []
        self.receiver: OtlpReceiver | None = None
        self.prometheus: PrometheusEndpoint | None = None
        self.sink: Sink | None = None
        self.store_writer: StoreWriter | None = None  # the embedded default's local store
        self.ui: UiServer | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()  # SIGHUP: load the security policies again
        self._policy_fingerprint: tuple = ()
        self._threads: list[threading.Thread] = []
        self.health = HealthState(self.registry)  # what /healthz and /readyz answer
        self.health_server: HealthServer | None = None
        self._config_watch: ConfigWatch | None = None
        # who each process is, for every sensor: its container, pod and service (config: identity)
        self.identities = IdentityTable.configured(self.resource, **self.config.identity.model_dump())
        self.identities.register_metrics(self.registry)
        self.enrichment = Enrichment(self.identities)

    # -- start ----------------------------------------------------------------------------
    def start(self) -> None:
        if os.geteuid() != 0:
            raise AgentError("the agent loads BPF programs and must run as root (try: sudo otelbpf run)")
        progress("probing kernel features")
        check_host()
        self._start_health()
        self.sink = self._open_sinks()
        self._register_bpf_stats()
        try:
            for name in self.config.sensors:
                progress(f"loading sensor {name}")
                sensor = self._make_sensor(name)
                sensor.start()
                self.sensors.append(sensor)
        except BaseException:
            self.stop()
            raise
        for sensor in self.sensors:
            t = threading.Thread(target=self._drain, args=(sensor,), name=f"sensor-{sensor.name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.health.started()
        if self.config_path:
            self._config_watch = ConfigWatch(self.config_path, os.environ, self.config, self._config_report())
        progress(f"running: sensors {', '.join(s.name for s in self.sensors)}; {self._describe_sinks()}")

    def _start_health(self) -> None:
        if self.config.health:
            host, port = parse_host_port(self.config.health)
            try:
                self.health_server = HealthServer(self.health, host, port).start()
            except OSError as e:
                raise AgentError(f"health: cannot listen on {self.config.health}: {e.strerror} "
                                 "(set health: HOST:PORT to a free address)") from None

    def _config_report(self) -> ConfigReport:
        return ConfigReport(self.health, self.registry, self.resource, self.sink.export_logs if self.sink else None)

    def _open_sinks(self) -> Sink:
        cfg = self.config
        sinks: list[Sink] = []
        if cfg.otlp_endpoint:
            signals = SIGNALS if "profile" in cfg.sensors else tuple(s for s in SIGNALS if s != "profiles")
            sinks.append(OtlpExporter(otlp_settings(cfg), self.registry, signals=signals))
        else:
            # The embedded default: the agent's batches go into the local store in process;
            # the OTLP receiver on loopback is for programs with an OpenTelemetry SDK. Plus a
            # live console and a JSON-lines file.
            self.store_writer = self._open_store()
            if self.store_writer is not None:
                from otelbpf.store.sink import StoreSink
                sinks.append(StoreSink(self.store_writer))
            self.receiver = self._start_receiver(receiver_handler(self.store_writer) if self.store_writer else None)
            self.ui = self._start_ui()
            if cfg.profile.otlp_endpoint and "profile" in cfg.sensors:  # profiles alone to a profiles backend
                sinks.append(OtlpExporter(otlp_settings(cfg), self.registry, name="profiles", signals=("profiles",)))
        if cfg.console or (cfg.console is None and not cfg.otlp_endpoint):
            sinks.append(ConsoleSink(view=cfg.console_view))
        jsonl = cfg.jsonl_path or (None if cfg.otlp_endpoint else DEFAULT_JSONL)
        if jsonl:
            sinks.append(JsonLinesSink(jsonl))
            self._jsonl = jsonl
        if cfg.prometheus:
            host, port = parse_host_port(cfg.prometheus)
            self.prometheus = PrometheusEndpoint(self.registry, host or "0.0.0.0", port).start()
        sink = sinks[0] if len(sinks) == 1 else FanoutSink(sinks)
        spike = None if cfg.memory_spike_mib is None else cfg.memory_spike_mib << 20
        return MemoryLimiter(sink, self.registry, cfg.memory_limit_mib << 20, spike)

    def _start_receiver(self, handler: Callable | None = None) -> OtlpReceiver:
        from otelbpf.receiver.otlp import OtlpReceiver

        try:
            return OtlpReceiver("127.0.0.1", EMBEDDED_GRPC_PORT, EMBEDDED_HTTP_PORT, handler=handler).start()
        except OSError as e:
            progress(f"OTLP ports {EMBEDDED_GRPC_PORT}/{EMBEDDED_HTTP_PORT} busy ({e}); using free ports")
            return OtlpReceiver("127.0.0.1", 0, 0, handler=handler).start()

    def _open_store(self) -> StoreWriter | None:
        """The local store the receiver writes into; None (said on stderr) when another process holds it."""
        from otelbpf.store import Store, StoreError
        from otelbpf.store.writer import StoreWriter

        cfg = self.config.store
        try:
            store = Store.open(cfg.path)
        except StoreError as e:
            progress(f"running without the local store: {e} (set store.path or --store PATH)")
            return None
        return StoreWriter(store, self.registry, flush_interval=cfg.flush_interval,
                           retention_age_s=cfg.retention_age, retention_bytes=cfg.retention_bytes).start()

    def _start_ui(self) -> UiServer | None:
        if self.store_writer is None:
            return None
        from otelbpf.ui import UiServer

        host, port = parse_ui_address(self.config.ui)
        store = self.store_writer.store
        try:
            return UiServer(store, host, port, store_path=store.path).start()
        except OSError as e:
            progress(f"{e}; serving the UI on a free port")
            return UiServer(store, host, 0, store_path=store.path).start()

    def _describe_sinks(self) -> str:
        parts = []
        if self.config.otlp_endpoint:
            parts.append(f"OTLP {self.config.otlp_protocol} to {self.config.otlp_endpoint}")
        if self.receiver:
            parts.append(f"embedded OTLP receiver on {self.receiver.grpc_endpoint} (gRPC) and "
                         f"{self.receiver.http_endpoint} (HTTP)")
        if self.store_writer:
            parts.append(f"store {self.store_writer.store.path}")
        if self.ui:
            parts.append(f"UI at {self.ui.url}")
        if getattr(self, "_jsonl", None):
            parts.append(f"events to {self._jsonl}")
        if self.prometheus:
            parts.append(f"metrics on {self.prometheus.url}")
        return "; ".join(parts)

    def _opened_sink(self) -> Sink:
        assert self.sink is not None, "the sinks are opened before the sensors"
        return self.sink

    def _make_sensor(self, name: str) -> Sensor:
        cfg = self.config
        if name == "process":
            return ProcessSensor(self._opened_sink().export_logs, self.registry, self.resource,
                                 max_args_bytes=cfg.process.max_args_bytes,
                                 keep_secret_args=cfg.process.keep_secret_args,
                                 table_size=cfg.process.table_size, ringbuf_bytes=cfg.ringbuf_bytes,
                                 identities=self.identities)
        if name == "profile":
            from otelbpf.profiling.files import PprofDirectory
            from otelbpf.sensors.profile import SCOPE as PROFILE_SCOPE
            from otelbpf.sensors.profile import ProfileSensor
            sink, resource = self._opened_sink(), self.resource
            pprof = PprofDirectory(cfg.profile.output_dir) if cfg.profile.output_dir else None

            def emit(profile) -> None:  # to every sink that keeps profiles (store, OTLP), and pprof files
                if pprof is not None:
                    pprof(profile)
                sink.export_profiles(ProfileBatch(resource, PROFILE_SCOPE, profile))
            return ProfileSensor(emit, self.registry, hz=cfg.profile.hz, interval=cfg.profile.interval,
                                 max_stacks=cfg.profile.max_stacks)
        if name == "network":
            from otelbpf.sensors.network import NetworkSensor
            return NetworkSensor(self._opened_sink().export_logs, self.registry, self.resource,
                                 sample_interval=cfg.network.sample_interval, capture_dns=cfg.network.capture_dns,
                                 connection_logs=cfg.network.connection_logs, ringbuf_bytes=cfg.ringbuf_bytes,
                                 identities=self.identities)
        if name == "http":
            from otelbpf.sensors.http import HttpSensor, Selection, parse_ports
            http = cfg.http
            selection = Selection(parse_ports(http.open_ports or ""), http.executable)
            spans = span_path(self.enrichment, SpanMetrics(self.registry), self._opened_sink().export_spans)
            return HttpSensor(spans, self.registry, capture_bytes=http.capture_bytes, selection=selection,
                              tls=http.tls, ringbuf_bytes=cfg.ringbuf_bytes)
        if name == "security":
            return self._make_security_sensor()
        raise AgentError(f"unknown sensor {name!r}")

    def _policy_source(self):
        from otelbpf.security.policyset import PolicySource
        sec = self.config.security
        return PolicySource(tuple(sec.policies), sec.policy_dir, sec.shipped_policies)

    def _make_security_sensor(self) -> Sensor:
        from otelbpf.security.policy import PolicyError
        from otelbpf.sensors.security import SecuritySensor, unavailable_hooks
        source = self._policy_source()
        try:
            policies, notes = source.load(unavailable_hooks())
        except PolicyError as exc:
            raise AgentError(str(exc)) from None
        for note in notes:
            progress(note)
        self._policy_fingerprint = source.fingerprint()
        return SecuritySensor(self._opened_sink().export_logs, self.registry, self.resource, policies,
                              enforce=self.config.security.enforce,
                              keep_secret_args=self.config.process.keep_secret_args,
                              ringbuf_bytes=self.config.ringbuf_bytes)

    def reload_policies(self, only_if_changed: bool = False) -> None:
        """Load the policy files again into the running security sensor; an invalid set is
        reported and the running one kept."""
        from otelbpf.security.policy import PolicyError
        from otelbpf.sensors.security import SecuritySensor, unavailable_hooks
        sensor = next((s for s in self.sensors if isinstance(s, SecuritySensor)), None)
        if sensor is None:
            return
        source = self._policy_source()
        fingerprint = source.fingerprint()
        if only_if_changed and fingerprint == self._policy_fingerprint:
            return
        self._policy_fingerprint = fingerprint
        try:
            policies, _ = source.load(unavailable_hooks())
            sensor.reload(policies)
        except PolicyError as exc:
            self._config_report().invalid("policies", str(exc))
            return
        self.health.problem("policies", None)
        progress(f"policies reloaded: {', '.join(p.name for p in policies)}")

    def _register_bpf_stats(self) -> None:
        # Non-zero only while kernel.bpf_stats_enabled=1 (the kernel then times each run).
        def stat(index: int):
            def points():
                out = []
                for sensor in self.sensors:
                    for prog in sensor.programs():
                        try:
                            out.append(({"sensor": sensor.name, "program": prog.name}, prog.stats()[index]))
                        except Exception:  # noqa: BLE001 - a program closed mid-read
                            continue
                return out
            return points
        self.registry.gauge("otelbpf.bpf.run_time", "Kernel time spent in each BPF program", "ns", stat(0))
        self.registry.gauge("otelbpf.bpf.run_count", "Runs of each BPF program", "{run}", stat(1))

    # -- run ------------------------------------------------------------------------------
    def _drain(self, sensor: Sensor) -> None:
        """Drain one sensor until stop. A failing drain must not stop the other sensors, nor
        flood the log: it is said once (with the traceback at debug level), counted in
        otelbpf.sensor.drain_failures, retried with a backoff that doubles up to
        MAX_DRAIN_BACKOFF, and its recovery is said once too."""
        failures = self.registry.counter("otelbpf.sensor.drain_failures",
                                         "Drains of a sensor's kernel buffers that raised an error", "{drain}")
        failing_since = 0  # failures in a row
        while not self._stop.is_set():
            self.health.beat(f"sensor {sensor.name}")
            try:
                sensor.poll(self.config.drain_interval)
            except Exception as exc:
                failures.add(1, {"sensor": sensor.name})
                if not failing_since:
                    log.error("sensor %s failed to drain its kernel buffers: %s: %s. Retrying with backoff; its "
                              "events wait in the kernel (or are dropped and counted once its buffers are full). "
                              "Run with --verbose for the traceback, and report it as a bug.",
                              sensor.name, type(exc).__name__, exc)
                    log.debug("sensor %s drain failure", sensor.name, exc_info=True)
                failing_since += 1
                self.health.problem(f"sensor {sensor.name}", f"{failing_since} drains failed in a row: {exc}")
                self._stop.wait(min(MAX_DRAIN_BACKOFF, self.config.drain_interval * 2 ** min(failing_since, 16)))
                continue
            if failing_since:
                log.warning("sensor %s drains again after %d failed drains", sensor.name, failing_since)
                failing_since = 0
                self.health.problem(f"sensor {sensor.name}", None)

    def export_metrics(self) -> None:
        if self.sink is not None:
            self.sink.export_metrics(self.registry.snapshot(self.resource, SELF_SCOPE))

    def run(self, duration: float | None = None) -> None:
        """Run until duration elapses or stop is requested (SIGINT/SIGTERM when on the main thread)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        deadline = time.monotonic() + duration if duration else None
        next_metrics = time.monotonic() + self.config.metrics_interval
        next_policy_check = time.monotonic() + POLICY_CHECK_INTERVAL
        while not self._stop.is_set():
            now = time.monotonic()
            self.health.beat("main loop")
            if deadline is not None and now >= deadline:
                break
            if self._reload.is_set() or now >= next_policy_check:
                self.reload_policies(only_if_changed=not self._reload.is_set())
                if self._config_watch is not None:
                    self._config_watch.check()
                self._reload.clear()
                next_policy_check = now + POLICY_CHECK_INTERVAL
            if now >= next_metrics:
                self.export_metrics()
                next_metrics = now + self.config.metrics_interval
            self._stop.wait(min(0.5, max(0.0, (deadline or now + 0.5) - now)))

    # -- stop -----------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        for sensor in self.sensors:
            try:
                sensor.stop()  # detach, then drain what the kernel still holds
            except Exception:  # keep detaching the others
                log.exception("stopping sensor %s", sensor.name)
        self.export_metrics()
        self.sensors.clear()
        if self.sink is not None:
            self.sink.shutdown(timeout)
            self.sink = None
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        if self.ui is not None:
            self.ui.stop()
            self.ui = None
        if self.store_writer is not None:
            self.store_writer.close(timeout)  # after the receiver: it wrote the last batches
            self.store_writer = None
        if self.health_server is not None:
            self.health_server.stop()
            self.health_server = None


def receiver_handler(writer: StoreWriter) -> Callable:
    """The receiver's handler into the store: a full store queue answers the sender with a
    retryable refusal (HTTP 503 / gRPC UNAVAILABLE with a retry delay)."""
    from otelbpf.receiver.otlp import Refusal
    from otelbpf.store.writer import StoreFull

    def handle(signal: str, request) -> None:
        try:
            writer.handle(signal, request)
        except StoreFull as full:
            raise Refusal(str(full), retry_after=full.retry_after) from None
    return handle
