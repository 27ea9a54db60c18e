"""The config file watched while the agent runs, and how a bad or changed file is reported.

In Kubernetes the config and the policies are ConfigMaps mounted as directories: the kubelet
writes a new version into a fresh hidden directory and swaps the `..data` symlink to it in one
rename, so a reader sees the old file or the new one, never half of one. Reading the file's
bytes through its path every few seconds sees the swap.

Policies apply live (the agent reloads them). The agent's own settings are read once, at
start: a changed config file is validated and, when valid, said to need a restart. Either
way a problem is reported three times over: an event (a log record to the sinks), the
counter otelbpf.config.invalid{source}, and the readiness probe's message, each naming the
file, the line and the field; the running config and policies stay as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from otelbpf.config import AgentConfig, ConfigError, load_config
from otelbpf.health import HealthState
from otelbpf.signals.model import LogBatch, LogRecord, Resource, Severity
from otelbpf.signals.registry import Registry

log = logging.getLogger("otelbpf")

SCOPE = "otelbpf.config"


class ConfigReport:
    """Reports invalid or changed configuration: event, counter, readiness, log."""

    def __init__(self, health: HealthState, registry: Registry, resource: Resource,
                 emit: Callable[[LogBatch], None] | None) -> None:
        self._health, self._resource, self._emit = health, resource, emit
        self._invalid = registry.counter("otelbpf.config.invalid",
                                         "Config or policy files refused; the running ones were kept", "{file}")

    def invalid(self, source: str, message: str) -> None:
        """`source` ("config" or "policies") was refused; the running one stays."""
        self._invalid.add(1, {"source": source})
        log.error("%s not applied, the running ones stay: %s", source, message)
        self._event("otelbpf.config.invalid", Severity.ERROR, source, message)
        self._health.problem(source, f"invalid, the running ones stay: {message}")

    def restart_needed(self, message: str) -> None:
        log.warning("%s", message)
        self._event("otelbpf.config.restart_needed", Severity.WARN, "config", message)
        self._health.problem("config", message)

    def ok(self, source: str) -> None:
        self._health.problem(source, None)

    def _event(self, name: str, severity: Severity, source: str, message: str) -> None:
        if self._emit is None:
            return
        record = LogRecord(time.time_ns(), name, severity, message, {"otelbpf.config.source": source})
        try:
            self._emit(LogBatch(self._resource, SCOPE, [record]))
        except Exception:  # a sink failing must not stop the watch; the log line above stays
            log.debug("config event not exported", exc_info=True)


class ConfigWatch:
    """Watches the config file the agent started with (call check() every few seconds)."""

    def __init__(self, path: str, env: Mapping[str, str], running: AgentConfig, report: ConfigReport) -> None:
        self.path, self._env, self._report = path, env, report
        self._seen = self._read()
        # What the file and the environment said at start (flags aside: they stay as they are).
        try:
            self._running = load_config(path, env, {})
        except ConfigError:  # changed since the agent read it: compare with what runs
            self._running = running

    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def check(self) -> None:
        content = self._read()
        if content == self._seen:
            return
        self._seen = content
        try:
            new = load_config(self.path, self._env, {})
        except ConfigError as exc:
            self._report.invalid("config", with_lines(str(exc), self.path, content))
            return
        changed = changed_fields(self._running.model_dump(), new.model_dump())
        if not changed:
            self._report.ok("config")
            return
        self._report.restart_needed(
            f"config file {self.path} changed ({', '.join(changed)}): restart the agent to apply it "
            "(in Kubernetes: kubectl rollout restart daemonset/otelbpf, or helm upgrade, which rolls the pods)")


def changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def with_lines(message: str, path: str, content: bytes | None) -> str:
    """ConfigError's lines ("config file P: field.path: reason") with the field's line in the
    file added, so the message names the file, the line and the field."""
    prefix = f"config file {path}: "
    out = []
    for line in message.splitlines():
        if line.startswith(prefix) and content is not None:
            field, sep, reason = line[len(prefix):].partition(": ")
            number = yaml_line(content, field.split(".")) if sep else None
            if number is not None:
                line = f"config file {path}, line {number}: {field}: {reason}"
        out.append(line)
    return "; ".join(out)


def yaml_line(content: bytes, keys: list[str]) -> int | None:
    """The 1-based line of the deepest of `keys` found in a YAML mapping (None if not YAML)."""
    try:
        node = yaml.compose(content.decode("utf-8", "replace"))
    except yaml.YAMLError:
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line
