"""``relayq-load``: a ghz-style command line over the Locust gRPC user; writes ghz's report.

    relayq-load --insecure --call relayq.v1.IngestService.SubmitJob -c 50 -n 10000 --rps 200 \\
        -d '{"task":"demo.echo","payload":{"n":{{.RequestNumber}}},"idempotency_key":"{{.UUID}}"}'\\
        -O json -o report.json [HOST:PORT]

Options keep ghz's names and meanings (``-c``, ``-n``, ``-z``, ``--rps``, ``-d``/``-D``,
``-m``, ``-t``, ``--connections``, ``--insecure``, ``-O``, ``-o``, ``--name``, ``--tags``);
``--batch-size`` is this tool's own (see :mod:`relayq_load.calls`). The host defaults to the
local stack's ingest (``$RELAYQ_INGEST_GRPC`` or ``.relayq/stack.env``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayq_load.calls import CallSpecError, Method, RequestFactory, resolve
from relayq_load.template import TemplateError

DEFAULT_CALL = "relayq.v1.IngestService.SubmitJob"
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def submit_argv(address: str, data: str, report: Path, *options: str) -> list[str]:
    """The command that runs ``relayq-load`` (this venv's) sending plaintext ``SubmitJob`` calls
    built from the template ``data`` to ``address``, with a ghz JSON report in ``report``;
    ``options`` adds the load's shape (``-c``, ``-n``/``-z``, ``--rps``, ``--quiet``...)."""
    program = str(Path(sys.executable).parent / "relayq-load")
    head = [program, "--insecure", "--call", DEFAULT_CALL, "-d", data]
    return [*head, *options, "-O", "json", "-o", str(report), address]


def go_duration(text: str) -> float:
    """Seconds in a Go duration (``10s``, ``1m30s``, ``250ms``); a bare number is seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, seconds = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 5m, 1m30s)")
    return seconds


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line (ghz's option names)."""
    p = argparse.ArgumentParser(
        prog="relayq-load",
        description="Load-test relayq's gRPC API (a Locust gRPC user) and write a ghz report.",
    )
    p.add_argument("host", nargs="?", help="HOST:PORT (default: the local stack's ingest)")
    p.add_argument("--host", dest="host_option", metavar="HOST:PORT", help="same as HOST")
    p.add_argument("--call", default=DEFAULT_CALL, help=f"package.Service.Method ({DEFAULT_CALL})")
    data = p.add_mutually_exclusive_group()
    data.add_argument("-d", "--data", help="request JSON, a template with {{...}} actions")
    data.add_argument("-D", "--data-file", type=Path, help="read the request JSON from a file")
    p.add_argument("-m", "--metadata", help='call metadata as a JSON object, {"key":"value"}')
    p.add_argument("-c", "--concurrency", type=_positive, default=50, help="users (50)")
    p.add_argument("-n", "--total", type=_positive, default=200, help="requests to make (200)")
    p.add_argument("-z", "--duration", type=go_duration, help="run this long instead of -n")
    p.add_argument("-r", "--rps", type=_non_negative, default=0, help="requests/s, 0 = no limit")
    p.add_argument("--connections", type=_positive, default=1, help="gRPC connections (1)")
    p.add_argument("-t", "--timeout", type=go_duration, default=20.0, help="per call (20s)")
    p.add_argument("--insecure", action="store_true", help="plaintext (no TLS)")
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=1,
        help="elements per request for batch calls (SubmitJobs); the data is one element",
    )
    p.add_argument(
        "-O",
        "--format",
        choices=("summary", "json", "pretty"),
        default="summary",
        help="report format (summary)",
    )
    p.add_argument("-o", "--output", type=Path, help="write the report here (default: stdout)")
    p.add_argument("--name", default="", help="the run's name, kept in the report")
    p.add_argument("--tags", help='JSON object of strings kept in the report, {"env":"local"}')
    p.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    return p


class UsageError(Exception):
    """Bad options: the message says which and why."""


@dataclass(frozen=True)
class Prepared:
    """The options, checked: what to call and with which data."""

    method: Method
    data: str
    requests: RequestFactory
    metadata: dict[str, str]
    tags: dict[str, str]


def _json_object(text: str | None, what: str) -> dict[str, str]:
    if not text:
        return {}
    try:
        value: Any = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(f"{what} must be a JSON object of strings")
    return {str(k): v for k, v in value.items()}


def prepare(args: argparse.Namespace) -> Prepared:
    """Checks the call, the data template and the JSON options (before any load starts)."""
    if args.data_file is not None:
        try:
            data = Path(args.data_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {args.data_file}: {exc}") from None
    else:
        data = args.data or ""
    method = resolve(args.call)
    return Prepared(
        method=method,
        data=data,
        requests=RequestFactory(method, data, batch_size=args.batch_size),
        metadata=_json_object(args.metadata, "--metadata"),
        tags=_json_object(args.tags, "--tags"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relayq-load``."""
    args = parser().parse_args(argv)
    # Checked first, so that a typo fails at once; this imports protobuf only (no sockets).
    try:
        prepared = prepare(args)
    except (UsageError, CallSpecError, TemplateError) as exc:
        sys.stderr.write(f"relayq-load: {exc}\n")
        return 2
    # gevent's monkey-patching, which importing locust does, must come before anything imports
    # ssl, sockets or grpc.
    import locust  # noqa: F401

    from relayq_load.headless import run_cli

    return run_cli(args, prepared)


if __name__ == "__main__":
    sys.exit(main())
