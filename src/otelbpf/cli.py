"""The `otelbpf` command: run, doctor, version."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from otelbpf import __version__

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
    run.add_argument("--max-args-bytes", type=int, metavar="N", help="bytes of argv captured per exec")
    run.add_argument("--keep-secret-args", action="store_true", default=None,
                     help="do not redact arguments that look like secrets")
    run.add_argument("--verbose", "-v", action="store_true", help="log the agent's own debug messages")

    sub.add_parser("doctor", help="show what this host supports; non-zero exit if the agent cannot run")
    sub.add_parser("version", help="print the version")
    return p


def _flags(args: argparse.Namespace) -> dict:
    return {
        "sensors": args.sensors,
        "duration": args.duration,
        "otlp_endpoint": args.otlp_endpoint,
        "otlp_protocol": args.otlp_protocol,
        "prometheus": args.prometheus,
        "jsonl_path": args.jsonl,
        "console": args.console,
        "process.max_args_bytes": args.max_args_bytes,
        "process.keep_secret_args": args.keep_secret_args,
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
    agent = Agent(config)
    try:
        agent.start()
    except AgentError as e:
        print(f"otelbpf: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except BpfError as e:
        print(f"otelbpf: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        agent.run(config.duration)
    finally:
        print("otelbpf: stopping: detaching programs and flushing", file=sys.stderr, flush=True)
        agent.stop()
    return EXIT_OK


def cmd_doctor(_: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from otelbpf.agent import PROBE_OBJECT
    from otelbpf.kernel import features

    if os.geteuid() != 0:
        print("otelbpf doctor: not running as root; BPF features cannot be probed (try: sudo otelbpf doctor)",
              file=sys.stderr)
    table = features.probe(PROBE_OBJECT)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="otelbpf: %(levelname)s %(name)s: %(message)s")
    if args.command == "version":
        from otelbpf.kernel import libbpf
        print(f"otelbpf {__version__} (libbpf {'%d.%d' % libbpf.version()})")
        return EXIT_OK
    if args.command == "doctor":
        return cmd_doctor(args)
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
