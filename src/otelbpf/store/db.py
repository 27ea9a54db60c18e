"""The store file: open (creating tables), append columns in one transaction, query.

DuckDB keeps a write-ahead log: a flush is one committed transaction, so a crash loses at
most what was not yet flushed, and reopening replays the log. One process may hold the file
for writing; readers in other processes then cannot open it (see store.client).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from otelbpf.store.schema import TABLES, VIEWS, Table

Columns = Mapping[str, list | np.ndarray]  # column name -> values, one list or array per column


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


class StoreBusy(StoreError):
    """Another process (a running agent) holds the store file for writing."""


class QueryError(StoreError):
    """A query failed; the message is one line, as DuckDB explained it."""


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple]


def one_line(error: Exception) -> str:
    """DuckDB's message without the caret lines that point into the SQL."""
    lines = [ln.strip() for ln in str(error).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("LINE ") and set(ln) != {"^"}]
    return " ".join(kept) or type(error).__name__


class Store:
    def __init__(self, con: duckdb.DuckDBPyConnection, path: str, read_only: bool) -> None:
        self.path, self.read_only = path, read_only
        self._con = con
        self._lock = threading.Lock()  # one writer transaction at a time

    @classmethod
    def open(cls, path: str | Path, read_only: bool = False, memory_limit: str = "1GB",
             threads: int = 2) -> Store:
        path = str(path)
        if read_only and path != ":memory:" and not Path(path).exists():
            raise StoreError(f"no store at {path}: run the agent first (otelbpf run) or pass --store PATH")
        if not read_only and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(path, read_only=read_only,
                                 config={"memory_limit": memory_limit, "threads": threads})
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise StoreBusy(f"store {path} is held by another process (a running agent?): {one_line(e)}") from None
            raise StoreError(f"cannot open store {path}: {one_line(e)}") from None
        except duckdb.Error as e:
            raise StoreError(f"cannot open store {path}: {one_line(e)} "
                             "(if the file is not an otelbpf store, pass another --store PATH)") from None
        store = cls(con, path, read_only)
        if not read_only:
            store._create_schema()
        return store

    def _create_schema(self) -> None:
        with self._lock:
            self._con.execute("BEGIN")
            for table in TABLES.values():
                self._con.execute(table.ddl())
                existing = {r[0] for r in self._con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table.name]).fetchall()}
                for statement in table.migrations(existing):
                    self._con.execute(statement)
            for view in VIEWS:
                self._con.execute(view)
            self._con.execute("COMMIT")

    # -- writing --------------------------------------------------------------------------
    def write(self, batches: list[tuple[Table, Columns]]) -> int:
        """Appends every batch in one transaction; returns the rows written."""
        total = 0
        with self._lock:
            con = self._con
            con.execute("BEGIN")
            try:
                for table, columns in batches:
                    total += self._append(con, table, columns)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return total

    @staticmethod
    def _append(con: duckdb.DuckDBPyConnection, table: Table, columns: Columns) -> int:
        # A dict of numpy arrays is scanned by DuckDB in bulk (no Python per row).
        frame = {name: np.asarray(columns[name], dtype=table.numpy_dtype(name)) for name in table.column_names}
        rows = len(frame[table.column_names[0]])
        if rows:
            con.execute(f"INSERT INTO {table.name} BY NAME SELECT * FROM frame")  # table names are ours
        return rows

    def execute(self, sql: str, params: list | None = None) -> None:
        """A maintenance statement (retention, checkpoint) under the writer's lock."""
        with self._lock:
            self._con.execute(sql, params or [])

    # -- reading --------------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None, max_rows: int | None = None) -> Result:
        """Runs on its own cursor, so readers in other threads never wait for the writer."""
        cursor = self._con.cursor()
        try:
            cursor.execute(sql, params or [])
            if cursor.description is None:
                return Result([], [])
            rows = cursor.fetchmany(max_rows) if max_rows else cursor.fetchall()
            return Result([d[0] for d in cursor.description], rows)
        except duckdb.Error as e:
            raise QueryError(one_line(e)) from None
        finally:
            cursor.close()

    def close(self) -> None:
        with self._lock:
            self._con.close()
