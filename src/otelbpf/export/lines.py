"""One event as one line for people: the shared formatter of the console and `otelbpf events`.

    09:46:01.123 INFO  process.exec                cat[4242] <- sh[4241]  cat /etc/hostname
    09:46:01.125 INFO  process.exit                cat[4242] <- sh[4241]  exit=0
    09:46:01.123 WARN  sensitive-files   post      cat[4242] <- sh[4241]  openat /etc/shadow

Columns: time, severity, the event (a security match's policy and action), the process
`name[pid]` and its ancestry nearest first, then what happened: the arguments of an exec, the
exit code or signal, a match's syscall and argument, a connection's peer, a failed lookup.
"""

from __future__ import annotations

import datetime as dt
import json

SECURITY_EVENT = "security.policy.match"
ELLIPSIS = "…"


def _process(a: dict, ancestors: int | None) -> str:
    name = a.get("process.executable.name") or a.get("otelbpf.process.comm") or "?"
    chain = [f"{name}[{a.get('process.pid', '?')}]"]
    for ancestor in (a.get("otelbpf.process.ancestors") or [])[:ancestors]:
        pid, _, aname = str(ancestor).partition(":")
        chain.append(f"{aname}[{pid}]")
    return " <- ".join(chain)


def _argument(a: dict) -> str:
    if "file.path" in a:
        resolved = a.get("otelbpf.security.resolved_path")
        return a["file.path"] + (f" ({resolved})" if resolved and resolved != a["file.path"] else "")
    if "network.peer.address" in a:
        addr = a["network.peer.address"]
        addr = f"[{addr}]" if ":" in str(addr) else addr
        return f"{addr}:{a.get('network.peer.port', '')}"
    if "otelbpf.security.ptrace.request" in a:
        return f"request={a['otelbpf.security.ptrace.request']} target={a.get('otelbpf.security.ptrace.target_pid')}"
    if "otelbpf.security.argument" in a:
        return str(a["otelbpf.security.argument"])
    if "dns.question.name" in a:
        return str(a["dns.question.name"])
    return ""


def _arguments(args: object, limit: int | None) -> str:
    if not isinstance(args, list | tuple):
        return str(args)
    shown = [str(x) for x in args[:limit]]
    return " ".join(shown) + (f" {ELLIPSIS}" if limit is not None and len(args) > limit else "")


def clock(time_unix_nano: int) -> str:
    return dt.datetime.fromtimestamp(time_unix_nano / 1e9).strftime("%H:%M:%S.%f")[:-3]


def format_line(time_unix_nano: int, severity: str, event_name: str, attributes: dict, *,
                ancestors: int | None = None, max_args: int | None = None, width: int | None = None) -> str:
    """One event as one line. ancestors: how many to show (None: all); max_args: arguments of
    an exec shown (None: all); width: the line is cut to this many characters."""
    a = attributes
    sev = (severity or "").upper()[:5]
    if event_name == SECURITY_EVENT:
        action = str(a.get("otelbpf.security.action", ""))
        if a.get("otelbpf.security.signal") == "SIGKILL":
            action = "sigkill"
        elif a.get("otelbpf.security.signal"):
            action = f"signal({a['otelbpf.security.signal']})"
        requested = a.get("otelbpf.security.action.requested")
        if requested and requested != action:
            action = f"{action}({requested})"
        head = f"{a.get('otelbpf.security.policy', '?'):<17} {action:<8}"
        tail = f"{a.get('otelbpf.security.syscall', '')} {_argument(a)}".strip()
    else:
        head = f"{event_name:<17} {'':<8}"
        if event_name == "process.exit":
            signal = a.get("process.exit.signal")
            tail = f"exit={a.get('process.exit.code', '')}" + (f" {signal}" if signal else "")
        elif event_name == "process.exec":
            tail = _arguments(a.get("process.command_args") or [], max_args)
        else:
            tail = _argument(a)
            if a.get("error.type"):
                tail = f"{tail} {a['error.type']}".strip()
    line = f"{clock(time_unix_nano)} {sev:<5} {head} {_process(a, ancestors)}  {tail}"
    if a.get("container.id"):
        line += f"  container={str(a['container.id'])[:12]}"
    return cut(line.rstrip(), width)


def cut(line: str, width: int | None) -> str:
    """line, cut to width characters (the last one an ellipsis when something was cut)."""
    if width is None or len(line) <= width:
        return line
    return line[:max(0, width - 1)] + ELLIPSIS


def compact_attributes(attributes: dict) -> str:
    """`key=value ...`, keys without their otelbpf./process. prefix, values quoted when needed."""
    parts = []
    for key, value in attributes.items():
        short = key.removeprefix("otelbpf.").removeprefix("process.")
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        text = str(value)
        parts.append(f"{short}={json.dumps(text) if (' ' in text or not text) else text}")
    return " ".join(parts)
