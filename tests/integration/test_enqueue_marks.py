"""``enqueued_at`` is written after the answer, in batches, and never lost on shutdown."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ingest_svc.marks import EnqueueMarks
from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.jobs import JobSpec
from tests.conftest import Ingest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def enqueued(pool: Any, job_ids: list[str]) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM relayq_jobs WHERE job_id = ANY($1::text[])"
            " AND enqueued_at IS NOT NULL",
            job_ids,
        )
    )


async def recorded_jobs(pool: Any, count: int) -> list[str]:
    """``count`` jobs in the ledger, never published; their ids."""
    specs = [
        JobSpec(f"mark-{uuid.uuid4()}", f"mark-{uuid.uuid4()}", "demo.echo", "default", {})
        for _ in range(count)
    ]
    await LEDGER.insert_jobs(pool, specs)
    return [s.job_id for s in specs]


async def test_submitted_jobs_are_marked_within_the_interval(ingest: Ingest) -> None:
    from tests.integration.test_idempotency import request

    replies = await asyncio.gather(
        *(ingest.stub.SubmitJob(request("demo.echo", {"n": n})) for n in range(20))
    )
    ids = [r.job_id for r in replies]
    deadline = time.monotonic() + 5
    while await enqueued(ingest.jobs._pool, ids) < len(ids):
        assert time.monotonic() < deadline, "marks not written within 5 s"
        await asyncio.sleep(0.02)


async def test_close_writes_what_is_pending_in_one_statement(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    ids = await recorded_jobs(pool, 300)
    marks = EnqueueMarks(pool, LEDGER, interval=3600)  # only close() writes
    try:
        marks.add(ids)
        await asyncio.sleep(0.05)
        assert marks.pending == 300 and await enqueued(pool, ids) == 0
        await marks.close()
        assert marks.pending == 0 and await enqueued(pool, ids) == 300
    finally:
        await pool.close()


class FlakyLedger(JobLedger):
    """The real ledger behind a connection that fails the first ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[int] = []

    async def mark_enqueued(self, db: Any, job_ids: Any) -> None:
        self.calls.append(len(job_ids))
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("the ledger went away")
        await super().mark_enqueued(db, job_ids)


async def test_marks_survive_an_unreachable_ledger(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    ids = await recorded_jobs(pool, 10)
    ledger = FlakyLedger(failures=2)
    marks = EnqueueMarks(pool, ledger, interval=0.01)
    try:
        marks.add(ids[:5])
        await asyncio.sleep(0.015)
        marks.add(ids[5:])
        deadline = time.monotonic() + 5
        while await enqueued(pool, ids) < 10:
            assert time.monotonic() < deadline, ledger.calls
            await asyncio.sleep(0.01)
        assert ledger.failures == 0 and marks.pending == 0
    finally:
        await marks.close()
        await pool.close()
