"""Retention: drop rows older than an age, and the oldest rows while the store is too big.

DuckDB frees the blocks of a row group (122,880 rows) once every row in it is deleted and
a checkpoint ran; it reuses free blocks but does not shrink the file. So size is measured as
the blocks in use, rows go oldest first (they fill the oldest row groups), and the file
stays near the size bound once it reached it.
"""

from __future__ import annotations

import time

from otelbpf.store.db import Store
from otelbpf.store.schema import TABLES

# Each size pass drops this share of the time range still held, oldest first.
SIZE_STEP = 0.25
MAX_SIZE_PASSES = 8  # bounded: 1 - 0.75**8 = 90% of the time range at most per call


def used_bytes(store: Store) -> int:
    row = store.query("SELECT used_blocks * block_size FROM pragma_database_size()").rows
    return int(row[0][0] or 0) if row else 0


def delete_before(store: Store, cutoff_ns: int) -> None:
    for table in TABLES:
        store.execute(f"DELETE FROM {table} WHERE time_unix_nano < ?", [cutoff_ns])


def time_range(store: Store) -> tuple[int, int] | None:
    parts = " UNION ALL ".join(f"SELECT min(time_unix_nano) lo, max(time_unix_nano) hi FROM {t}" for t in TABLES)
    lo, hi = store.query(f"SELECT min(lo), max(hi) FROM ({parts})").rows[0]
    return None if lo is None else (int(lo), int(hi))


def apply(store: Store, max_age_s: float | None, max_bytes: int | None, now_ns: int | None = None) -> None:
    now_ns = time.time_ns() if now_ns is None else now_ns
    if max_age_s:
        delete_before(store, now_ns - int(max_age_s * 1e9))
    if max_bytes:
        for _ in range(MAX_SIZE_PASSES):
            store.execute("CHECKPOINT")  # frees the blocks of deleted rows so they count as free
            span = time_range(store)
            if used_bytes(store) <= max_bytes or span is None or span[0] == span[1]:
                break
            delete_before(store, span[0] + int((span[1] - span[0]) * SIZE_STEP) + 1)
