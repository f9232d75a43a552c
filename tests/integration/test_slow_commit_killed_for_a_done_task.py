"""A slow COMMIT of a clean success is not killed for a task that ended at its cancellation
(found by the sixth hostile review; failed before the fix).

98a4b7a: a success that left *any* task keeps the lease kill armed while its outcome is
recorded (``work_left``), and a slow but healthy COMMIT of the handler's transaction is then
killed, turning a clean success into a worker loss (and, the COMMIT being as slow on every
attempt, a poison dead letter after max_worker_losses) for a job that succeeds every time.

Why the lease "runs out": ``relayq_complete`` runs inside the handler's transaction, so the job's
row stays locked until the COMMIT ends, and the supervisor's ``renew_lease`` (an UPDATE of that
row) waits on it; its calls time out and ``kill_at`` (5/6 of the lease after the last renewal)
comes while the delivery's session still holds the job's lock (no other delivery can take the
job: the kill protects nothing). ``work_left`` is computed right after ``cancel()``, so a task
that ends at its cancellation (a fire-and-forget ``asyncio.sleep``, a heartbeat loop) counts,
and it is never looked at again. The control (no leftover task) is not killed; both pass at
98a4b7a^. Here the deferred check takes 4 s against a 3 s lease; with the default 15 s lease
any COMMIT over about 7.5-12.5 s (deferred FK checks of a large batch, say) does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, Kills, new_job, quick_policy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


@pytest.mark.parametrize("leftover", [False, True], ids=["control-no-task", "done-soon-task"])
async def test_a_slow_commit_of_a_clean_success_is_not_killed(
    database_url: str, observer: asyncpg.Connection, leftover: bool
) -> None:
    kills = Kills(slow=0.5)  # a real kill happens once
    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=kills)
    policy = quick_policy(10.0)

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        db = await ctx.db()
        # The handler's rows, under a check deferred to COMMIT that takes 4 s and passes.
        await db.execute(
            "CREATE TEMP TABLE batch_rows (k int);"
            "CREATE FUNCTION pg_temp.batch_check() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(4); RETURN NULL; END $$;"
            "CREATE CONSTRAINT TRIGGER batch_check AFTER INSERT ON batch_rows"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.batch_check();"
            "INSERT INTO batch_rows VALUES (1)"
        )
        if leftover:
            asyncio.ensure_future(asyncio.sleep(30))  # ends the moment it is cancelled
        return {"rows": 1}

    delivery = await new_job(observer)
    try:
        await handle(runtime, LEDGER, delivery, sdk_handler, policy)
    finally:
        await runtime.close()
    state = await observer.fetchval(
        "SELECT state FROM relayq_jobs WHERE job_id = $1", delivery.job_id
    )
    assert state == "succeeded"
    # A real kill (SIGKILL) would have ended the COMMIT: the success rolled back, a worker loss.
    assert kills.count == 0, "killed during the COMMIT of a clean success"


async def test_what_that_kill_does_to_the_success(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """The same, the kill doing what SIGKILL does to the outside world (the process's sockets
    close): the COMMIT never completes, and the success the handler reached is not recorded."""
    limits = SHORT_LIMITS
    loop = asyncio.get_running_loop()
    killed: list[bool] = []

    def kill() -> None:
        if not killed:
            killed.append(True)
            conn = runtime._conn  # the delivery's connection, mid-COMMIT
            if conn is not None:
                loop.call_soon_threadsafe(conn.terminate)

    runtime = Runtime(database_url, limits, kill=kill)
    policy = quick_policy(10.0)

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        db = await ctx.db()
        await db.execute(
            "CREATE TEMP TABLE batch_rows (k int);"
            "CREATE FUNCTION pg_temp.batch_check() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(4); RETURN NULL; END $$;"
            "CREATE CONSTRAINT TRIGGER batch_check AFTER INSERT ON batch_rows"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.batch_check();"
            "INSERT INTO batch_rows VALUES (1)"
        )
        asyncio.ensure_future(asyncio.sleep(30))  # ends the moment it is cancelled
        return {"rows": 1}

    delivery = await new_job(observer)
    try:
        with contextlib.suppress(Exception):  # a real process would be gone by now
            await handle(runtime, LEDGER, delivery, sdk_handler, policy)
    finally:
        await runtime.close()
    await asyncio.sleep(5)  # the server notices the vanished client, ends the COMMIT
    state = await observer.fetchval(
        "SELECT state FROM relayq_jobs WHERE job_id = $1", delivery.job_id
    )
    assert (state, killed) == ("succeeded", []), (state, killed)
