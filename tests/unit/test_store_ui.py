"""The UI server's access rules and API, and the store commands against a store in use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from otelbpf.signals.otlp import logs_request
from otelbpf.store import Store
from otelbpf.store.client import state_file
from otelbpf.store.writer import StoreWriter
from otelbpf.ui import UiServer
from tests.unit.test_store import process_batch

OTELBPF = [sys.executable, "-m", "otelbpf"]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, dict, bytes]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def served(tmp_path):
    path = tmp_path / "ui.duckdb"
    store = Store.open(path)
    writer = StoreWriter(store)
    batch, truth = process_batch(23, time.time_ns())
    writer.handle("logs", logs_request([batch]))
    writer.flush()
    ui = UiServer(store, store_path=path).start()
    yield ui, path, truth
    ui.stop()
    store.close()


def test_every_page_needs_the_token(served):
    ui, _, _ = served
    for path in ("/", "/processes", "/static/app.js", "/api/summary"):
        status, _, body = get(ui.base_url + path)
        assert status == 401 and b"token" in body
        assert get(ui.base_url + path, {"Authorization": "Bearer wrong"})[0] == 401
        assert get(ui.base_url + path, {"Authorization": f"Bearer {ui.token}"})[0] == 200


def test_token_in_the_url_becomes_a_cookie(served):
    ui, _, _ = served
    status, headers, _ = get(ui.url)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    assert "HttpOnly" in headers["Set-Cookie"]
    status, headers, body = get(ui.base_url + "/processes", {"Cookie": cookie})
    assert status == 200 and b"app.js" in body and "script-src 'self'" in headers["Content-Security-Policy"]


def test_foreign_host_header_is_refused(served):
    ui, _, _ = served
    status, _, _ = get(ui.base_url + "/", {"Authorization": f"Bearer {ui.token}", "Host": f"evil.example:{ui.port}"})
    assert status == 403


def test_api_serves_the_process_lifecycles(served):
    ui, _, truth = served
    status, _, body = get(ui.base_url + "/api/processes", {"Authorization": f"Bearer {ui.token}"})
    reply = json.loads(body)
    rows = [dict(zip(reply["columns"], r)) for r in reply["rows"]]
    assert status == 200 and {r["pid"]: r["exit_code"] for r in rows} == {p: c for p, (_, c) in truth.items()}


def test_query_api_reads_only_and_explains_errors(served):
    ui, _, _ = served
    auth = {"Authorization": f"Bearer {ui.token}", "Content-Type": "application/json"}
    status, _, body = get(ui.base_url + "/api/query", auth, json.dumps({"sql": "SELECT count(*) FROM logs"}).encode())
    assert status == 200 and json.loads(body)["rows"] == [[46]]
    status, _, body = get(ui.base_url + "/api/query", auth, json.dumps({"sql": "DELETE FROM logs"}).encode())
    assert status == 400 and "only SELECT" in json.loads(body)["error"]
    status, _, body = get(ui.base_url + "/api/query", auth, json.dumps({"sql": "SELEC"}).encode())
    assert status == 400 and "syntax error" in json.loads(body)["error"]


def test_state_file_is_private_and_removed_at_stop(tmp_path):
    store = Store.open(tmp_path / "s.duckdb")
    ui = UiServer(store, store_path=store.path).start()
    state = state_file(store.path)
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert json.loads(state.read_text())["token"] == ui.token
    ui.stop()
    store.close()
    assert not state.exists()


def test_ui_binds_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        UiServer(None, host="0.0.0.0")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(OTELBPF + list(args), capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, COLUMNS="200"))


def test_commands_query_a_store_held_by_a_running_ui(served):
    _, path, _truth = served  # this process holds the file: the commands go through the UI
    out = run_cli("query", "SELECT count(*) AS n FROM process_events", "--store", str(path), "--format", "csv")
    assert out.returncode == 0 and out.stdout.split() == ["n", "46"], out.stderr
    out = run_cli("top", "--store", str(path))
    assert out.returncode == 0 and "sh" in out.stdout and "23" in out.stdout
    out = run_cli("query", "SELECT nosuch FROM logs", "--store", str(path))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "SQL error" in out.stderr
    assert "Traceback" not in out.stderr


def test_commands_open_a_store_file_directly(tmp_path):
    path = tmp_path / "closed.duckdb"
    store = Store.open(path)
    writer = StoreWriter(store)
    batch, truth = process_batch(7, time.time_ns())
    writer.handle("logs", logs_request([batch]))
    writer.close()
    out = run_cli("events", "--store", str(path), "--limit", "100")
    assert out.returncode == 0 and out.stdout.count("process.exit") == 7
    out = run_cli("query", "SELECT pid, exit_code FROM process_events WHERE exit_code IS NOT NULL ORDER BY pid",
                  "--store", str(path), "--format", "json")
    assert {r["pid"]: r["exit_code"] for r in json.loads(out.stdout)} == {p: c for p, (_, c) in truth.items()}
    out = run_cli("query", "SELEC 1", "--store", str(path))
    assert out.returncode == 1 and out.stderr.startswith("otelbpf query: SQL error: Parser Error: syntax error")
    assert out.stderr.count("\n") == 1
    out = run_cli("top", "--store", str(tmp_path / "none.duckdb"))
    assert out.returncode == 1 and "no store at" in out.stderr
