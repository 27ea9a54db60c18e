"""Security policy matches in the store and the UI's process view (API side)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from otelbpf.signals.model import LogBatch, LogRecord, Severity
from otelbpf.signals.otlp import logs_request
from otelbpf.store import Store, queries
from otelbpf.store.writer import StoreWriter
from otelbpf.ui import UiServer
from tests.unit.test_store import RESOURCE, process_batch


def security_batch(t0: int) -> LogBatch:
    """Three matches as the security sensor reports them: two by pid 40001, one by pid 40002."""
    def match(i: int, pid: int, policy: str, syscall: str, extra: dict) -> LogRecord:
        return LogRecord(t0 + 500 + i, "security.policy.match", Severity.WARN, f"{policy}: sh", attributes={
            "otelbpf.security.policy": policy, "otelbpf.security.rule": 0, "otelbpf.security.hook": "file_open",
            "otelbpf.security.syscall": syscall, "otelbpf.security.action": "post", "process.pid": pid,
            "process.parent_pid": 1, "process.executable.name": "sh", "otelbpf.process.comm": "sh",
            "otelbpf.process.exec_id": f"boot:{t0}:{pid}", **extra})
    return LogBatch(RESOURCE, "otelbpf.security", [
        match(0, 40_001, "sensitive-files", "openat", {"file.path": "/etc/shadow"}),
        match(1, 40_001, "sensitive-files", "openat", {"file.path": "/etc/sudoers"}),
        match(2, 40_002, "outbound-public", "connect", {"network.peer.address": "203.0.113.9",
                                                         "network.peer.port": 443}),
    ])


def fill(path, t0: int) -> Store:
    store = Store.open(path)
    writer = StoreWriter(store)
    writer.handle("logs", logs_request([process_batch(3, t0)[0], security_batch(t0)]))
    assert writer.flush() == 9
    return store


def test_security_events_query_lists_each_match_with_its_exec(tmp_path):
    t0 = time.time_ns()
    store = fill(tmp_path / "s.duckdb", t0)
    try:
        got = queries.security_events(store)
        rows = [dict(zip(got.columns, r)) for r in got.rows]
        assert [(r["policy"], r["pid"], r["syscall"], r["argument"], r["exec_id"], r["severity"]) for r in rows] == [
            ("outbound-public", 40_002, "connect", "203.0.113.9:443", f"boot:{t0}:40002", "WARN"),
            ("sensitive-files", 40_001, "openat", "/etc/sudoers", f"boot:{t0}:40001", "WARN"),
            ("sensitive-files", 40_001, "openat", "/etc/shadow", f"boot:{t0}:40001", "WARN")]
        assert queries.security_events(store, limit=1).rows[0][2] == "outbound-public"
        # Security records stay out of the process lifecycle view.
        assert len(queries.process_lifecycles(store).rows) == 3
    finally:
        store.close()


def test_ui_api_serves_security_events(tmp_path):
    store = fill(tmp_path / "s.duckdb", time.time_ns())
    ui = UiServer(store).start()
    try:
        request = urllib.request.Request(ui.base_url + "/api/security?window=3600",
                                         headers={"Authorization": f"Bearer {ui.token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            body = json.loads(r.read())
        assert "exec_id" in body["columns"] and len(body["rows"]) == 3
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(ui.base_url + "/api/security", timeout=10)
    finally:
        ui.stop()
        store.close()
