"""``relayq-ledger``: the job ledger from an operator's terminal.

- ``relayq-ledger stats [--json]``: jobs by queue and state, the age of each queue's oldest
  waiting job, and the unfinished jobs that need a look (dead letters waiting for dlq-svc,
  overdue retries, never-enqueued submits, worker losses). The runbook's first command when a
  backlog grows.
- ``relayq-ledger purge [--retention-days N]``: retention (see :mod:`relayq_core.db.retention`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.db.retention import RetentionSettings, purge
from relayq_core.logging import configure_logging


async def stats(dsn: str) -> dict[str, Any]:
    """The ledger's numbers, as one JSON-able document."""
    ledger = JobLedger()
    conn = await connect(dsn)
    try:
        counts = await ledger.counts(conn)
        queues = sorted({q for q, _, _ in counts})
        now = datetime.now(UTC)
        oldest: dict[str, float] = {}
        for queue in queues:
            since = await ledger.oldest_queued(conn, queue)
            oldest[queue] = round((now - since).total_seconds(), 3) if since else 0.0
        attention = await ledger.attention(conn)
    finally:
        await conn.close()
    by_queue: dict[str, dict[str, int]] = {}
    for queue, state, count in counts:
        by_queue.setdefault(queue, {})[state] = count
    return {"queues": by_queue, "oldest_waiting_seconds": oldest, "attention": attention}


def render(doc: dict[str, Any]) -> str:
    """``stats`` as a table."""
    states = ["queued", "running", "retrying", "succeeded", "dead_lettered"]
    lines = [f"{'QUEUE':<16}" + "".join(f"{s:>15}" for s in states) + f"{'OLDEST WAITING':>16}"]
    for queue, row in sorted(doc["queues"].items()):
        age = doc["oldest_waiting_seconds"].get(queue, 0.0)
        lines.append(
            f"{queue:<16}" + "".join(f"{row.get(s, 0):>15}" for s in states) + f"{age:>15.1f}s"
        )
    lines.append("")
    lines += [f"{name.replace('_', ' '):<32}{n}" for name, n in doc["attention"].items()]
    return "\n".join(lines)


def main() -> None:
    """Console entry point."""
    settings = RetentionSettings()
    parser = argparse.ArgumentParser(prog="relayq-ledger", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="jobs by queue and state; what needs attention")
    st.add_argument("--json", action="store_true", help="one JSON document")
    p = sub.add_parser("purge", help="delete finished jobs (and their keys) past the retention")
    p.add_argument("--retention-days", type=float, default=settings.retention_days)
    args = parser.parse_args()
    configure_logging("ledger", level=settings.log_level, json=settings.log_json)
    try:
        if args.command == "stats":
            doc = asyncio.run(stats(settings.database_url))
            print(json.dumps(doc, indent=2) if args.json else render(doc))  # noqa: T201
        else:
            if args.retention_days <= 0:
                parser.error("--retention-days must be positive")
            asyncio.run(purge(settings.database_url, timedelta(days=args.retention_days)))
    except BrokenPipeError:
        sys.exit(0)  # `| head` closed the pipe: not an error
    except OSError as exc:
        sys.exit(f"relayq-ledger: cannot reach the database: {exc}")
