"""`otelbpf events --security`: the one-line format, and reading the agent's JSON-lines file."""

from __future__ import annotations

import json
import threading
import time

from otelbpf.views import events

MATCH = {"otelbpf.security.policy": "sensitive-files", "otelbpf.security.action": "post",
         "otelbpf.security.syscall": "openat", "file.path": "/etc/shadow", "process.pid": 42,
         "process.executable.name": "cat", "otelbpf.process.ancestors": ["41:sh", "1:systemd"]}


def test_security_line_names_process_ancestry_path_and_policy():
    line = events.format_line(1_700_000_000_000_000_000, "WARN", events.SECURITY_EVENT, MATCH)
    assert "WARN" in line and "sensitive-files" in line and " post " in line
    assert "cat[42] <- sh[41] <- systemd[1]  openat /etc/shadow" in line


def test_kill_connect_and_requested_actions():
    killed = dict(MATCH, **{"otelbpf.security.signal": "SIGKILL", "otelbpf.security.action": "sigkill"})
    assert " sigkill " in events.format_line(0, "ERROR", events.SECURITY_EVENT, killed)
    report_only = dict(MATCH, **{"otelbpf.security.action.requested": "sigkill"})
    assert " post(sigkill) " in events.format_line(0, "WARN", events.SECURITY_EVENT, report_only)
    connect = {k: v for k, v in MATCH.items() if k != "file.path"}
    connect.update({"otelbpf.security.syscall": "connect", "network.peer.address": "2001:db8::1",
                    "network.peer.port": 443, "container.id": "a" * 64})
    line = events.format_line(0, "INFO", events.SECURITY_EVENT, connect)
    assert "connect [2001:db8::1]:443" in line and line.endswith("container=" + "a" * 12)


def _record(t: int, name: str, attrs: dict) -> str:
    return json.dumps({"time_unix_nano": t, "event_name": name, "severity": "WARN", "attributes": attrs})


def test_jsonl_last_rows_and_follow(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [_record(i, events.SECURITY_EVENT, dict(MATCH, **{"process.pid": i})) for i in range(5)]
    lines.insert(2, _record(9, "process.exec", {}))
    path.write_text("\n".join(lines) + "\n" + '{"partial": ')  # a line being written
    rows, offset = events.jsonl_rows(str(path), 0, 3, (events.SECURITY_EVENT,))
    assert [r[3]["process.pid"] for r in rows] == [2, 3, 4]

    def append():
        time.sleep(0.3)
        with open(path, "a") as f:
            f.write('"x"}\n' + _record(7, events.SECURITY_EVENT, dict(MATCH, **{"process.pid": 7})) + "\n")

    threading.Thread(target=append).start()
    followed = list(events.follow_jsonl(str(path), offset, (events.SECURITY_EVENT,), interval=0.05,
                                        deadline=time.monotonic() + 1.0))
    assert [r[3]["process.pid"] for r in followed] == [7]
