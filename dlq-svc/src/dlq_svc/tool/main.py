"""``dlq-tool`` entry point: parse, resolve the target, run one command, map failures to exit
codes (0 success, 1 server error, 2 bad usage or refused confirmation)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from dlq_svc.tool.args import PROG, parse_args
from dlq_svc.tool.client import DlqClient
from dlq_svc.tool.commands import COMMANDS, Terminal
from dlq_svc.tool.errors import EXIT_INTERRUPTED, ToolError
from dlq_svc.tool.target import default_actor, resolve_target


def run(
    argv: Sequence[str] | None,
    *,
    environ: Mapping[str, str],
    cwd: Path,
    term: Terminal,
    now: datetime | None = None,
    actor: str | None = None,
) -> int:
    """Runs one command line; returns the exit code (argparse exits 2 itself on bad usage)."""
    now = now or datetime.now(UTC)
    ns = parse_args(argv, now)
    target = resolve_target(ns.address, environ, cwd, actor or default_actor())
    try:
        with DlqClient(target, timeout=ns.timeout) as client:
            return COMMANDS[ns.command](ns, client, term, now)
    except ToolError as exc:
        term.note(f"{PROG}: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        term.note(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED


def main() -> None:
    """Console entry point."""
    try:
        cwd = Path.cwd()
    except OSError:  # the working directory was removed
        cwd = Path("/")
    try:
        code = run(sys.argv[1:], environ=os.environ, cwd=cwd, term=Terminal.std())
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`dlq-tool list | head`): not a failure of ours. Point stdout at
        # /dev/null so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
