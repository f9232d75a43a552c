"""a success whose COMMIT hangs (a silent network) leaves the supervisor disarmed
while the handler's offloaded work runs on past the lease: two attempts in flight.

On success ``_run_claimed`` calls ``attempt.quiesce(wait=False)``: leftover work is neither
waited for nor looked at, and ``handler_done`` disarms the supervisor's kills. 316d104 covers a
success that *fails* to record (the commit raises, the connection is lost); a commit that simply
never answers is not covered: the delivery connection has no timeout, so ``_run_claimed`` never
reaches its ``except``. docs/reliability.md: "a worker cut off by a silent network [...] its
supervisor's renewals fail and it kills its own process before the lease runs out"; here it
does not, because the watch says the handler is done. PostgreSQL drops the dead session (its
tcp_user_timeout, 20 s; here pg_terminate_backend), the transaction rolls back, the lock goes,
the lease runs out and the next delivery (the reconciler re-publishes unheld running jobs) runs
attempt 2 while attempt 1's request is still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, InFlight, new_job, quick_policy
from tests.support.pg_proxy import Proxy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_hung_success_commit_does_not_leave_work_running_past_the_lease(
    database_url: str, observer: asyncpg.Connection
) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    kills: list[float] = []
    limits = SHORT_LIMITS
    runtime = Runtime(proxy.url, limits, kill=lambda: kills.append(time.monotonic()))
    other = Runtime(database_url, limits, kill=lambda: None)  # another worker
    policy = quick_policy(5.0)
    work = InFlight()  # each attempt's requests in flight
    delivery_pid: list[int] = []

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        if ctx.attempt > 1:
            await work.brief(0.1)
            return {"sent": True}
        db = await ctx.db()
        delivery_pid.append(db.get_server_pid())
        await db.execute("SELECT 1")  # the handler's own rows, committed with its success
        # A hedged request: two replicas asked, the first answer is taken.
        fast = asyncio.ensure_future(asyncio.to_thread(work.blocking, 0.05))
        slow = asyncio.ensure_future(asyncio.to_thread(work.blocking, 9.0))
        await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        return {"sent": True}

    proxy.freeze_on = b"COMMIT;\x00"  # the network goes silent as the COMMIT is sent
    delivery = await new_job(observer)
    first = asyncio.create_task(handle(runtime, LEDGER, delivery, sdk_handler, policy))
    try:
        await asyncio.wait_for(proxy.froze.wait(), 5)
        # PostgreSQL gives up on the silent client (tcp_user_timeout): session, transaction and
        # the job's lock go.
        await observer.execute("SELECT pg_terminate_backend($1)", delivery_pid[0])
        while await observer.fetchval(
            "SELECT lease_until > clock_timestamp() FROM relayq_jobs WHERE job_id = $1",
            delivery.job_id,
        ):
            await asyncio.sleep(0.05)
        # The next delivery of the job (the reconciler re-publishes it: running, lock unheld).
        await handle(other, LEDGER, delivery, sdk_handler, policy)
    finally:
        await proxy.close()  # the network returns (as resets): attempt 1's delivery ends
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(first, 10)
        await runtime.close()
        await other.close()
        await work.settled()
    overlaps = work.beside_the_last()
    killed_in_time = [k for k in kills if k < work.last_start]
    # The promise: attempt 1's work ends with it, or its process is killed before attempt 2.
    assert killed_in_time or overlaps == [], (kills, work.intervals)
