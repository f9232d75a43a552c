"""A *failed* attempt whose leftover work blocks the event loop before the failure is recorded
is never killed: the job stays ``running`` for good (found by the eighth hostile review; failed
before the fix: the supervisor now kills when the loop stops answering its pings).

ed0dc4f stops the supervisor's unrecorded kill at time limit + grace for work a failure left
(``left_by_success`` False): "the runner records, then kills (kill_if_busy)". That holds only
while the runner's loop runs. A leftover task that swallowed its cancellation and then blocks
the loop (a synchronous call that hangs) while the runner is still recording (here: during the
rollback of the handler's transaction, the statement before ``settle``) leaves the runner unable
to record *or* to kill. The only kill still armed is the lease kill, and it never comes: the
supervisor keeps renewing the lease from its own thread, since the delivery's session still
holds the job's lock. Before ed0dc4f, ``work_left`` armed the kill at time limit + grace; the
job came back as a worker loss. Now it is stuck ``running`` (lease renewed for ever), no retry,
no dead letter: the failure never ends visible.
"""

from __future__ import annotations

import asyncio
import threading
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
#: How long the leftover blocks the loop: well past time limit + grace (1.3 s) and two leases.
BLOCK_SECONDS = 8.0


@pytest.mark.parametrize("leftover", ["task", "callback"])
async def test_failed_attempts_leftover_blocking_the_loop_is_still_killed(
    database_url: str, observer: asyncpg.Connection, leftover: str
) -> None:
    """``task``: a task that swallows its cancellation (quiesce sees it: work left). ``callback``:
    a plain ``call_soon`` callback, which no look at the tasks can see (ninth review)."""
    kills: list[float] = []

    def kill() -> None:  # stands in for SIGKILL (called from the supervisor's thread)
        kills.append(time.monotonic())
        time.sleep(0.2)

    runtime = Runtime(database_url, SHORT_LIMITS, kill=kill)  # lease 3 s, grace 1 s
    policy = quick_policy(0.3)  # time limit + grace = 1.3 s after the handler started
    delivery = await new_job(observer)
    seen: dict[str, Any] = {}
    started = time.monotonic()

    def peek_from_another_thread() -> None:
        async def read() -> None:
            conn = await asyncpg.connect(database_url)
            try:
                row = await conn.fetchrow(
                    "SELECT state, lease_until > clock_timestamp() AS leased,"
                    " extract(epoch FROM lease_until - clock_timestamp()) AS lease_left"
                    " FROM relayq_jobs WHERE job_id = $1",
                    delivery.job_id,
                )
                seen.update(dict(row) if row else {})
            finally:
                await conn.close()

        asyncio.run(read())

    def block_the_loop() -> None:  # a synchronous call that hangs (nothing kills it but SIGKILL)
        until = time.monotonic() + BLOCK_SECONDS
        peeked = False
        while time.monotonic() < until and not kills:
            if not peeked and time.monotonic() > until - 2.0:
                peeked = True
                t = threading.Thread(target=peek_from_another_thread)
                t.start()
                t.join(5)
                seen["at"] = round(time.monotonic() - started, 2)
            time.sleep(0.05)

    async def stubborn(conn: asyncpg.Connection) -> None:
        # A leftover that swallows its cancellation and, while the runner records the failure
        # (its first statement after quiesce: the rollback of the handler's transaction), makes a
        # blocking call.
        cancelled = False
        while True:
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                cancelled = True
            # runtime.attempt None: quiesce is over and the runner has gone on to record (its
            # rollback of the handler's transaction is in flight, nothing settled yet).
            if cancelled and runtime.attempt is None:
                seen["in_transaction_when_blocked"] = conn.is_in_transaction()
                block_the_loop()
                return

    def unseen_callback() -> None:  # blocks once the runner records, like stubborn
        if runtime.attempt is None:
            block_the_loop()
        else:
            asyncio.get_running_loop().call_soon(unseen_callback)

    async def handler(ctx: JobContext, payload: JsonObject) -> Any:
        db = await ctx.db()
        await db.execute("SELECT 1")
        if leftover == "task":
            asyncio.ensure_future(stubborn(db))
        else:
            asyncio.get_running_loop().call_soon(unseen_callback)
        await asyncio.sleep(0.01)  # the leftover is running
        raise ValueError("the handler's failure")

    try:
        await handle(runtime, LEDGER, delivery, handler, policy)
    except Exception as exc:
        seen["handle_raised"] = repr(exc)
    finally:
        await runtime.close()
    # The supervisor must end the process while the loop is blocked (time limit + grace), as it
    # did before ed0dc4f; otherwise nothing ever will and the job stays running, lease renewed.
    first_kill = round(kills[0] - started, 2) if kills else None
    assert first_kill is not None and first_kill < BLOCK_SECONDS - 2.5, (
        f"no kill while the loop was blocked; first kill at {first_kill}; "
        f"the ledger meanwhile: {seen}"
    )
