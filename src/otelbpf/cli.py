"""The `otelbpf` command: run, doctor, version; query, top, events, ui over the local store."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from otelbpf import __version__

if TYPE_CHECKING:
    from otelbpf.profiling.model import Profile

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CANNOT_RUN = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otelbpf", description="Kernel events to OpenTelemetry, through eBPF.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent (every sensor by default)")
    run.add_argument("--config", metavar="FILE", help="YAML configuration file")
    run.add_argument("--sensors", metavar="LIST", help="comma-separated sensors to run (default: all)")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    run.add_argument("--otlp-endpoint", metavar="URL",
                     help="export over OTLP to this collector (default: $OTEL_EXPORTER_OTLP_ENDPOINT; "
                          "without one the agent runs on its embedded receiver)")
    run.add_argument("--otlp-protocol", choices=["grpc", "http/protobuf", "http/json"])
    run.add_argument("--prometheus", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    run.add_argument("--jsonl", metavar="FILE", help="also write every event as JSON lines to FILE")
    run.add_argument("--console", action=argparse.BooleanOptionalAction, default=None,
                     help="print one line per event (default: on without a collector)")
    run.add_argument("--console-view", choices=["compact", "full"],
                     help="compact (default): one short line per event, cut to the terminal's width; "
                          "full: every attribute of every event, span and metric")
    run.add_argument("--max-args-bytes", type=int, metavar="N", help="bytes of argv captured per exec")
    run.add_argument("--keep-secret-args", action="store_true", default=None,
                     help="do not redact arguments that look like secrets")
    run.add_argument("--store", metavar="PATH", help="local store file (default otelbpf.duckdb; used without a collector)")
    run.add_argument("--ui", metavar="HOST:PORT", help="local web UI address (default 127.0.0.1:4380, loopback only)")
    run.add_argument("--verbose", "-v", action="store_true", help="log the agent's own debug messages")

    _add_profile_parser(sub)
    _add_flows_parser(sub)
    _add_http_parser(sub)

    sub.add_parser("doctor", help="show what this host supports; non-zero exit if the agent cannot run")
    policy = sub.add_parser("policy", help="security policies: `otelbpf policy check FILE...` validates them")
    policy.add_argument("action", choices=["check"])
    policy.add_argument("files", nargs="+", metavar="FILE")
    sub.add_parser("version", help="print the version")
    _store_parsers(sub)
    return p


def _store_parsers(sub) -> None:
    """Commands that read the local store (or ask the running agent that holds it)."""
    def with_store(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--store", metavar="PATH", help="store file (default: $OTELBPF_STORE__PATH or otelbpf.duckdb)")
        return p

    query = with_store("query", "run SQL over the local store (read-only while the agent runs)")
    query.add_argument("sql", help='e.g. "SELECT * FROM process_events LIMIT 10"')
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    for name, help_text in (("top", "executables by execs, exits and failures (or by network bytes)"),
                            ("events", "the latest process events; --security: security policy matches, one line each"),
                            ("map", "service map edges: client -> server, connections and bytes")):
        view = with_store(name, help_text)
        view.add_argument("--window", type=float, metavar="SECONDS", help="only this many seconds back (default: all)")
        view.add_argument("--limit", type=int, default=20 if name == "top" else 50, metavar="N")
        if name == "top":
            view.add_argument("--by", choices=["execs", "bytes"], default="execs",
                              help="execs: process lifecycle; bytes: network bytes per executable")
        if name == "events":
            view.add_argument("--security", action="store_true",
                              help="security policy matches, one compact line each (policy, action, process "
                                   "and ancestry, syscall, argument)")
            view.add_argument("--all", action="store_true", dest="all_kinds",
                              help="security matches and process exec/exit, one compact line each")
            view.add_argument("--follow", "-f", action="store_true",
                              help="keep printing events as they arrive (Ctrl-C stops)")
            view.add_argument("--duration", type=float, metavar="SECONDS", help="with --follow: stop after this long")
            view.add_argument("--jsonl", metavar="FILE",
                              help="read the agent's JSON-lines file instead of the store (an agent exporting "
                                   "to a collector keeps no store)")
    ui = with_store("ui", "serve the web UI over a store file (the running agent serves its own)")
    ui.add_argument("--address", default="127.0.0.1:0", metavar="HOST:PORT", help="loopback address (port 0: any free)")


def _flags(args: argparse.Namespace) -> dict:
    return {
        "sensors": args.sensors,
        "duration": args.duration,
        "otlp_endpoint": args.otlp_endpoint,
        "otlp_protocol": args.otlp_protocol,
        "prometheus": args.prometheus,
        "jsonl_path": args.jsonl,
        "console": args.console,
        "console_view": args.console_view,
        "process.max_args_bytes": args.max_args_bytes,
        "process.keep_secret_args": args.keep_secret_args,
        "store.path": args.store,
        "ui": args.ui,
    }


def cmd_run(args: argparse.Namespace) -> int:
    from otelbpf.agent import Agent, AgentError
    from otelbpf.config import ConfigError, load_config
    from otelbpf.kernel.errors import BpfError

    try:
        config = load_config(args.config, os.environ, _flags(args))
    except ConfigError as e:
        print(f"otelbpf: invalid configuration:\n{e}", file=sys.stderr)
        return EXIT_USAGE
    agent = Agent(config, config_path=args.config)
    try:
        agent.start()
    except (AgentError, BpfError) as e:
        print(f"otelbpf: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        agent.run(config.duration)
    finally:
        print("otelbpf: stopping: detaching programs and flushing", file=sys.stderr, flush=True)
        agent.stop()
    return EXIT_OK


def _add_flows_parser(sub) -> None:
    flows = sub.add_parser("flows", help="live network view: top talkers, failed connections, DNS lookups")
    flows.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    flows.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh interval (1)")
    flows.add_argument("--top", type=int, default=20, help="rows of top talkers (20)")
    flows.add_argument("--once", action="store_true", help="watch for --duration (or one interval), print once")


def _add_http_parser(sub) -> None:
    http = sub.add_parser("http", help="live HTTP view: RED per service and route, slowest requests")
    http.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    http.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh interval (1)")
    http.add_argument("--top", type=int, default=20, help="rows per table (20)")
    http.add_argument("--once", action="store_true", help="watch for --duration (or one interval), print once")


def _run_live_view(name: str, args: argparse.Namespace) -> int:
    """`otelbpf http` and `otelbpf flows`: a sensor in this process, shown live (or once)."""
    import importlib

    from otelbpf.kernel.errors import BpfError

    if os.geteuid() != 0:
        print(f"otelbpf {name} loads BPF programs and must run as root", file=sys.stderr)
        return EXIT_CANNOT_RUN
    view = importlib.import_module(f"otelbpf.views.{name}")
    try:
        view.run(args.duration, args.interval, args.top, args.once)
    except BpfError as e:
        print(f"otelbpf: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_http(args: argparse.Namespace) -> int:
    return _run_live_view("http", args)


def cmd_flows(args: argparse.Namespace) -> int:
    return _run_live_view("flows", args)


def _add_profile_parser(sub) -> None:
    prof = sub.add_parser("profile", help="sample CPU stacks of every process (or one) and write a profile")
    prof.add_argument("--pid", type=int, help="only this process (default: every process)")
    prof.add_argument("--duration", type=float, default=10.0, metavar="SECONDS", help="how long to sample (10)")
    prof.add_argument("--hz", type=int, default=99, help="samples per second per CPU, 1..1000 (99)")
    prof.add_argument("--out", action="append", default=[], metavar="FILE",
                      help="output, by extension: .html (interactive flame graph), .svg, .pb.gz (pprof), "
                           ".folded; repeat for several")
    prof.add_argument("--baseline", metavar="FILE.folded",
                      help="folded stacks of an earlier run: flame graphs then show the difference")
    prof.add_argument("--diff-window", type=float, metavar="SECONDS",
                      help="flame graphs show the last SECONDS of the run against the time before them "
                           "(two time windows; --duration 20 --diff-window 10: second half vs first half)")
    prof.add_argument("--otlp-endpoint", metavar="URL",
                      help="also send the profile as the OTLP profiles signal (Alpha) over HTTP to URL, "
                           "e.g. http://collector:4318")


def cmd_profile(args: argparse.Namespace) -> int:
    import signal
    import threading
    import time

    from otelbpf.kernel.errors import BpfError
    from otelbpf.profiling import folded, output
    from otelbpf.profiling.profiler import Profiler
    from otelbpf.signals.registry import Registry

    if not args.out and not args.otlp_endpoint:
        print("otelbpf profile: say where the profile goes: --out FILE and/or --otlp-endpoint URL", file=sys.stderr)
        return EXIT_USAGE
    try:
        for path in args.out:
            output.format_of(path)
        baseline = folded.parse(open(args.baseline).read()) if args.baseline else None
    except (ValueError, OSError) as e:
        print(f"otelbpf profile: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.diff_window is not None and (args.baseline or not 0 < args.diff_window < args.duration):
        print("otelbpf profile: --diff-window must be above 0 and under --duration, and not with --baseline",
              file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.hz <= 1000 or args.duration <= 0:
        print("otelbpf profile: --hz must be 1..1000 and --duration above 0", file=sys.stderr)
        return EXIT_USAGE
    if args.pid is not None and not os.path.exists(f"/proc/{args.pid}"):
        print(f"otelbpf profile: no process {args.pid}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("otelbpf profile: loads BPF programs and must run as root (try: sudo otelbpf profile ...)",
              file=sys.stderr)
        return EXIT_CANNOT_RUN
    registry = Registry()
    profiler = Profiler(registry, args.hz, pid=args.pid)
    try:
        profiler.start()
    except BpfError as e:
        print(f"otelbpf profile: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"otelbpf: profiling {f'process {args.pid}' if args.pid else 'every process'} at {args.hz} Hz "
          f"for {args.duration:g} s (Ctrl-C ends early)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.duration
    next_drain = time.monotonic() + 10  # bounded kernel maps: drain every 10 s
    profile = before = None
    split = deadline - args.diff_window if args.diff_window else None  # --diff-window: the windows' border
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            profiler.poll(min(0.1, max(0.0, deadline - time.monotonic()), *([max(0.0, split - time.monotonic())]
                                                                             if split else [])))
            if split and time.monotonic() >= split:
                before, profile, split = _merged(profile, profiler.collect()), None, None
                next_drain = time.monotonic() + 10
            elif time.monotonic() >= next_drain:
                profile = _merged(profile, profiler.collect())
                next_drain += 10
        profile = _merged(profile, profiler.collect())
    finally:
        profiler.stop()
    if before is not None:  # flame graphs: the last window against the earlier one; other formats: all of it
        baseline = folded.fold(before)
        whole = _merged(before, profile)
    for path in args.out:
        diffed = before is not None and output.format_of(path) in (".html", ".svg")
        title = (f"CPU flame graph, {args.hz} Hz, last {args.diff_window:g} s vs the {args.duration - args.diff_window:g}"
                 f" s before" if diffed else f"CPU flame graph, {args.hz} Hz, {args.duration:g} s")
        output.write(profile if diffed or before is None else whole, path, title, baseline)
    if before is not None:
        profile = whole
    if args.otlp_endpoint and not _export_profile(profile, args.otlp_endpoint):
        return EXIT_FAILURE
    lost = profiler.lost
    print(f"otelbpf: {profile.total} samples of {len({s.pid for s in profile.counts})} processes"
          f"{f', {lost} lost' if lost else ''}; wrote {', '.join(args.out) or 'nothing'}"
          f"{f'; sent to {args.otlp_endpoint}' if args.otlp_endpoint else ''}", file=sys.stderr)
    return EXIT_OK


def _merged(profile: Profile | None, more: Profile) -> Profile:
    if profile is None:
        return more
    profile.merge(more)
    return profile


def cmd_doctor(_: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from otelbpf.agent import PROBE_OBJECT
    from otelbpf.enrich.containers import find_cgroup2_root
    from otelbpf.kernel import features

    if os.geteuid() != 0:
        print("otelbpf doctor: not running as root; BPF features cannot be probed (try: sudo otelbpf doctor)",
              file=sys.stderr)
    table = features.probe(PROBE_OBJECT, find_cgroup2_root())
    view = Table(title=f"otelbpf {__version__}: what this host supports")
    for col in ("feature", "available", "needed", "detail"):
        view.add_column(col)
    for f in table:
        view.add_row(f.name, "[green]yes[/]" if f.available else "[red]no[/]", "required" if f.required else "optional",
                     f.detail)
    Console().print(view)
    missing = features.missing_required(table)
    if missing:
        print("otelbpf cannot run here: " + "; ".join(f"{f.name} ({f.detail})" for f in missing), file=sys.stderr)
        return EXIT_CANNOT_RUN
    print("otelbpf can run here.")
    return EXIT_OK


def _store_path(args: argparse.Namespace) -> str:
    from otelbpf.config import StoreConfig

    return args.store or os.environ.get("OTELBPF_STORE__PATH") or StoreConfig().path


def _print_result(result, fmt: str = "table", title: str | None = None) -> None:
    if fmt == "json":
        import json
        print(json.dumps([dict(zip(result.columns, row)) for row in result.rows], default=str))
    elif fmt == "csv":
        import csv
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        from rich.console import Console
        from rich.table import Table

        view = Table(title=title)
        for column in result.columns:
            view.add_column(column, overflow="fold")
        for row in result.rows:
            view.add_row(*(_cell(v) for v in row))
        Console().print(view)


def _cell(value) -> str:
    import datetime as dt

    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:23]  # milliseconds are enough to read
    return str(value)


def _with_reader(args: argparse.Namespace, work) -> int:
    """Opens the store (or the agent holding it), runs work(reader); errors are one line."""
    from otelbpf.store import QueryError, StoreError
    from otelbpf.store.client import open_reader

    try:
        reader = open_reader(_store_path(args))
        try:
            work(reader)
        finally:
            reader.close()
    except QueryError as e:
        print(f"otelbpf {args.command}: SQL error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except StoreError as e:
        print(f"otelbpf {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    return _with_reader(args, lambda db: _print_result(db.query(args.sql), args.format))


def cmd_top(args: argparse.Namespace) -> int:
    from otelbpf.store import queries

    if getattr(args, "by", "execs") == "bytes":
        return _with_reader(args, lambda db: _print_result(
            queries.top_talkers(db, args.window, args.limit), title="executables by network bytes"))
    return _with_reader(args, lambda db: _print_result(
        queries.top_processes(db, args.window, args.limit), title="executables by execs"))


def cmd_map(args: argparse.Namespace) -> int:
    from otelbpf.store import queries

    return _with_reader(args, lambda db: _print_result(
        queries.service_map(db, args.window, args.limit), title="service map: client -> server"))


def cmd_events(args: argparse.Namespace) -> int:
    from otelbpf.store import queries

    if args.security or args.all_kinds or args.follow or args.jsonl:
        return _events_lines(args)
    return _with_reader(args, lambda db: _print_result(
        queries.process_events(db, args.window, args.limit), title="latest process events"))


def _events_lines(args: argparse.Namespace) -> int:
    """`otelbpf events --security/--all/--follow/--jsonl`: one compact line per event."""
    from otelbpf.store import QueryError, StoreError
    from otelbpf.store.client import open_reader
    from otelbpf.store.queries import since_ns
    from otelbpf.views import events

    names: tuple[str, ...]
    if args.all_kinds:
        names = (events.SECURITY_EVENT, *events.PROCESS_EVENTS)
    elif args.security or args.jsonl:
        names = (events.SECURITY_EVENT,)
    else:  # --follow alone: the process events this command lists by default
        names = events.PROCESS_EVENTS
    try:
        events.run(lambda: open_reader(_store_path(args)), sys.stdout, since_ns=since_ns(args.window),
                   limit=args.limit, names=names, follow=args.follow, duration=args.duration, jsonl=args.jsonl)
    except KeyboardInterrupt:
        pass
    except QueryError as e:
        print(f"otelbpf events: SQL error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except (StoreError, OSError) as e:
        print(f"otelbpf events: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import threading

    from otelbpf.config import parse_ui_address
    from otelbpf.store import Store, StoreBusy, StoreError
    from otelbpf.store.client import state_file
    from otelbpf.ui import UiServer

    path = _store_path(args)
    try:
        host, port = parse_ui_address(args.address)
        store = Store.open(path, read_only=True)
    except StoreBusy:
        print(f"otelbpf ui: the running agent holds {path} and serves its UI: see the URL it printed "
              f"(also in {state_file(path)})", file=sys.stderr)
        return EXIT_FAILURE
    except (StoreError, ValueError) as e:
        print(f"otelbpf ui: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ValueError) else EXIT_FAILURE
    try:
        ui = UiServer(store, host, port).start()
    except (OSError, ValueError) as e:
        print(f"otelbpf ui: {e}", file=sys.stderr)
        store.close()
        return EXIT_USAGE
    print(f"otelbpf: UI for {path} at {ui.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    ui.stop()
    store.close()
    return EXIT_OK


STORE_COMMANDS = {"query": cmd_query, "top": cmd_top, "events": cmd_events, "map": cmd_map, "ui": cmd_ui}


def cmd_policy_check(args: argparse.Namespace) -> int:
    """Validate and compile policy files; each error names the file, line, field and reason."""
    from otelbpf.security.compiler import compile_policies
    from otelbpf.security.policy import PolicyError, load_policy

    try:
        policies = [load_policy(f) for f in args.files]
        compiled = compile_policies(policies)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    print(f"{len(policies)} policies, {len(compiled.rules)} rules: valid")
    return EXIT_OK


def _export_profile(profile, endpoint: str, timeout: float = 30.0) -> bool:
    """Sends one profile over OTLP/HTTP with the agent's exporter (retries, Retry-After,
    OTEL_EXPORTER_OTLP_* headers, compression and TLS); False, said on stderr, when refused."""
    from otelbpf.enrich.host import host_resource
    from otelbpf.export.otlp import OtlpExporter
    from otelbpf.export.otlp_settings import OtlpSettings
    from otelbpf.sensors.profile import SCOPE
    from otelbpf.signals.model import ProfileBatch
    from otelbpf.signals.otlp_profiles import HTTP_PATH
    from otelbpf.signals.registry import Registry

    url = endpoint.rstrip("/")
    url = url if url.endswith(HTTP_PATH) else url + HTTP_PATH
    registry = Registry()
    try:
        settings = OtlpSettings.from_env(os.environ, {"profiles_endpoint": url, "profiles_protocol": "http/protobuf",
                                                      "retry_max_elapsed": timeout})
    except ValueError as e:
        print(f"otelbpf profile: --otlp-endpoint: {e}", file=sys.stderr)
        return False
    exporter = OtlpExporter(settings, registry, name="profile", signals=("profiles",))
    exporter.export_profiles(ProfileBatch(host_resource(), SCOPE, profile))
    exporter.shutdown(timeout)
    if registry.counter("otelbpf.exporter.sent").value(signal="profiles", exporter="profile"):
        return True
    print(f"otelbpf profile: the profile was not accepted by {url} (the reason is in the warning above)",
          file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="otelbpf: %(levelname)s %(name)s: %(message)s")
    if args.command == "version":
        from otelbpf.kernel import libbpf
        print(f"otelbpf {__version__} (libbpf {'.'.join(map(str, libbpf.version()))})")
        return EXIT_OK
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "policy":
        return cmd_policy_check(args)
    if args.command == "profile":
        return cmd_profile(args)
    if args.command == "flows":
        return cmd_flows(args)
    if args.command == "http":
        return cmd_http(args)
    if args.command in STORE_COMMANDS:
        return STORE_COMMANDS[args.command](args)
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
