"""A handler's own read-only transaction is its failure, not an outage (found by the sixth
hostile review; failed before the fix).

eade232 put ``ReadOnlySQLTransactionError`` in UNAVAILABLE_ERRORS. The runner applies that
tuple by type to the COMMIT side of a success (runner.py ``_run_claimed``: ``ledger.complete``
and ``transaction.commit()`` on the handler's own transaction). A handler that made its own
transaction read-only (``SET TRANSACTION READ ONLY``: a report that only reads) can never have
its success recorded: that is the handler's failure ("The handler's transaction could not
commit ...: its failure", runner.py; docs/retries.md "Where a failure came from decides what it
is, not its type"), retried with backoff and dead-lettered ``retries_exhausted`` with its error.

Since eade232 it is an *outage* instead: each attempt ``Interrupted`` (re-run 2 s later, no
backoff, recorded ``interrupted`` / ``DatabaseUnavailable``), after max_interruptions each one a
worker loss, and the job ends as a *poison* dead letter ("the job's worker died ..."), the real
error recorded nowhere. Passes at 992352c (before eade232).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from relayq_core.retry import RetryPolicy
from tests.integration.delivery_support import new_job
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import Deferred, Delivery, Interrupted, Reason, Retry, handle
from worker_svc.runtime import DeliveryLimits, Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()
POLICY = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, max_retries=2, jitter=0.0)


async def read_only_report(ctx: JobContext, payload: JsonObject) -> Any:
    db = await ctx.db()
    await db.execute("SET TRANSACTION READ ONLY")  # the handler only reads
    return {"rows": await db.fetchval("SELECT count(*) FROM relayq_jobs")}


async def test_a_handlers_read_only_transaction_is_its_failure_not_an_outage(
    database_url: str, observer: asyncpg.Connection
) -> None:
    runtime = Runtime(database_url, DeliveryLimits(lock_wait_seconds=0.5))
    delivery = await new_job(observer)
    seen: list[str] = []
    try:
        current: Delivery = delivery
        for _ in range(20):  # what worker_svc.execute does with each outcome
            try:
                decision, _ = await handle(runtime, LEDGER, current, read_only_report, POLICY)
            except Interrupted as exc:
                seen.append("Interrupted")
                await runtime.discard_connection()
                current = Delivery(**{**current.__dict__, "resuming": exc.attempt})
                continue
            except Deferred as exc:
                await asyncio.sleep(exc.countdown or 0.1)
                continue
            current = Delivery(**{**current.__dict__, "resuming": None})
            if isinstance(decision, Retry):
                seen.append("Retry")
                await asyncio.sleep(decision.countdown)
                continue
            seen.append(f"{type(decision).__name__}:{getattr(decision, 'reason', None)}")
            break
    finally:
        await runtime.close()
    job = await LEDGER.get_job(observer, delivery.job_id)
    assert job is not None
    attempts = [(a.outcome, a.error_type) for a in job.attempts]
    # The handler's failure: retried under the policy, then dead-lettered with its own error.
    assert seen == ["Retry", "Retry", f"DeadLetter:{Reason.RETRIES_EXHAUSTED}"], (seen, attempts)
    assert attempts == [("failed", "ReadOnlySQLTransactionError")] * 3, attempts
