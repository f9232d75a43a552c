"""An attempt's statement cut off by its time limit goes on running downstream beside the retry
while asyncpg's cancel request is still on its way (found by the fourth hostile
review; failed before the fix).

``Attempt.quiesce`` leaves asyncpg's ``Connection._cancel`` task alone (e917ce0 narrowed the
exemption to it) and leaves it out of the wait as well: the handler's own task ends with
``CancelledError`` at once, asyncpg has only *begun* cancelling the statement (a new connection
to the server, the CancelRequest, the server closing it), and the attempt is declared quiet:
no ``must_kill``, the retry is recorded. Until the cancel request lands, PostgreSQL runs the
statement on. When opening a connection to that server is slow (a failover, a connection storm:
the very case of test_kill_before_lease_ends.py), the retry starts while attempt 1's statement
is still running downstream: two attempts in flight, as in test_shielded_statement.py, but
with a plain ``await conn.execute(...)``.

Here the handler's downstream connection goes through a proxy whose new connections are
forwarded only after 4 s (the open connection is unaffected).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, Kills, new_job, quick_policy
from tests.support.pg_proxy import Proxy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import Retry, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


async def test_a_cancelled_downstream_statement_is_over_before_the_retry(
    database_url: str, observer: asyncpg.Connection
) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    via_proxy = proxy.url

    kills = Kills()
    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=kills)
    other = Runtime(database_url, limits, kill=Kills())
    policy = quick_policy(0.3)
    # The handler's own connection to a downstream database (here: the same server).
    downstream = await asyncpg.connect(via_proxy)
    downstream_pid = downstream.get_server_pid()
    seen_by_attempt_2: list[Any] = []
    stalled_at: list[float] = []
    stall = 4.0  # 0 makes the control run: no stalled cancel request, and it passes

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        if ctx.attempt == 1:
            proxy.delay = stall  # from now on, opening a connection downstream stalls for 4 s
            stalled_at.append(time.monotonic())
            await downstream.execute("SELECT pg_sleep(2.5)")  # a slow downstream write
            return {"wrote": True}
        seen_by_attempt_2.append(
            await observer.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                downstream_pid,
            )
        )
        return {"wrote": True}

    delivery = await new_job(observer)
    try:
        decision, run = await handle(runtime, LEDGER, delivery, sdk_handler, policy)
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
        if stalled_at:  # let the stalled cancel request through before the proxy closes
            await asyncio.sleep(max(0.0, stalled_at[0] + stall + 0.3 - time.monotonic()))
        with contextlib.suppress(Exception):
            await proxy.close()
    detail = (killed_after_attempt_1, run.failure, seen_by_attempt_2)
    # The promise: attempt 1's work ends with it, or its process is killed before the retry.
    assert killed_after_attempt_1 == 1 or seen_by_attempt_2 == [None], detail
