"""``relayq-ledger``: the job ledger from an operator's terminal.

- ``relayq-ledger stats [--json]``: jobs by queue and state, the age of each queue's oldest
  waiting job, and the unfinished jobs that need a look (dead letters waiting for dlq-svc,
  overdue retries, never-enqueued submits, worker losses). The runbook's first command when a
  backlog grows.
- ``relayq-ledger jobs [--state S] [--queue Q] [--task T] [--limit N] [--json]``: the unfinished
  jobs themselves, oldest first, with why each waits (waiting for a worker, never published,
  retry overdue, lease expired, dead letter waiting for dlq-svc): the job ids an incident
  touches, for ``relayq-trace`` and ``GetJob``.
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


UNFINISHED = ("queued", "running", "retrying")


async def jobs(
    dsn: str, states: list[str], queue: str | None, task: str | None, limit: int
) -> list[dict[str, Any]]:
    """The unfinished jobs :meth:`JobLedger.unfinished` lists, JSON-able."""
    conn = await connect(dsn)
    try:
        rows = await JobLedger().unfinished(conn, states, queue=queue, task=task, limit=limit)
    finally:
        await conn.close()
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
    return rows


def render_jobs(rows: list[dict[str, Any]]) -> str:
    """``jobs`` as a table, columns as wide as their widest value (job ids are the caller's)."""
    if not rows:
        return "(no unfinished jobs)"
    table = [("JOB ID", "TASK", "QUEUE", "STATE", "TRIES", "AGE", "WHY")]
    for r in rows:
        why = r["why"] + (f" ({r['last_error'][:60]})" if r["last_error"] else "")
        table.append(
            (
                r["job_id"],
                r["task"],
                r["queue"],
                r["state"],
                str(r["attempt_count"]),
                f"{r['age_seconds']:.1f}s",
                why,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    )


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
    j = sub.add_parser("jobs", help="unfinished jobs, oldest first, and why each waits")
    j.add_argument(
        "--state",
        action="append",
        choices=UNFINISHED,
        help="queued, running or retrying (repeatable; default: all three)",
    )
    j.add_argument("--queue", help="only this queue")
    j.add_argument("--task", help="only this task")
    j.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    j.add_argument("--json", action="store_true", help="a JSON list")
    p = sub.add_parser("purge", help="delete finished jobs (and their keys) past the retention")
    p.add_argument("--retention-days", type=float, default=settings.retention_days)
    args = parser.parse_args()
    configure_logging("ledger", level=settings.log_level, json=settings.log_json)
    try:
        if args.command == "stats":
            doc = asyncio.run(stats(settings.database_url))
            print(json.dumps(doc, indent=2) if args.json else render(doc))  # noqa: T201
        elif args.command == "jobs":
            if args.limit <= 0:
                parser.error("--limit must be positive")
            states = args.state or list(UNFINISHED)
            found = asyncio.run(
                jobs(settings.database_url, states, args.queue, args.task, args.limit)
            )
            print(json.dumps(found, indent=2) if args.json else render_jobs(found))  # noqa: T201
        else:
            if args.retention_days <= 0:
                parser.error("--retention-days must be positive")
            asyncio.run(purge(settings.database_url, timedelta(days=args.retention_days)))
    except BrokenPipeError:
        sys.exit(0)  # `| head` closed the pipe: not an error
    except OSError as exc:
        sys.exit(f"relayq-ledger: cannot reach the database: {exc}")
