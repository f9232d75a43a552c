"""The same gap as test_success_not_committed_leaves_work_running.py, through the shortcut that
skips the lease (found by the fourth
hostile review; failed before the fix).

A handler succeeded, leaving a thread running (a hedged request); its transaction's COMMIT is
cut off by the loss of the delivery's connection. ``_run_claimed`` raises ``Interrupted`` at
once: the threads were never waited for (``quiesce(wait=False)``) and nothing kills the process.
execute.py re-publishes the message ``resuming`` the attempt 2 s later, and the claim lets a
resuming delivery take the job over without waiting for the lease, which docs/reliability.md
allows only because the message "is published only after the handler and whatever it handed to
threads have stopped". Attempt 2 then runs beside attempt 1's request: two attempts in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import InFlight, Kills, new_job, quick_policy
from worker_svc.context import JobContext, JsonObject
from worker_svc.execute import INFRA_RETRY_SECONDS
from worker_svc.runner import Interrupted, handle
from worker_svc.runtime import DeliveryLimits, Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_success_cut_off_at_commit_is_not_resumed_beside_its_work(
    database_url: str, observer: asyncpg.Connection
) -> None:
    kills = Kills()
    limits = DeliveryLimits(lock_wait_seconds=0.5, lease_seconds=10.0, kill_grace_seconds=1.0)
    runtime = Runtime(database_url, limits, kill=kills)
    other = Runtime(database_url, limits, kill=Kills())
    policy = quick_policy(5.0)
    work = InFlight()  # each attempt's requests in flight
    delivery_pid: list[int] = []

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        if ctx.attempt > 1:
            await work.brief(0.1)
            return {"sent": True}
        db = await ctx.db()
        delivery_pid.append(db.get_server_pid())
        # The handler's own rows; a deferred check makes its COMMIT take a moment.
        await db.execute(
            "CREATE TEMP TABLE effect_rows (k int) ON COMMIT DROP;"
            "CREATE FUNCTION pg_temp.effect_check() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;"
            "CREATE CONSTRAINT TRIGGER effect_check AFTER INSERT ON effect_rows"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.effect_check();"
            "INSERT INTO effect_rows VALUES (1)"
        )
        # A hedged request: two replicas asked, the first answer is taken.
        fast = asyncio.ensure_future(asyncio.to_thread(work.blocking, 0.05))
        slow = asyncio.ensure_future(asyncio.to_thread(work.blocking, 5.0))
        await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        return {"sent": True}

    async def cut_at_commit() -> None:  # a PostgreSQL failover, as the COMMIT runs
        while True:
            if delivery_pid:
                query = await observer.fetchval(
                    "SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                    delivery_pid[0],
                )
                if query and query.strip().upper().startswith("COMMIT"):
                    await observer.execute("SELECT pg_terminate_backend($1)", delivery_pid[0])
                    return
            await asyncio.sleep(0.02)

    delivery = await new_job(observer)
    cutter = asyncio.create_task(cut_at_commit())
    interrupted: list[int] = []
    try:
        try:
            await handle(runtime, LEDGER, delivery, sdk_handler, policy)
        except Interrupted as exc:
            interrupted.append(exc.attempt)
        assert interrupted == [1], "the COMMIT was not cut off"
        killed_after_attempt_1 = kills.count
        # execute.py: the message comes back INFRA_RETRY_SECONDS later, resuming attempt 1.
        await asyncio.sleep(INFRA_RETRY_SECONDS)
        resuming = dataclasses.replace(delivery, resuming=interrupted[0])
        await handle(other, LEDGER, resuming, sdk_handler, policy)
    finally:
        cutter.cancel()
        await runtime.close()
        await other.close()
        await work.settled()
    overlaps = work.beside_the_last()
    detail = (killed_after_attempt_1, work.intervals)
    # The promise: attempt 1's work ends with it, or its process is killed before anyone resumes.
    assert killed_after_attempt_1 == 1 or overlaps == [], detail
