"""``relayq-ledger``: the job ledger from an operator's terminal.

- ``relayq-ledger stats [--json]``: jobs by queue and state, the age of each queue's oldest
  waiting job, and the unfinished jobs that need a look (dead letters waiting for dlq-svc,
  overdue retries, never-enqueued submits, worker losses). The runbook's first command when a
  backlog grows.
- ``relayq-ledger waiting [--limit N] [--json]``: the unfinished jobs (queued, retrying,
  running), longest waiting first, each with its ids, state, whether its message was ever handed
  to the broker, and how long it has waited: which jobs an incident delays.
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
from relayq_core.db.queries import SQL_DIR, load_queries
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


async def waiting(dsn: str, limit: int) -> list[dict[str, Any]]:
    """The unfinished jobs, longest waiting first (at most ``limit``)."""
    conn = await connect(dsn)
    try:
        rows = await conn.fetch(load_queries(SQL_DIR / "ledger.sql")["waiting_jobs"], limit)
    finally:
        await conn.close()
    return [
        {
            "job_id": r["job_id"],
            "idempotency_key": r["idempotency_key"],
            "task": r["task"],
            "queue": r["queue"],
            "state": r["state"],
            "published": r["published"],
            "waited_seconds": round(max(float(r["waited_seconds"]), 0.0), 3),
        }
        for r in rows
    ]


def render_waiting(jobs: list[dict[str, Any]]) -> str:
    """``waiting`` as a table (the job id first: it is what the next command takes)."""
    lines = [f"{'JOB_ID':<38} {'TASK':<20} {'QUEUE':<12} {'STATE':<9} {'PUBLISHED':<9} WAITED"]
    for j in jobs:
        lines.append(
            f"{j['job_id']:<38} {j['task']:<20} {j['queue']:<12} {j['state']:<9} "
            f"{'yes' if j['published'] else 'no':<9} {j['waited_seconds']:.1f}s"
        )
    lines.append(f"({len(jobs)} unfinished job{'' if len(jobs) == 1 else 's'} shown)")
    return "\n".join(lines)


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
    wt = sub.add_parser("waiting", help="unfinished jobs, longest waiting first, with their ids")
    wt.add_argument("--limit", type=int, default=20, help="at most N jobs (default 20)")
    wt.add_argument("--json", action="store_true", help="one JSON document")
    p = sub.add_parser("purge", help="delete finished jobs (and their keys) past the retention")
    p.add_argument("--retention-days", type=float, default=settings.retention_days)
    args = parser.parse_args()
    configure_logging("ledger", level=settings.log_level, json=settings.log_json)
    try:
        if args.command == "stats":
            doc = asyncio.run(stats(settings.database_url))
            print(json.dumps(doc, indent=2) if args.json else render(doc))  # noqa: T201
        elif args.command == "waiting":
            if args.limit <= 0:
                parser.error("--limit must be positive")
            jobs = asyncio.run(waiting(settings.database_url, args.limit))
            print(json.dumps(jobs, indent=2) if args.json else render_waiting(jobs))  # noqa: T201
        else:
            if args.retention_days <= 0:
                parser.error("--retention-days must be positive")
            asyncio.run(purge(settings.database_url, timedelta(days=args.retention_days)))
    except BrokenPipeError:
        sys.exit(0)  # `| head` closed the pipe: not an error
    except OSError as exc:
        sys.exit(f"relayq-ledger: cannot reach the database: {exc}")
