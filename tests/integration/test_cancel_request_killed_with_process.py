"""A known limit (strict xfail): the kill that follows an unfinished cancel request does not
stop the statement.

316d104 makes ``Attempt.quiesce`` wait (half the kill grace) for asyncpg's ``Connection._cancel``
task, because "until it lands, the server runs the statement on". When opening a connection to
that server is slow (the very case of tests/integration/test_cancel_request_not_awaited.py, whose
stall of 4 s is far above grace/2), the wait gives up, ``must_kill`` is set and the process is
killed once the retry is recorded. That test passes only because its ``Kills`` counts the kill.

A real kill does not stop a statement running on the server: PostgreSQL notices a vanished
client only between statements (the handler's own connection has no
client_connection_check_interval), and the kill also ends the cancel request that was the only
thing on its way to stop it. Here ``Kills`` does what the kill does to the outside world: the
process's sockets close, and its connection still being opened never reaches the server. The
retry then runs while attempt 1's downstream statement still runs: two attempts in flight.

Found by the fifth hostile review. No worker can fix this for a system it does not own, any more
than it can recall an HTTP request already sent: what a handler started on another server may
finish there after its attempt ends. docs/retries.md says so, and why downstream writes carry the
job's idempotency key. The control (no stall) must pass; the stalled case is expected to fail, and
the xfail is strict, so a change that makes it pass is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from tests.integration.delivery_support import SHORT_LIMITS, new_job, quick_policy
from tests.support.pg_proxy import Proxy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import Retry, handle
from worker_svc.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


@pytest.mark.parametrize(
    "stall",
    [
        0.0,
        pytest.param(
            30.0,
            marks=pytest.mark.xfail(
                strict=True,
                reason="a statement on a handler's own connection to another server, whose cancel "
                "request cannot reach it before the kill, runs on there (docs/retries.md)",
            ),
        ),
    ],
    ids=["control-no-stall", "stalled-connect"],
)
async def test_a_killed_attempts_downstream_statement_is_over_before_the_retry(
    database_url: str, observer: asyncpg.Connection, stall: float
) -> None:
    proxy = Proxy(database_url)
    await proxy.start()
    downstream = await asyncpg.connect(proxy.url)  # the handler's own downstream database
    downstream_pid = downstream.get_server_pid()
    loop = asyncio.get_running_loop()
    kills: list[float] = []

    def die() -> None:  # what SIGKILL does to the world outside the process
        proxy.drop_pending()  # a connection still being opened never gets through
        downstream.terminate()  # open sockets close

    def kill() -> None:
        kills.append(time.monotonic())
        if threading.current_thread() is threading.main_thread():
            die()
        else:
            loop.call_soon_threadsafe(die)

    limits = SHORT_LIMITS
    runtime = Runtime(database_url, limits, kill=kill)
    other = Runtime(database_url, limits, kill=lambda: None)
    policy = quick_policy(0.3)
    seen_by_attempt_2: list[Any] = []

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        if ctx.attempt == 1:
            proxy.delay = stall  # opening a connection downstream now stalls (a failover)
            await downstream.execute("SELECT pg_sleep(4)")  # a slow downstream write
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
        await asyncio.sleep(decision.countdown + 0.05)  # the retry message arrives when due
        await handle(other, LEDGER, delivery, sdk_handler, policy)
    finally:
        await runtime.close()
        await other.close()
        await observer.execute("SELECT pg_cancel_backend($1)", downstream_pid)
        downstream.terminate()
        with contextlib.suppress(Exception):
            await proxy.close()
    # The promise: attempt 1's work is over before attempt 2 runs.
    assert seen_by_attempt_2 == [None], (kills, run.failure, seen_by_attempt_2)
