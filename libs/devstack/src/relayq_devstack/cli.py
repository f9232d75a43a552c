"""``relayq-stack``: the local stack without Docker (``up``, ``down``, ``status``, ``env``,
``stop``, ``start``, and ``supervise``, which ``up`` runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from relayq_devstack.alerts import SINK_URL_VAR, firing_count
from relayq_devstack.config import DEFAULT_PORTS, RestartPolicy, StackConfig, resolve_state_dir
from relayq_devstack.envfile import read_env
from relayq_devstack.stack import (
    StackError,
    StackInfo,
    StartFailed,
    down,
    start_components,
    status,
    stop_components,
    up,
)
from relayq_devstack.state import StatePaths
from relayq_devstack.status import ComponentStatus
from relayq_devstack.supervisor import Supervisor

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING = 0, 1, 3
_PORT_FLAGS = {name: "--" + name.replace("_", "-") + "-port" for name in DEFAULT_PORTS}


def _configure_logging(verbose: bool) -> None:
    # The library logs through structlog; the CLI's own output is plain text on stdout.
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.WARNING
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def _configure_json_logging() -> None:
    # `supervise` runs detached with stdout in logs/supervisor.log: JSON lines, like services.
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayq-stack", description="relayq's local stack: real servers, no Docker."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--state-dir",
            type=Path,
            help="where pids, logs and data live (default: $RELAYQ_STATE_DIR or <repo>/.relayq)",
        )
        return p

    p_up = with_state_dir(sub.add_parser("up", help="start everything and wait until healthy"))
    p_up.add_argument("--redis-port", type=int, help="default: a free port")
    p_up.add_argument("--postgres-port", type=int, help="default: a free port")
    for name, flag in _PORT_FLAGS.items():
        p_up.add_argument(
            flag, type=int, dest=f"port_{name}", help=f"default {DEFAULT_PORTS[name]}"
        )
    p_up.add_argument("--workers", type=int, help="worker processes ($RELAYQ_STACK_WORKERS, 2)")
    p_up.add_argument(
        "--concurrency",
        type=int,
        help="pool size of each worker ($RELAYQ_STACK_WORKER_CONCURRENCY, 2)",
    )
    p_up.add_argument("--timeout", type=float, help="seconds to become healthy (90)")
    p_up.add_argument("--restart", action="store_true", help="restart a running stack")
    p_up.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="SERVICE",
        help="do not start: ingest, dlq, worker, metrics-gateway, reconciler, flower, "
        "prometheus, alertmanager or alert-sink (repeatable)",
    )
    p_up.add_argument(
        "--fast", action="store_true", help="PostgreSQL without fsync (throwaway data only)"
    )
    p_up.add_argument(
        "--no-supervise",
        action="store_true",
        help="do not restart components that exit (no `relayq-stack supervise`)",
    )
    p_down = with_state_dir(sub.add_parser("down", help="stop everything the stack started"))
    p_down.add_argument("--timeout", type=float, default=10.0, help="grace before SIGKILL")
    p_status = with_state_dir(sub.add_parser("status", help="one line per component; exit 0/1/3"))
    p_status.add_argument("--json", action="store_true", help="print the report as JSON")
    p_stop = with_state_dir(
        sub.add_parser("stop", help="stop components and keep them stopped (no restarts)")
    )
    p_stop.add_argument("names", nargs="+", metavar="NAME", help="component or group (worker)")
    p_stop.add_argument("--timeout", type=float, default=10.0, help="grace before SIGKILL")
    p_start = with_state_dir(
        sub.add_parser("start", help="start stopped or given-up components, wait until healthy")
    )
    p_start.add_argument("names", nargs="+", metavar="NAME", help="component or group (worker)")
    p_start.add_argument("--timeout", type=float, default=60.0, help="seconds to become healthy")
    defaults = RestartPolicy()
    p_sup = with_state_dir(
        sub.add_parser("supervise", help="restart components that exit (`up` runs it)")
    )
    for flag, value, what in (
        ("--backoff-initial", defaults.backoff_initial, "seconds before the first restart"),
        ("--backoff-max", defaults.backoff_max, "cap of the doubling backoff, seconds"),
        ("--stable-after", defaults.stable_after, "seconds up that reset the backoff"),
        ("--restart-window", defaults.window, "seconds in which --restart-limit counts"),
        ("--poll", defaults.poll, "seconds between checks"),
    ):
        p_sup.add_argument(flag, type=float, default=value, help=f"{what} ({value})")
    p_sup.add_argument(
        "--restart-limit",
        type=int,
        default=defaults.limit,
        help=f"restarts within the window before giving up ({defaults.limit})",
    )
    with_state_dir(sub.add_parser("env", help="print .relayq/stack.env"))
    return parser


def _print_table(rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print((indent + line).rstrip())


def _print_info(info: StackInfo, supervised: bool) -> None:
    rows = [("COMPONENT", "PID", "ENDPOINT")]
    rows += [(c.name, str(c.pid) if c.pid else "external", c.endpoint) for c in info.components]
    _print_table(rows)
    print(f"\nEnvironment ({StatePaths(info.state_dir).stack_env}):")
    # Secrets stay in the file (mode 0600); the terminal (and CI logs) only see that they exist.
    _print_table([(k, "*** (in the file)" if "TOKEN" in k else v) for k, v in info.env.items()])
    for note in info.notes:
        print(f"note: {note}")
    print(f"\nLogs: {StatePaths(info.state_dir).logs}/")
    if supervised:
        print(
            "A component that exits is restarted (log: supervisor.log); "
            "`relayq-stack stop NAME` / `start NAME` take one down and back on purpose."
        )
    print(f"Load the env: set -a; . {StatePaths(info.state_dir).stack_env}; set +a")


def _cmd_up(args: argparse.Namespace) -> int:
    skip = frozenset(args.skip)
    known = {"ingest", "dlq", "worker", "metrics-gateway", "reconciler", "flower", "prometheus"}
    known |= {"alertmanager", "alert-sink"}
    if skip - known:
        print(f"unknown service(s) to skip: {', '.join(sorted(skip - known))}", file=sys.stderr)
        return EXIT_FAILED
    config = StackConfig.from_env(
        state_dir=resolve_state_dir(args.state_dir),
        redis_port=args.redis_port,
        postgres_port=args.postgres_port,
        ports={name: getattr(args, f"port_{name}") for name in DEFAULT_PORTS},
        workers=args.workers,
        concurrency=args.concurrency,
        timeout=args.timeout,
        fast=args.fast or None,
        skip=skip or None,
        supervise=False if args.no_supervise else None,
    )
    print(f"Starting the relayq stack in {config.state_dir} ...", flush=True)
    try:
        info = up(config, restart=args.restart)
    except StackError as exc:
        print(f"\nrelayq stack failed to start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 130
    if info.already_running:
        print("The stack is already running (use `relayq-stack up --restart` to restart it).")
    else:
        print("The relayq stack is up.")
    _print_info(info, supervised=config.supervise)
    return EXIT_OK


def _state_dir(args: argparse.Namespace) -> Path:
    return resolve_state_dir(args.state_dir)


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = down(_state_dir(args), timeout=args.timeout)
    print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")
    return EXIT_OK


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _run_state(c: ComponentStatus) -> str:
    if c.run_state == "restarting" and c.restart_at is not None:
        return f"restarting (in {max(0.0, c.restart_at - time.time()):.0f}s)"
    return c.run_state


def _cmd_status(args: argparse.Namespace) -> int:
    report = status(_state_dir(args))
    code = {"healthy": EXIT_OK, "stopped": EXIT_NOT_RUNNING}.get(report.overall, EXIT_FAILED)
    if args.json:
        print(
            json.dumps(
                {
                    "state_dir": str(report.state_dir),
                    "overall": report.overall,
                    "phase": report.phase,
                    "supervisor_pid": report.supervisor_pid,
                    "components": [c.to_json() for c in report.components],
                },
                indent=2,
            )
        )
        return code if report.components else EXIT_NOT_RUNNING
    if not report.components:
        print(f"No stack in {report.state_dir}.")
        return EXIT_NOT_RUNNING
    rows = [("COMPONENT", "PID", "STATE", "HEALTH", "RESTARTS", "LAST EXIT", "UPTIME", "ENDPOINT")]
    rows += [
        (
            c.name,
            str(c.pid) if c.pid else "external",
            _run_state(c),
            c.state if c.running else "-",
            str(c.restarts),
            "-" if c.last_exit_code is None else str(c.last_exit_code),
            _uptime(c.uptime),
            c.endpoint,
        )
        for c in report.components
    ]
    _print_table(rows, indent="")
    if report.supervisor_pid is not None:
        print(f"supervisor: running (pid {report.supervisor_pid}); restarts what exits")
    else:
        print("supervisor: not running (nothing restarts what exits)")
    print(f"stack: {report.overall}" + (" (still starting)" if report.phase == "starting" else ""))
    _print_alerting(StatePaths(report.state_dir).stack_env)
    return code


def _cmd_stop(args: argparse.Namespace) -> int:
    stopped = stop_components(_state_dir(args), args.names, timeout=args.timeout)
    print(f"Stopped (held until `relayq-stack start`): {', '.join(stopped) or 'nothing running'}")
    return EXIT_OK


def _cmd_start(args: argparse.Namespace) -> int:
    try:
        started = start_components(_state_dir(args), args.names, timeout=args.timeout)
    except StartFailed as exc:
        print(f"relayq-stack start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Started: {', '.join(started)}" if started else "Already running.")
    print("Healthy: " + ", ".join(args.names))
    return EXIT_OK


def _cmd_supervise(args: argparse.Namespace) -> int:
    _configure_json_logging()
    policy = RestartPolicy(
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        stable_after=args.stable_after,
        limit=args.restart_limit,
        window=args.restart_window,
        poll=args.poll,
    )
    return Supervisor(_state_dir(args), policy).run()


def _print_alerting(env_file: Path) -> None:
    """The Alertmanager URL and how many alerts its sink last heard of as firing."""
    try:
        env = read_env(env_file)
    except FileNotFoundError:
        return
    if "RELAYQ_ALERTMANAGER_URL" in env:
        print(f"alertmanager: {env['RELAYQ_ALERTMANAGER_URL']}")
    if SINK_URL_VAR in env:
        count = firing_count(env[SINK_URL_VAR])
        shown = "the alert sink does not answer" if count is None else f"{count} firing"
        print(f"alerts received: {shown} (relayq-alerts lists them)")


def _cmd_env(args: argparse.Namespace) -> int:
    path = StatePaths(_state_dir(args)).stack_env
    if not path.exists():
        print(f"No {path}: is the stack up? (relayq-stack up)", file=sys.stderr)
        return EXIT_NOT_RUNNING
    print(path.read_text(encoding="utf-8"), end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relayq-stack``."""
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    commands = {
        "up": _cmd_up,
        "down": _cmd_down,
        "status": _cmd_status,
        "env": _cmd_env,
        "stop": _cmd_stop,
        "start": _cmd_start,
        "supervise": _cmd_supervise,
    }
    try:
        return commands[args.command](args)
    except (ValueError, RuntimeError) as exc:
        print(f"relayq-stack {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # `relayq-stack status | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
