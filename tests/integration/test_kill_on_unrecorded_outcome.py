"""Work a handler left running must be killed even when its outcome cannot be recorded, or the
attempt that follows runs beside it (found by the second hostile review; failed before the fix:
``handle`` now kills on every exit once the attempt's work is known to outlive it).

What happened before:

``_Attempt.quiesce`` sets ``must_kill`` when a failed or timed-out handler's offloaded work is
still running after half the kill grace; ``handle`` honours it only after ``settle`` succeeded
(and ``kill_if_busy`` only in the two "connection closed under the handler" branches). When
recording the outcome fails instead (the delivery's connection dies during the quiesce wait, a
PostgreSQL restart or failover; the fresh connection of ``end_transaction`` cannot be opened;
``settle`` raises ``AttemptSuperseded`` or an unexpected error), ``handle`` raises
``Interrupted``/``Deferred``/the error without killing. ``worker_svc.execute`` re-publishes the
message 2 s later with ``resuming=<attempt>``, and the claim lets a resuming delivery take the
job over *before* the lease has run out (docs/reliability.md: "it is published only after the
handler and whatever it handed to threads have stopped, which is why it may take the job over
before the lease runs out"). The stray thread is still sending its request while the next
attempt sends its own: two attempts of one job in flight at once (promise 2).
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
from worker_svc.runner import Delivery, Interrupted, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_work_left_running_is_killed_even_when_the_outcome_cannot_be_recorded(
    database_url: str, observer: asyncpg.Connection
) -> None:
    kills = Kills()
    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=kills)  # the pool process of attempt 1
    other = Runtime(database_url, limits, kill=Kills())  # another pool process
    policy = quick_policy(0.3)
    intervals: list[list[float]] = []
    pids: list[int] = []

    def blocking_post(seconds: float) -> None:  # requests.post(..., timeout=10), slow receiver
        span = [time.monotonic(), float("inf")]
        intervals.append(span)
        time.sleep(seconds)
        span[1] = time.monotonic()

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        pids.append(ctx._conn.get_server_pid())
        await asyncio.to_thread(blocking_post, 0.2 if ctx.attempt > 1 else 4.0)
        return {"sent": True}

    delivery = await new_job(observer)

    async def postgres_restarts_during_the_quiesce_wait() -> None:
        # t=0.3 the time limit cancels the handler; t=0.3..0.8 the runner waits for its thread.
        await asyncio.sleep(0.55)
        await observer.execute("SELECT pg_terminate_backend($1)", pids[0])

    try:
        restart = asyncio.create_task(postgres_restarts_during_the_quiesce_wait())
        with pytest.raises(Interrupted) as first:
            await handle(runtime, LEDGER, delivery, sdk_handler, policy)
        await restart
        killed_after_attempt_1 = kills.count
        # worker_svc.execute: discard the connection, re-publish with resuming after 2 s.
        await runtime.discard_connection()
        await asyncio.sleep(2.0)
        if killed_after_attempt_1:
            # A real kill would have ended the stray thread with its process.
            while any(s[1] == float("inf") for s in intervals):
                await asyncio.sleep(0.05)
        resumed = Delivery(**{**delivery.__dict__, "resuming": first.value.attempt})
        await handle(other, LEDGER, resumed, sdk_handler, policy)
    finally:
        await runtime.close()
        await other.close()
        while any(s[1] == float("inf") for s in intervals):
            await asyncio.sleep(0.05)
    overlaps = [(a, b) for i, a in enumerate(intervals) for b in intervals[i + 1 :] if b[0] < a[1]]
    detail = (killed_after_attempt_1, intervals)
    # The promise: the process running attempt 1's thread ends before anyone may take over...
    assert killed_after_attempt_1 == 1, detail
    # ... so that never two attempts of one job are in flight at once.
    assert overlaps == [], detail
