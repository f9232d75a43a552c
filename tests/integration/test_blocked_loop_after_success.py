"""Once a handler has returned success, the work it left on the event loop is bounded too
(found by the sixth hostile review; failed before the fix, and before 98a4b7a as well).

98a4b7a arms only the *lease* kill after a success that left work (``work_left``), and the hard
time limit "only while the handler runs". But the lease is renewed by the supervisor's own thread
and connection for as long as the delivery's session holds the job's lock, and a loop blocked by
that leftover work (a task that swallows its cancellation and makes a synchronous call: a
``requests.post`` in its cleanup) leaves the session idle in its transaction, lock held. So the
lease is renewed, ``kill_at`` never comes, and the attempt runs on far past its time limit and
its lease; a block that never ends keeps the job ``running`` for ever (no retry, no dead letter,
nothing visible but one stuck pool process). The same block inside the handler is killed at
time limit + grace (tests/integration/test_time_limits.py, demo.hang ``blocking``).
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
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()
BLOCK_SECONDS = 6.0


async def test_work_a_success_left_blocking_the_loop_is_stopped_in_time(
    database_url: str, observer: asyncpg.Connection
) -> None:
    kills: list[float] = []
    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=lambda: kills.append(time.monotonic()))
    policy = quick_policy(0.3)
    returned: list[float] = []

    async def cleanup_on_cancel() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            time.sleep(BLOCK_SECONDS)  # a synchronous cleanup call (requests.post, say)

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        db = await ctx.db()
        await db.execute("SELECT 1")  # its effect, committed with the success
        asyncio.ensure_future(cleanup_on_cancel())
        await asyncio.sleep(0)
        returned.append(time.monotonic())
        return {"ok": True}  # well within its 0.3 s limit

    delivery = await new_job(observer)
    try:
        # After a kill, the stand-in returns and the delivery fails on the session the
        # supervisor ended: a real kill would have ended the process there.
        with contextlib.suppress(Exception):
            await handle(runtime, LEDGER, delivery, sdk_handler, policy)
    finally:
        ended = time.monotonic()
        await runtime.close()
    # Past the time limit + grace (1.3 s), and past a 3 s lease, the attempt is still open and
    # nothing stopped it: the supervisor renewed its lease throughout.
    limit = policy.timeout_seconds + limits.kill_grace_seconds
    assert kills or ended - returned[0] < limit + 1.0, (
        f"attempt ended {ended - returned[0]:.1f} s after the handler returned, no kill"
    )
