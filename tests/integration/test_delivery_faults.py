"""Failures are classified by where they came from, never by exception type alone.

Each test drives the real delivery protocol (``worker_svc.runner.handle``) against the real
ledger in PostgreSQL, in process, so it can name exactly which exception a handler raised:

- a handler's own I/O errors (timeouts, refused connections, DNS failures, ``requests`` and
  ``httpx`` errors) and a ``statement_timeout`` on its ``ctx.db()`` connection are the
  handler's failure: retried under the policy, then dead-lettered (finding 1);
- a delivery that cannot get the job's row within ``lock_timeout`` leaves no advisory lock
  behind (finding 4);
- a retry's time comes from the database's clock, and a delivery that arrives before it does
  not run the job (finding 6).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
import requests

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.jobs import JobState
from relayq_core.retry import RetryPolicy
from tests.integration.delivery_support import new_job
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import (
    DeadLetter,
    Decision,
    Deferred,
    Delivery,
    Done,
    Handler,
    Reason,
    Retry,
    handle,
)
from worker_svc.runtime import DeliveryLimits, Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()
POLICY = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, max_retries=2)


@pytest_asyncio.fixture(loop_scope="session")
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    rt = Runtime(database_url, DeliveryLimits(lock_wait_seconds=0.5))
    yield rt
    await rt.close()


async def deliver(
    runtime: Runtime, delivery: Delivery, handler: Handler, policy: RetryPolicy = POLICY
) -> Decision:
    """One delivery as the worker makes it, waiting out "not yet" as its message would."""
    while True:
        try:
            decision, _ = await handle(runtime, LEDGER, delivery, handler, policy)
            return decision
        except Deferred as exc:
            assert exc.countdown is not None and exc.countdown < 1, str(exc)
            await asyncio.sleep(exc.countdown)


def raising(make: Callable[[], BaseException]) -> Any:
    async def handler(ctx: JobContext, payload: JsonObject) -> Any:
        raise make()

    return handler


async def asyncio_timeout() -> None:
    async with asyncio.timeout(0.01):
        await asyncio.Event().wait()


async def handler_asyncio_timeout(ctx: JobContext, payload: JsonObject) -> Any:
    await asyncio_timeout()  # the handler's own asyncio.timeout expires: TimeoutError


async def handler_statement_timeout(ctx: JobContext, payload: JsonObject) -> Any:
    db = await ctx.db()
    await db.execute("SET LOCAL statement_timeout = 50")
    await db.execute("SELECT pg_sleep(2)")  # QueryCanceledError, an OperatorInterventionError


HANDLER_FAILURES: dict[str, Any] = {
    "TimeoutError": raising(lambda: TimeoutError("the upstream did not answer")),
    "ConnectionRefusedError": raising(lambda: ConnectionRefusedError(111, "Connection refused")),
    "gaierror": raising(lambda: socket.gaierror(-2, "Name or service not known")),
    "asyncio timeout": handler_asyncio_timeout,
    "requests ConnectionError": raising(lambda: requests.ConnectionError("connection aborted")),
    "httpx ConnectError": raising(lambda: httpx.ConnectError("All connection attempts failed")),
    "statement_timeout": handler_statement_timeout,
}


@pytest.mark.parametrize("kind", sorted(HANDLER_FAILURES))
async def test_a_handlers_io_error_is_its_failure_not_a_database_outage(
    kind: str, runtime: Runtime, observer: asyncpg.Connection
) -> None:
    """Retried under the policy (max_retries=2), then dead-lettered: three attempts, each
    recorded ``failed`` with the handler's error type, never re-run forever as "interrupted"."""
    delivery = await new_job(observer)
    decisions = [
        await deliver(runtime, delivery, HANDLER_FAILURES[kind])
        for _ in range(POLICY.max_retries + 1)
    ]
    assert [type(d) for d in decisions] == [Retry, Retry, DeadLetter]
    last = decisions[-1]
    assert isinstance(last, DeadLetter) and last.reason is Reason.RETRIES_EXHAUSTED
    job = await LEDGER.get_job(observer, delivery.job_id)
    assert job is not None
    assert [a.outcome for a in job.attempts] == ["failed"] * 3
    assert job.worker_losses == 0
    # The worker's own connection is fine: the next job runs on it.
    other = await new_job(observer)
    assert isinstance(await deliver(runtime, other, raising(lambda: ValueError("x"))), Retry)


async def test_a_row_lock_timeout_leaves_no_advisory_lock_behind(
    database_url: str, runtime: Runtime, observer: asyncpg.Connection
) -> None:
    """The claim takes the job's session lock, then waits for its row (FOR UPDATE): when that
    wait times out the session lock must go too, or only this process could ever claim the
    job again (and replays would answer "a worker holds the job")."""
    delivery = await new_job(observer)
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM relayq_jobs WHERE job_id = $1 FOR UPDATE", delivery.job_id
            )
            with pytest.raises(Deferred):
                await handle(runtime, LEDGER, delivery, raising(lambda: ValueError()), POLICY)
        pid = (await runtime.connection()).get_server_pid()
        held = await observer.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1"
            " AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($2, 0)",
            pid,
            delivery.job_id,
        )
        assert held == 0
        # Another worker process can claim and run the job.
        other = Runtime(database_url, DeliveryLimits(lock_wait_seconds=0.5))
        try:
            decision, _ = await handle(other, LEDGER, delivery, echo, POLICY)
        finally:
            await other.close()
        assert isinstance(decision, Done)
    finally:
        await blocker.close()


async def echo(ctx: JobContext, payload: JsonObject) -> Any:
    return {"ran": ctx.attempt}


class _HourBehind(datetime):
    """A worker clock one hour behind the database's."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.fromtimestamp(datetime.now(tz).timestamp() - 3600, tz)


async def test_a_retry_is_due_by_the_database_clock_and_not_run_early(
    runtime: Runtime, observer: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A skewed worker clock must not move ``next_attempt_at`` (the reconciler compares it with
    the database's ``now()``), and a second message of the retry that arrives before it is due
    (a duplicate, a republish) must wait, not run a second retry chain."""
    import worker_svc.runner

    monkeypatch.setattr(worker_svc.runner, "datetime", _HourBehind, raising=False)
    policy = RetryPolicy(base_delay_seconds=30, max_delay_seconds=30, jitter=0.1, max_retries=2)
    runs = []

    async def counting(ctx: JobContext, payload: JsonObject) -> Any:
        runs.append(ctx.attempt)
        raise ValueError("the upstream said no")

    delivery = await new_job(observer)
    decision, _ = await handle(runtime, LEDGER, delivery, counting, policy)
    assert isinstance(decision, Retry)
    row = await observer.fetchrow(
        "SELECT next_attempt_at, now() AS now FROM relayq_jobs WHERE job_id = $1",
        delivery.job_id,
    )
    assert row is not None
    wait = (row["next_attempt_at"] - row["now"]).total_seconds()
    assert abs(wait - decision.countdown) < 5, (wait, decision.countdown)
    # The same retry delivered again right away: nothing runs.
    with pytest.raises(Deferred) as early:
        await handle(runtime, LEDGER, delivery, counting, policy)
    assert early.value.countdown is not None and early.value.countdown > 20
    assert runs == [1]
    job = await LEDGER.get_job(observer, delivery.job_id)
    assert job is not None and job.state is JobState.RETRYING and job.attempt_count == 1
    assert job.next_attempt_at is not None
    assert job.next_attempt_at - row["now"] > timedelta(seconds=20)
