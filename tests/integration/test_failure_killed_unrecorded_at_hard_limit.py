"""A timed-out attempt that left work running is killed at time limit + grace *while its
failure is being recorded*, and the failure is lost: the job comes back as a worker loss
(found by the seventh hostile review; failed before the fix).

39735f4 arms a kill "without recording" at time limit + grace whenever ``handler_done and
work_left``, meant for a success's leftovers. But the failure path sets ``work_left`` too
(``must_kill``: the leftover outlived half the grace), and it reaches ``handler_returned`` at
time limit + grace/2 (soft timeout, then quiesce's grace/2). Recording the failure then has only
the other grace/2: here a fresh connection for it (``end_transaction(cut=True)``, after the
handler was cut mid-transaction) that is slow to open (98a4b7a's own example). Before, only the
lease kill was armed, the failure landed (``timed_out``, retried with backoff) and
``kill_if_busy`` killed after it. Now the SIGKILL comes first: nothing recorded, the job stays
``running`` until its lease runs out and is taken over as a *worker loss*: not counted against
the retry budget, re-run without backoff, and after max_worker_losses dead-lettered as poison
("the worker died") with the real error (the time limit) recorded nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, new_job, quick_policy
from tests.support.pg_proxy import Proxy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_timed_out_attempts_failure_is_recorded_before_any_kill(
    database_url: str, observer: asyncpg.Connection
) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    loop = asyncio.get_running_loop()
    killed: list[str] = []

    def sigkill() -> None:
        # What SIGKILL does to the outside world: the process's pending connects die, it
        # opens nothing more (the supervisor's own connection would die too; it is not used).
        if not killed:
            killed.append("killed")

            def die() -> None:
                proxy.drop_pending()
                proxy._closed = True

            loop.call_soon_threadsafe(die)
        time.sleep(0.2)  # a real kill happens once: keep the supervisor from spinning

    limits = SHORT_LIMITS  # lease 3 s, grace 1 s
    runtime = Runtime(proxy.url, limits, kill=sigkill)
    policy = quick_policy(0.3)  # hard_at = 1.3 s; handler_returned at ~0.8 s
    done = asyncio.Event()

    async def stubborn() -> None:  # a heartbeat that swallows its cancellation
        while not done.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    async def handler(ctx: JobContext, payload: JsonObject) -> Any:
        db = await ctx.db()
        await db.execute("SELECT 1")
        asyncio.ensure_future(stubborn())
        try:
            await asyncio.sleep(30)  # cut by its 0.3 s time limit
        finally:
            proxy.delay_next = 1.0  # the fresh connection the failure is recorded on is slow
        return None

    delivery = await new_job(observer)
    try:
        with contextlib.suppress(Exception):  # a real process is gone after the kill
            await handle(runtime, LEDGER, delivery, handler, policy)
    finally:
        done.set()
        await runtime.close()
        await proxy.close()
    job = await LEDGER.get_job(observer, delivery.job_id)
    assert job is not None
    attempts = [(a.outcome, a.error_type) for a in job.attempts]
    # The time limit is the attempt's failure: recorded (retried with backoff), then the kill.
    assert (job.state.value, attempts) == ("retrying", [("timed_out", "JobTimeout")]), (
        job.state.value,
        attempts,
        killed,
    )
