"""``relayq-alerts``: the notifications the local stack's Alertmanager sent, newest first.

Reads them from the alert sink (``RELAYQ_ALERT_SINK_URL`` in ``.relayq/stack.env``, or
``--url``). One line per alert per notification: status, alert name, severity, the receiver it
was routed to (``page``, ``ticket``...), its other labels, summary, runbook and start time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relayq_devstack.alert_sink import firing_now, flatten
from relayq_devstack.config import resolve_state_dir
from relayq_devstack.envfile import read_env
from relayq_devstack.state import StatePaths

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING = 0, 1, 3
SINK_URL_VAR = "RELAYQ_ALERT_SINK_URL"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SINCE = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SinkUnavailable(RuntimeError):
    """The alert sink could not be reached or answered something else than its JSON."""


def fetch_records(url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every alert the sink at ``url`` received, one record per notification, oldest first
    (see :func:`relayq_devstack.alert_sink.flatten`)."""
    try:
        with _NO_PROXY.open(f"{url.rstrip('/')}/alerts", timeout=timeout) as resp:
            notes = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SinkUnavailable(f"the alert sink at {url} did not answer: {exc}") from None
    if not isinstance(notes, list):
        raise SinkUnavailable(f"the alert sink at {url} answered no list")
    return flatten(notes)


def firing_count(url: str, timeout: float = 1.0) -> int | None:
    """How many alerts the sink last heard of as firing; None if it does not answer."""
    try:
        return len(firing_now(fetch_records(url, timeout)))
    except SinkUnavailable:
        return None


def parse_since(text: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d`` as a duration."""
    match = _SINCE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration like 10m or 2h: {text!r}")
    return timedelta(seconds=int(match.group(1)) * _UNIT[match.group(2)])


def _received(record: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(record["receivedAt"]))
    except (KeyError, ValueError):
        return datetime.min.replace(tzinfo=UTC)


def select(
    records: Sequence[dict[str, Any]],
    *,
    since: timedelta | None = None,
    firing: bool = False,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """``records`` (oldest first) filtered, newest first. ``firing``: only the alerts whose
    latest notification says firing (one line each); ``since``: received in that window."""
    chosen = firing_now(records) if firing else list(records)
    if since is not None:
        cutoff = (now or datetime.now(UTC)) - since
        chosen = [r for r in chosen if _received(r) >= cutoff]
    return sorted(chosen, key=_received, reverse=True)


def _labels(record: dict[str, Any]) -> str:
    labels: dict[str, str] = record["labels"]
    # `stack` is the same on every alert of a stack: noise in a table.
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "stack") or "-"


def render(records: Sequence[dict[str, Any]]) -> str:
    """The human listing: a line per alert, then its summary and runbook indented."""
    if not records:
        return "No alerts received.\n"
    lines: list[str] = []
    for r in records:
        lines.append(
            f"{r['receivedAt']}  {r['status'].upper():8} {r['alertname']}  "
            f"severity={r['severity'] or '-'}  receiver={r['receiver']}  {_labels(r)}"
        )
        if r["summary"]:
            lines.append(f"    {r['summary']}")
        lines.append(f"    started {r['startsAt']}  runbook: {r['runbook_url'] or '-'}")
    return "\n".join(lines) + "\n"


def _sink_url(args: argparse.Namespace) -> str | None:
    if args.url:
        return str(args.url)
    env_file = StatePaths(resolve_state_dir(args.state_dir)).stack_env
    try:
        return read_env(env_file).get(SINK_URL_VAR)
    except FileNotFoundError:
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayq-alerts",
        description="The alerts the local stack's Alertmanager sent to its sink, newest first.",
    )
    parser.add_argument("--url", help=f"the alert sink (default: {SINK_URL_VAR} in stack.env)")
    parser.add_argument("--state-dir", type=Path, help="the stack's state dir (.relayq)")
    parser.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    parser.add_argument(
        "--since", type=parse_since, metavar="DURATION", help="received in the last 10m, 2h..."
    )
    parser.add_argument(
        "--firing", action="store_true", help="only alerts still firing (latest notification)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relayq-alerts``."""
    args = _parser().parse_args(argv)
    url = _sink_url(args)
    if not url:
        print(
            f"relayq-alerts: no {SINK_URL_VAR} in stack.env: is the stack up "
            "(relayq-stack up)? Or pass --url.",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    try:
        records = select(fetch_records(url), since=args.since, firing=args.firing)
    except SinkUnavailable as exc:
        print(f"relayq-alerts: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.json:
            print(json.dumps(records, indent=2))
        else:
            print(render(records), end="")
    except BrokenPipeError:
        sys.stderr.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
