"""dlq-tool's command line: the parser, time and number arguments, and the filters they make.

Every way of asking for something impossible ends here, in ``argparse``'s error path (exit 2),
before anything is sent to the server.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dlq_svc.tool.client import MAX_PAGE_SIZE
from relayq.v1 import dead_letter_pb2

PROG = "dlq-tool"
STATUSES = ("active", "replayed", "dropped", "all")
DEFAULT_LIMIT = 50
DEFAULT_TIMEOUT = 30.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_when(text: str, now: datetime) -> datetime:
    """A point in time: ISO-8601 (``2024-05-01``, ``2024-05-01T03:00Z``; no zone means UTC) or
    a span back from ``now`` (``45s``, ``30m``, ``2h``, ``3d``, ``1w``, ``1h30m``)."""
    value = text.strip().lower()
    if _RELATIVE.fullmatch(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time (2024-05-01T03:00Z) "
            "nor a span back from now (30m, 2h, 3d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _when(now: datetime) -> Callable[[str], datetime]:
    def convert(text: str) -> datetime:
        try:
            return parse_when(text, now)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _number[N: (int, float)](kind: type[N], *, low: N, high: N | None = None) -> Callable[[str], N]:
    def convert(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value < low or (high is not None and value > high):  # NaN too
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value

    return convert


def positive_float(text: str) -> float:
    """A number above zero (``--rate``, ``--older-than-days``, ``--timeout``)."""
    value = _number(float, low=0.0)(text)
    if value <= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is out of range: must be above 0")
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


@dataclass(frozen=True)
class Filters:
    """The filter flags shared by list, replay and drop; unset fields match everything."""

    task: str | None = None
    reason: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    error: str | None = None

    def is_empty(self) -> bool:
        """True when no flag was given (the status is not a selection on its own)."""
        return not any((self.task, self.reason, self.since, self.until, self.error))

    def to_proto(self) -> dead_letter_pb2.DeadLetterFilter:
        """The ``DeadLetterFilter`` these flags ask for."""
        message = dead_letter_pb2.DeadLetterFilter(
            task=self.task or "",
            reason=self.reason or "",
            status=self.status or "",
            error_contains=self.error or "",
        )
        if self.since is not None:
            message.since.FromDatetime(self.since)
        if self.until is not None:
            message.until.FromDatetime(self.until)
        return message


def filters_from(ns: argparse.Namespace) -> Filters:
    """The :class:`Filters` of a parsed command line."""
    status = getattr(ns, "status", None)
    return Filters(
        task=ns.task,
        reason=ns.reason_filter,
        status=None if status in (None, "all") else status,
        since=ns.since,
        until=ns.until,
        error=ns.error,
    )


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On the main parser these carry the defaults; repeated on each subcommand (with SUPPRESS)
    # so that `dlq-tool list --json` and `dlq-tool --json list` both work.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--address",
        default=default(None),
        metavar="HOST:PORT",
        help="dlq-svc's gRPC address (default: $RELAYQ_DLQ_GRPC, else .relayq/stack.env, "
        "else 127.0.0.1:50052)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON document for scripts instead of tables",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"deadline of each request (default {DEFAULT_TIMEOUT:g}; a replay stream has none)",
    )


def _filter_flags(parser: argparse.ArgumentParser, now: datetime, *, status: bool) -> None:
    group = parser.add_argument_group("filters (ANDed)")
    group.add_argument("--task", type=_text, help="task name, e.g. demo.charge")
    # On replay and drop, --reason is the operator's note for the audit trail, so the filter on
    # why a job was dead-lettered is --failure-reason there (list accepts both spellings).
    group.add_argument(
        *(("--reason", "--failure-reason") if status else ("--failure-reason",)),
        dest="reason_filter",
        type=_text,
        metavar="REASON",
        help="retries_exhausted, permanent_error, worker_lost or timeout",
    )
    if status:
        group.add_argument(
            "--status",
            choices=STATUSES,
            default="active",
            help="entry status (default active; 'all' for every status)",
        )
    group.add_argument(
        "--since", type=_when(now), metavar="WHEN", help="dead-lettered at or after (2h, 3d, ISO)"
    )
    group.add_argument(
        "--until", type=_when(now), metavar="WHEN", help="dead-lettered before (2h, 3d, ISO)"
    )
    group.add_argument(
        "--error", type=_text, metavar="TEXT", help="substring of the error type or message"
    )


def _bulk_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help="entry ids (or use filters)")
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would happen, change nothing"
    )
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def build_parser(now: datetime) -> argparse.ArgumentParser:
    """The whole command line; ``now`` anchors relative times such as ``--since 2h``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, replay and drop relayq's dead-lettered jobs (a gRPC client of "
        "dlq-svc).",
        epilog="Exit codes: 0 success, 1 server error, 2 bad usage or refused confirmation.",
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, suppress=True)
        return p

    p_list = command("list", "list dead letters, newest first")
    _filter_flags(p_list, now, status=True)
    p_list.add_argument(
        "--limit",
        type=_number(int, low=0),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N entries, across pages (default {DEFAULT_LIMIT}; 0 for all)",
    )
    p_list.add_argument(
        "--page-size",
        type=_number(int, low=1, high=MAX_PAGE_SIZE),
        metavar="N",
        help=f"entries per request, 1..{MAX_PAGE_SIZE} (default: up to the limit)",
    )

    p_show = command("show", "one entry: payload, error, traceback, attempts, trace, audit")
    p_show.add_argument("id", type=_text, metavar="ID")

    p_replay = command(
        "replay", "re-enqueue entries with their original job_id and idempotency key"
    )
    _bulk_flags(p_replay)
    _filter_flags(p_replay, now, status=False)
    p_replay.add_argument(
        "--all", action="store_true", help="every active entry (instead of ids or filters)"
    )
    p_replay.add_argument(
        "--rate", type=positive_float, metavar="N", help="at most N entries per second"
    )
    p_replay.add_argument(
        "--reason", dest="note", type=_text, metavar="TEXT", help="note for the audit trail"
    )

    p_drop = command("drop", "take entries out of the active DLQ (kept, with an audit record)")
    _bulk_flags(p_drop)
    _filter_flags(p_drop, now, status=False)
    p_drop.add_argument(
        "--all", action="store_true", help="every active entry (instead of ids or filters)"
    )
    p_drop.add_argument(
        "--reason",
        dest="note",
        type=_text,
        required=True,
        metavar="TEXT",
        help="why these entries leave the DLQ (required; kept in the audit trail)",
    )

    command("stats", "counts by task, reason and status; the oldest active entry")

    p_purge = command("purge", "delete dropped entries whose drop is older than N days")
    p_purge.add_argument(
        "--older-than-days", type=positive_float, required=True, metavar="N", help="retention"
    )
    p_purge.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
    p_purge.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    return parser


def parse_args(argv: Sequence[str] | None, now: datetime) -> argparse.Namespace:
    """Parses and validates ``argv``; exits 2 with argparse's message on bad usage."""
    parser = build_parser(now)
    ns = parser.parse_args(argv)
    since, until = getattr(ns, "since", None), getattr(ns, "until", None)
    if since is not None and until is not None and since >= until:
        parser.error("--since must be before --until")
    if ns.command in ("replay", "drop"):
        has_filter = not filters_from(ns).is_empty()
        if ns.ids and (has_filter or ns.all):
            parser.error(f"{ns.command}: give entry ids or filters, not both")
        if ns.all and has_filter:
            parser.error(f"{ns.command}: --all selects every active entry; drop the filters")
        if not ns.ids and not has_filter and not ns.all:
            parser.error(f"{ns.command}: give entry ids, filters, or --all")
        if any(not i.strip() for i in ns.ids):
            parser.error(f"{ns.command}: an entry id must not be empty")
    return ns
