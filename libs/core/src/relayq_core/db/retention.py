"""``relayq-ledger purge``: the job ledger's retention.

A job's idempotency key lives in its ledger row, so keys are kept exactly as long as the job's
record: a re-submit within the retention returns the first job; after it, the key is free again.
Only finished jobs (succeeded or dead-lettered) are purged, oldest first, in small batches.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta

from pydantic import Field

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.logging import configure_logging, get_logger
from relayq_core.settings import CommonSettings

log = get_logger(__name__)


class RetentionSettings(CommonSettings):
    """``RELAYQ_LEDGER_RETENTION_DAYS``: how long finished jobs and their keys are kept."""

    retention_days: float = Field(30.0, gt=0, validation_alias="RELAYQ_LEDGER_RETENTION_DAYS")


async def purge(dsn: str, retention: timedelta, *, batch: int = 1000) -> int:
    """Deletes finished jobs older than ``retention``; how many."""
    cutoff = datetime.now(UTC) - retention
    ledger = JobLedger()
    conn = await connect(dsn)
    total = 0
    try:
        while True:
            deleted = await ledger.purge_finished(conn, cutoff, batch)
            total += deleted
            if deleted < batch:
                break
    finally:
        await conn.close()
    log.info("ledger_purged", deleted=total, finished_before=cutoff.isoformat())
    return total


def main() -> None:
    """Console entry point: ``relayq-ledger purge [--retention-days N]``."""
    settings = RetentionSettings()
    parser = argparse.ArgumentParser(description="relayq job-ledger maintenance")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("purge", help="delete finished jobs (and their keys) past the retention")
    p.add_argument("--retention-days", type=float, default=settings.retention_days)
    args = parser.parse_args()
    if args.retention_days <= 0:
        parser.error("--retention-days must be positive")
    configure_logging("ledger", level=settings.log_level, json=settings.log_json)
    asyncio.run(purge(settings.database_url, timedelta(days=args.retention_days)))
