"""A success that cannot commit becomes a failed attempt, retried, while the work the handler
left running was never waited for nor killed: two attempts in flight (found by the fourth
hostile review; failed before the fix).

On success ``_run_claimed`` calls ``attempt.quiesce(wait=False)``: leftover tasks are cancelled
but not awaited, the handler's threads are not looked at, ``must_kill`` stays False and the
supervisor is disarmed (``handler_done``). If the success then cannot be recorded (the handler's
transaction fails to commit: a deferred constraint, a serialization failure, a statement it left
failed, all "its failure" per runner.py), the attempt is recorded ``failed`` and retried; nothing
ever checks the work it left behind, so the retry runs beside it. docs/retries.md: "When an
attempt ends other than in success, its tasks are cancelled and the runner waits up to half the
kill grace for them and for its threads; what still runs then [...] the process is killed".
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, InFlight, Kills, new_job, quick_policy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import Retry, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_success_that_cannot_commit_does_not_leave_its_work_beside_the_retry(
    database_url: str, observer: asyncpg.Connection
) -> None:
    kills = Kills()
    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=kills)
    other = Runtime(database_url, limits, kill=Kills())
    policy = quick_policy(5.0)
    work = InFlight()  # each attempt's requests in flight

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        if ctx.attempt > 1:
            await work.brief(0.1)
            return {"sent": True}
        db = await ctx.db()
        # The handler's own rows, under a constraint checked at commit.
        await db.execute(
            "CREATE TEMP TABLE effect_effect (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
            " ON COMMIT DROP"
        )
        await db.execute("INSERT INTO effect_effect VALUES (1), (1)")
        # A hedged request: two replicas asked, the first answer is taken.
        fast = asyncio.ensure_future(asyncio.to_thread(work.blocking, 0.05))
        slow = asyncio.ensure_future(asyncio.to_thread(work.blocking, 2.5))
        await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        return {"sent": True}

    delivery = await new_job(observer)
    try:
        decision, run = await handle(runtime, LEDGER, delivery, sdk_handler, policy)
        assert isinstance(decision, Retry), (decision, run)
        killed_after_attempt_1 = kills.count
        await asyncio.sleep(decision.countdown + 0.05)  # the retry message arrives when due
        await handle(other, LEDGER, delivery, sdk_handler, policy)
    finally:
        await runtime.close()
        await other.close()
        await work.settled()
    overlaps = work.beside_the_last()
    detail = (killed_after_attempt_1, run.failure, work.intervals)
    # The promise: attempt 1's work ends with it, or its process is killed before the retry.
    assert killed_after_attempt_1 == 1 or overlaps == [], detail
