"""Work left running is killed before the lease runs out, however long recording the outcome
takes (found by the third hostile review; failed before the fix).

``Attempt.quiesce`` marked the handler done even when its work outlived it (``must_kill``), which
disarmed the supervisor's kills: from then on only the runner killed, after recording. When
recording needs a fresh connection (``end_transaction`` closes the one whose statement was cut
off, releasing the job's lock, so lease renewals stop) and opening it stalls (a failover, a
connection storm: asyncpg's connect timeout is 60 s), the lease ran out and another delivery ran
the next attempt while the first attempt's thread was still sending its request. Now a watch
with work left running stays armed: the supervisor kills before the lease can run out.

Here new connections to PostgreSQL take 4 s to be forwarded (existing ones are unaffected).
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
from worker_svc.runner import Deferred, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


class TimedKills:
    """Stands in for ``kill_this_process``: records when the process would have died."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(time.monotonic())


async def test_work_left_running_is_killed_before_its_lease_can_run_out(
    database_url: str, observer: asyncpg.Connection
) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    via_proxy = proxy.url

    kills = TimedKills()
    limits = SHORT_LIMITS
    runtime = Runtime(via_proxy, limits, kill=kills)  # the pool process of attempt 1
    other = Runtime(database_url, limits, kill=TimedKills())  # another worker
    policy = quick_policy(0.3)
    threads: list[list[float]] = []  # attempt 1's offloaded request
    attempt_2: list[float] = []

    def blocking_post(seconds: float) -> None:  # requests.post(..., timeout=10), slow receiver
        span = [time.monotonic(), float("inf")]
        threads.append(span)
        time.sleep(seconds)
        span[1] = time.monotonic()

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        if ctx.attempt > 1:
            attempt_2.append(time.monotonic())
            return {"sent": True}
        db = await ctx.db()  # the handler writes its own rows in the job's transaction
        await db.execute("SELECT 1")
        proxy.delay = 4.0  # from now on, opening a connection to PostgreSQL stalls for 4 s
        await asyncio.to_thread(blocking_post, 6.0)
        return {"sent": True}

    async def warm_up(ctx: JobContext, payload: JsonObject) -> Any:
        await asyncio.sleep(1.2)  # long enough for a renewal: the supervisor has its connection
        return {}

    await handle(runtime, LEDGER, await new_job(observer), warm_up, policy)
    delivery = await new_job(observer)
    first_outcome: list[str] = []

    async def attempt_1() -> None:
        try:
            decision, _ = await handle(runtime, LEDGER, delivery, sdk_handler, policy)
            first_outcome.append(repr(decision))
        except Exception as exc:  # noqa: BLE001
            first_outcome.append(f"{type(exc).__name__}: {exc}")

    started = time.monotonic()
    first = asyncio.create_task(attempt_1())
    try:
        while not threads and not first.done():  # attempt 1 runs in its process first
            await asyncio.sleep(0.01)
        # A second message of the job (a duplicate, the reconciler's abandoned-delivery rule)
        # is delivered elsewhere, again and again, as the claim defers it.
        while time.monotonic() - started < 7.0 and not attempt_2:
            try:
                await handle(other, LEDGER, delivery, sdk_handler, policy)
            except Deferred:
                await asyncio.sleep(0.2)
        await asyncio.wait_for(first, 10)
    finally:
        await other.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(runtime.close(), 8)
        await proxy.close()
        while any(s[1] == float("inf") for s in threads):
            await asyncio.sleep(0.05)
    # A real kill ends attempt 1's thread with its process.
    thread_end = min([threads[0][1], *kills.at]) if threads else 0.0

    def rel(t: float) -> float:
        return round(t - started, 2)

    detail = {
        "attempt_1_thread": [rel(t) for t in threads[0]] if threads else None,
        "kills_at": [rel(t) for t in kills.at],
        "attempt_2_started": [rel(t) for t in attempt_2],
        "attempt_1_outcome": first_outcome,
    }
    # The promise: the process running attempt 1's thread ends before anyone may take over.
    assert not attempt_2 or attempt_2[0] >= thread_end, detail
