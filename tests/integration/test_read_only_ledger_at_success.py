"""A ledger that goes read-only while a success is being recorded turns the attempt into a
worker loss, and two such blips dead-letter a job that succeeds every time as *poison*
(found by the seventh hostile review; failed before the fix).

39735f4 took ``ReadOnlySQLTransactionError`` out of UNAVAILABLE_ERRORS for the whole worker, to
make a handler's own ``SET TRANSACTION READ ONLY`` its failure. But the same type is what the
worker's *own* ledger statements get from a ledger that takes no writes (a failover onto a
replica, ``default_transaction_read_only`` set and reloaded: the outage eade232 describes). A
handler that never calls ``ctx.db()`` has its success recorded by one statement
(``ledger.complete``, a transaction of its own): it now fails read-only, is taken for the
handler's failure, ``settle`` fails read-only too, and the error leaves ``handle`` as neither
Interrupted nor unavailable. worker_svc.execute re-publishes it *without* ``resuming``, so the
next delivery finds the job running, unheld, waits out the lease and counts a worker loss. At
eade232 (the parent) the same blip is ``Interrupted``: resumed at once, not counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import UNAVAILABLE_ERRORS, JobLedger
from relayq_core.retry import RetryPolicy
from tests.integration.delivery_support import SHORT_LIMITS, new_job
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import Deferred, Delivery, Interrupted, Retry, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()
POLICY = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, max_retries=3, jitter=0.0)
BLIPS = 2  # the ledger goes read-only during the first two attempts, briefly


async def _read_only(conn: asyncpg.Connection, on: bool) -> None:
    if on:
        await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    else:
        await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
    await conn.execute("SELECT pg_reload_conf()")
    await asyncio.sleep(0.3)  # every backend has taken the SIGHUP


async def test_a_read_only_blip_at_a_success_is_an_outage_not_a_worker_loss(
    database_url: str, observer: asyncpg.Connection
) -> None:
    runtime = Runtime(database_url, SHORT_LIMITS)
    delivery = await new_job(observer)
    runs: list[int] = []
    seen: list[str] = []

    async def http_handler(ctx: JobContext, payload: JsonObject) -> Any:
        runs.append(ctx.attempt)
        if len(runs) <= BLIPS:
            await _read_only(observer, True)  # the failover happens while it runs
        return {"sent": True}  # its effect is elsewhere (no ctx.db())

    try:
        current: Delivery = delivery
        for _ in range(40):  # what worker_svc.execute does with each outcome
            try:
                decision, _ = await handle(runtime, LEDGER, current, http_handler, POLICY)
            except Interrupted as exc:
                seen.append("Interrupted")
                await _read_only(observer, False)  # the primary is back
                await runtime.discard_connection()
                current = Delivery(**{**current.__dict__, "resuming": exc.attempt})
                continue
            except Deferred as exc:
                await asyncio.sleep(exc.countdown or 0.1)
                continue
            except UNAVAILABLE_ERRORS:
                seen.append("Unavailable")
                await _read_only(observer, False)
                await runtime.discard_connection()
                continue
            except Exception as exc:  # execute: job_delivery_error, re-published as it was
                seen.append(type(exc).__name__)
                await _read_only(observer, False)
                await runtime.discard_connection()
                continue
            current = Delivery(**{**current.__dict__, "resuming": None})
            if isinstance(decision, Retry):
                seen.append("Retry")
                await asyncio.sleep(decision.countdown)
                continue
            seen.append(f"{type(decision).__name__}:{getattr(decision, 'reason', None)}")
            break
    finally:
        await _read_only(observer, False)
        await runtime.close()
    job = await LEDGER.get_job(observer, delivery.job_id)
    assert job is not None
    attempts = [(a.outcome, a.error_type) for a in job.attempts]
    # An outage: each blip resumed (not counted), and the job's next run succeeds.
    assert (job.state.value, job.worker_losses, seen[-1]) == ("succeeded", 0, "Done:None"), (
        job.state.value,
        job.worker_losses,
        seen,
        attempts,
    )
