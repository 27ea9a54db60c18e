"""Reading a store from the commands: open the file, or ask the agent that holds it.

A running agent holds its store file for writing, and DuckDB then lets no other process
open it. The agent's web UI writes `<store>.ui.json` (its address and access token, mode
0600) while it runs; commands that find the file locked send their read-only query there.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import duckdb

from otelbpf.store.db import QueryError, Result, Store, StoreBusy, StoreError, one_line

READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def state_file(store_path: str | Path) -> Path:
    return Path(f"{store_path}.ui.json")


def write_state(store_path: str | Path, url: str, token: str) -> Path:
    path = state_file(store_path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the token is a secret
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
    return path


def check_read_only(sql: str) -> None:
    """Raises QueryError unless every statement only reads (SELECT, EXPLAIN)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    if not statements:
        raise QueryError("no SQL statement given")
    for statement in statements:
        if statement.type not in READ_STATEMENTS:
            raise QueryError(f"only SELECT and EXPLAIN statements run against a live store "
                             f"(got {statement.type.name}); stop the agent to change the store")


class RemoteStore:
    """Queries the agent's web UI; the same query() as Store."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url, self._token, self._timeout = url.rstrip("/"), token, timeout

    def query(self, sql: str, params: list | None = None, max_rows: int | None = None) -> Result:
        body = json.dumps({"sql": sql, "params": params or [], "max_rows": max_rows}).encode()
        request = urllib.request.Request(f"{self.url}/api/query", data=body, method="POST", headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                reply = json.load(response)
        except urllib.error.HTTPError as e:
            try:
                message = json.load(e).get("error", e.reason)
            except ValueError:
                message = e.reason
            raise QueryError(message) from None
        except (urllib.error.URLError, OSError) as e:
            raise StoreError(f"the agent's UI at {self.url} does not answer ({e}); is the agent still running?") from None
        return Result(reply["columns"], [tuple(r) for r in reply["rows"]])

    def close(self) -> None:
        pass


def open_reader(store_path: str | Path) -> Store | RemoteStore:
    """The store read-only, or the running agent that holds it; StoreError says what to do."""
    try:
        return Store.open(store_path, read_only=True)
    except StoreBusy as busy:
        state = state_file(store_path)
        try:
            info = json.loads(state.read_text())
        except (OSError, ValueError):
            raise StoreError(f"{busy}; and no running agent's UI is recorded in {state} "
                             "(start the agent with its UI on, or stop the process that holds the store)") from None
        return RemoteStore(info["url"], info["token"])
