"""The job ledger's retention (``relayq-ledger purge``, see :mod:`relayq_core.db.admin`).

A job's idempotency key lives in its ledger row, so keys are kept exactly as long as the job's
record: a re-submit within the retention returns the first job; after it, the key is free again.
Only finished jobs (succeeded or dead-lettered) are purged, oldest first, in small batches.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import Field

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.logging import get_logger
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
