"""A statement a handler shielded in a task of its own ends with its attempt (found by the third
hostile review; failed before the fix).

``Attempt.quiesce`` spared every task whose coroutine came from asyncpg, to leave asyncpg's own
cancel request alone. That also spared a task a handler makes directly of an asyncpg call
(``asyncio.shield(conn.execute(...))`` on a downstream connection of its own): neither cancelled
nor awaited, it never set ``must_kill``, so the retry ran while the first attempt's statement was
still running downstream: two attempts in flight (promise 2). Now only
``Connection._cancel`` is spared.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, Kills, new_job, quick_policy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import Retry, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_shielded_downstream_statement_does_not_outlive_its_attempt(
    database_url: str, observer: asyncpg.Connection
) -> None:
    kills = Kills()
    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=kills)
    other = Runtime(database_url, limits, kill=Kills())
    policy = quick_policy(0.3)
    # The handler's own connection to a downstream database (here: the same server).
    downstream = await asyncpg.connect(database_url)
    downstream_pid = downstream.get_server_pid()
    intervals: list[list[float]] = []
    seen_by_attempt_2: list[Any] = []

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        if ctx.attempt == 1:
            span = [time.monotonic(), float("inf")]
            intervals.append(span)
            # "Do not cut the write off half way": a slow downstream write, shielded.
            write = asyncio.ensure_future(downstream.execute("SELECT pg_sleep(2.5)"))
            write.add_done_callback(lambda _: span.__setitem__(1, time.monotonic()))
            await asyncio.shield(write)
            return {"wrote": True}
        intervals.append([time.monotonic(), time.monotonic() + 0.1])
        seen_by_attempt_2.append(
            await observer.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                downstream_pid,
            )
        )
        await asyncio.sleep(0.1)
        return {"wrote": True}

    delivery = await new_job(observer)
    try:
        decision, _ = await handle(runtime, LEDGER, delivery, sdk_handler, policy)
        assert isinstance(decision, Retry), decision
        killed_after_attempt_1 = kills.count
        await asyncio.sleep(decision.countdown + 0.05)  # the retry message arrives when due
        await handle(other, LEDGER, delivery, sdk_handler, policy)
    finally:
        await runtime.close()
        await other.close()
        await observer.execute("SELECT pg_cancel_backend($1)", downstream_pid)
        await asyncio.sleep(0.1)
        downstream.terminate()
    overlaps = [(a, b) for i, a in enumerate(intervals) for b in intervals[i + 1 :] if b[0] < a[1]]
    detail = (killed_after_attempt_1, intervals, seen_by_attempt_2)
    # The promise: attempt 1's work ends with it, or its process is killed ...
    assert killed_after_attempt_1 == 1 or overlaps == [], detail
    # ... so attempt 2 never runs while attempt 1's downstream statement is still in flight.
    assert seen_by_attempt_2 == [None], detail
