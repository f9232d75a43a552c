"""a handler that returned well within its time limit is recorded ``timed_out``
("it ignored the cancellation, so its process was killed") by the supervisor, and the failure
that really ended it is recorded nowhere.

316d104: a success that cannot be recorded calls ``quiesce()`` again and, when work is left,
``handler_returned`` sets ``handler_done = False``: the supervisor is re-armed, with its hard
deadline (time limit + grace) counted from the handler's start. A COMMIT is not under the time
limit, so when it takes longer than the time limit plus half the grace (deferred checks) and
then fails, the re-armed watch is already past its hard deadline: the supervisor's next look
records the attempt as a hard timeout, which the runner's own record of the commit's failure
then cannot overwrite (AttemptSuperseded). Whichever writes first wins; here the runner is
slowed by the fresh connection ``end_transaction`` opens after the failed COMMIT (a connection
that is slow to open: the case the re-arming was made for).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import new_job, quick_policy
from tests.support.pg_proxy import Proxy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import handle
from worker_svc.runtime import DeliveryLimits, Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_commit_failure_is_recorded_as_itself_not_as_a_hard_timeout(
    database_url: str, observer: asyncpg.Connection
) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    kills: list[float] = []
    limits = DeliveryLimits(lock_wait_seconds=0.5, lease_seconds=10.0, kill_grace_seconds=1.0)
    runtime = Runtime(proxy.url, limits, kill=lambda: kills.append(time.monotonic()))
    policy = quick_policy(0.3)
    threads: list[list[float]] = []

    def blocking_post(seconds: float) -> None:  # requests.post(...) to a downstream
        span = [time.monotonic(), float("inf")]
        threads.append(span)
        time.sleep(seconds)
        span[1] = time.monotonic()

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        db = await ctx.db()
        # The handler's own rows, under a check deferred to COMMIT (slow, then failing).
        await db.execute(
            "CREATE TEMP TABLE effect_rows (k int);"
            "CREATE FUNCTION pg_temp.effect_check() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(1.2); RAISE EXCEPTION 'effect check failed'; END $$;"
            "CREATE CONSTRAINT TRIGGER effect_check AFTER INSERT ON effect_rows"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.effect_check();"
            "INSERT INTO effect_rows VALUES (1)"
        )
        fast = asyncio.ensure_future(asyncio.to_thread(blocking_post, 0.05))
        slow = asyncio.ensure_future(asyncio.to_thread(blocking_post, 4.0))
        await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        proxy.delay_next = 2.0  # the next connection opened to PostgreSQL is slow (a failover)
        return {"sent": True}  # after ~0.05 s, well within its 0.3 s limit

    delivery = await new_job(observer)
    try:
        with contextlib.suppress(Exception):
            await handle(runtime, LEDGER, delivery, sdk_handler, policy)
    finally:
        await runtime.close()
        with contextlib.suppress(Exception):
            await proxy.close()
        while any(s[1] == float("inf") for s in threads):
            await asyncio.sleep(0.05)
    row = await observer.fetchrow(
        "SELECT outcome, error_type, error_message FROM relayq_job_attempts"
        " WHERE job_id = $1 AND number = 1",
        delivery.job_id,
    )
    assert row is not None
    # The handler returned in time; its COMMIT failed: that failure is what must be recorded.
    assert (row["outcome"], row["error_message"]) == ("failed", "effect check failed"), (
        dict(row),
        kills,
    )
