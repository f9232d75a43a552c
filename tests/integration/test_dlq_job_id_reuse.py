"""KNOWN LIMIT, tracked here (strict xfail: this test fails the suite the day it passes, so the
marker goes with the fix). Found by the second hostile review; outside issue 13's scope, and in
docs/dlq.md.

After the ledger's retention purge a job id may be used again
(docs/idempotency.md: "After the purge the key is free: a submit with it creates a new job"),
and the new job's attempts start again at 1. dlq-svc keys a dead letter's history on
``(job_id, final_attempt)`` and keeps one entry per ``job_id``: the new job's dead-lettering at
an attempt number the old one already reached is taken for a late or repeated report of the
old one ("history only", or a plain duplicate). The worker is told it is stored and marks the
job ``dead_lettered``; the DLQ shows no active entry, and what it keeps is the old job's
payload and error. A failure that does not end visible (promise 3), and a later replay of the
entry would re-open the new job with the old entry's audit.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from dlq_svc.model import Status
from dlq_svc.store import PostgresStore
from relayq_core.db.ledger import create_pool
from relayq_core.deadletter import DeadLetterReport, Reason

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def report(
    job_id: str, key: str, payload: dict[str, object], final: int, error: str
) -> DeadLetterReport:
    now = datetime.now(UTC)
    return DeadLetterReport(
        job_id=job_id,
        idempotency_key=key,
        task="demo.fail",
        queue="default",
        payload=payload,
        reason=Reason.RETRIES_EXHAUSTED,
        error_type="JobError",
        error_message=error,
        traceback="",
        attempts=[],
        trace_id="",
        first_failed_at=now,
        dead_lettered_at=now,
        final_attempt=final,
        worker="w",
    )


@pytest.mark.xfail(
    strict=True,
    reason="dlq-svc keys a dead-lettering on (job_id, final_attempt): a job id reused after the "
    "ledger's purge restarts at attempt 1 and is taken for a late report of the old job",
)
async def test_a_reused_job_ids_dead_letter_is_visible(
    database_url: str, observer: asyncpg.Connection
) -> None:
    pool = await create_pool(database_url, max_size=2)
    store = PostgresStore(pool)
    job_id = f"invoice-{datetime.now(UTC).timestamp()}"
    try:
        # Last month: the job failed 6 times; the operator looked and dropped the entry.
        await store.report(report(job_id, job_id, {"amount": 10}, 6, "old failure"))
        await store.drop([job_id], "oncall", "customer cancelled")
        # The ledger purged the job; the client submits "invoice-…" again, a new job, which is
        # dead-lettered at its 3rd attempt (a permanent error, or a smaller retry budget).
        outcome = await store.report(report(job_id, job_id, {"amount": 99}, 3, "new failure"))
        entry = await store.get(job_id)
    finally:
        await pool.close()
    assert entry is not None
    detail = (outcome.duplicate, entry.status, entry.payload, entry.error_message)
    assert entry.status is Status.ACTIVE and entry.error_message == "new failure", detail
