"""`otelbpf events`: a compact one-line-per-event view of security (and process) events.

The events come from the local store's `logs` table (the embedded receiver writes every
`security.policy.match` record there), read directly or through the running agent's UI,
or from the agent's JSON-lines file (`--jsonl FILE`, for an agent exporting to a collector,
which keeps no store). `--follow` keeps printing events as they arrive, like `tail -f`.

    09:46:01.123 WARN  sensitive-files   post     cat[4242] <- sh[4241] <- bash[17]  openat /etc/shadow

Columns: time, severity, policy (or the process event's name), action (`sigkill` when the
kernel sent SIGKILL, `post` otherwise; `post(sigkill)` where enforce is off and a kill was
only requested), the process `name[pid]` and its ancestry nearest first, the syscall and
its argument (path, peer address:port, target ids, ptrace request), and `container=ID`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from otelbpf.export.lines import SECURITY_EVENT, format_line

__all__ = ["SECURITY_EVENT", "format_line", "run"]

PROCESS_EVENTS = ("process.exec", "process.exit")
# Records reach the store up to an export batch and a store flush after they happen, not in
# time order: each look goes this far back and skips what it printed already.
FOLLOW_LOOKBACK_NS = 30 * 1_000_000_000


def _attrs(value) -> dict:
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value) if value else {}
    except ValueError:
        return {}


# -- from the store ---------------------------------------------------------------------------
def store_rows(db, since_ns: int, limit: int, names: tuple[str, ...]) -> list[tuple[int, str, str, dict]]:
    """(time, severity, event, attributes), oldest first: the newest `limit` since since_ns."""
    marks = ", ".join("?" for _ in names)
    result = db.query(f"""
        SELECT time_unix_nano, severity_text, event_name, attributes FROM logs
        WHERE event_name IN ({marks}) AND time_unix_nano >= ?
        ORDER BY time_unix_nano DESC LIMIT ?""", [*names, since_ns, limit])
    return [(int(t), sev or "", name, _attrs(attrs)) for t, sev, name, attrs in reversed(result.rows)]


def _key(row: tuple[int, str, str, dict]) -> tuple:
    return row[0], row[2], json.dumps(row[3], sort_keys=True)


def follow_store(db, since_ns: int, names: tuple[str, ...], *, interval: float = 1.0,
                 deadline: float | None = None, seen: Iterable[tuple] = (),
                 batch: int = 10_000) -> Iterator[tuple[int, str, str, dict]]:
    """New events as they land in the store, each once, until deadline (time.monotonic)."""
    printed = {k: k[0] for k in seen}
    cursor = since_ns
    while deadline is None or time.monotonic() < deadline:
        rows = store_rows(db, max(0, cursor - FOLLOW_LOOKBACK_NS), batch, names)
        for row in rows:
            key = _key(row)
            if key in printed:
                continue
            printed[key] = row[0]
            cursor = max(cursor, row[0])
            yield row
        horizon = cursor - FOLLOW_LOOKBACK_NS
        printed = {k: t for k, t in printed.items() if t >= horizon}
        time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))


# -- from the agent's JSON-lines file ----------------------------------------------------------
def _jsonl_rows(lines: Iterable[str], names: tuple[str, ...], since_ns: int) -> Iterator[tuple[int, str, str, dict]]:
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line being written, or not ours
        if entry.get("event_name") in names and int(entry.get("time_unix_nano", 0)) >= since_ns:
            yield int(entry["time_unix_nano"]), entry.get("severity", ""), entry["event_name"], entry.get("attributes", {})


def jsonl_rows(path: str, since_ns: int, limit: int, names: tuple[str, ...]) -> tuple[list, int]:
    """The last `limit` events in the file, and the offset it was read to."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1  # a partial last line is read by the follower
    rows = list(_jsonl_rows(data[:end].decode("utf-8", "replace").splitlines(), names, since_ns))
    return rows[-limit:] if limit else [], end


def follow_jsonl(path: str, offset: int, names: tuple[str, ...], *, interval: float = 0.5,
                 deadline: float | None = None) -> Iterator[tuple[int, str, str, dict]]:
    """Events appended to the file after offset (a truncated or replaced file is read anew)."""
    pending = b""
    inode = os.stat(path).st_ino
    while deadline is None or time.monotonic() < deadline:
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (st.st_ino != inode or st.st_size < offset):
            inode, offset, pending = st.st_ino, 0, b""
        if st is not None and st.st_size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(st.st_size - offset)
            offset += len(chunk)
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            complete, pending = pending[:cut], pending[cut:]
            yield from _jsonl_rows(complete.decode("utf-8", "replace").splitlines(), names, 0)
        time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))


def run(source: Callable, out: IO[str], *, since_ns: int, limit: int, names: tuple[str, ...], follow: bool,
        duration: float | None, jsonl: str | None = None) -> None:
    """Print the latest events named `names`, then (follow) new ones until duration or Ctrl-C."""
    deadline = time.monotonic() + duration if duration else None

    def emit(rows) -> None:
        for t, sev, name, attrs in rows:
            out.write(format_line(t, sev, name, attrs) + "\n")
        out.flush()

    if jsonl:
        rows, offset = jsonl_rows(jsonl, since_ns, limit, names)
        emit(rows)
        if follow:
            for row in follow_jsonl(jsonl, offset, names, deadline=deadline):
                emit([row])
        return
    db = source()
    try:
        rows = store_rows(db, since_ns, limit, names)
        emit(rows)
        if follow:
            start = max([r[0] for r in rows], default=max(since_ns, time.time_ns() - FOLLOW_LOOKBACK_NS))
            # Older events within the lookback that were not among the latest `limit` stay unprinted.
            seen = [_key(r) for r in store_rows(db, max(0, start - FOLLOW_LOOKBACK_NS), 100_000, names)]
            for row in follow_store(db, start, names, deadline=deadline, seen=seen):
                emit([row])
    finally:
        db.close()
