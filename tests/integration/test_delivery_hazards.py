"""Hazards a hostile review of the delivery protocol found, each a concrete interleaving that
broke one of the promises (and failed on commit 9ba6617, before its fix). They drive
``worker_svc.runner.handle`` in process against the real ledger, as test_delivery_faults.py
does, and emulate what ``worker_svc.execute`` does with each outcome (re-publish, discard the
connection, ack). The assertions state the promise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger
from relayq_core.errors import JobError
from relayq_core.retry import RetryPolicy
from tests.integration.delivery_support import Kills, new_job, quick_policy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runner import (
    DeadLetter,
    Deferred,
    Delivery,
    Done,
    Interrupted,
    Retry,
    handle,
)
from worker_svc.runtime import DeliveryLimits, Runtime

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()
POLICY = RetryPolicy(base_delay_seconds=0.05, max_delay_seconds=0.2, max_retries=2, jitter=0.0)


def make_runtime(database_url: str, **limits: Any) -> tuple[Runtime, Kills]:
    kills = Kills()
    limits.setdefault("lock_wait_seconds", 0.5)
    return Runtime(database_url, DeliveryLimits(**limits), kill=kills), kills


async def echo(ctx: JobContext, payload: JsonObject) -> Any:
    return {"ran": ctx.attempt}


async def row(conn: asyncpg.Connection, job_id: str) -> asyncpg.Record:
    r = await conn.fetchrow(
        "SELECT state, attempt_count, failures, worker_losses, lease_until,"
        " pending_dead_letter IS NOT NULL AS staged FROM relayq_jobs WHERE job_id = $1",
        job_id,
    )
    assert r is not None
    return r


# --- 1. A connection loss the handler itself causes re-runs the job forever, never counted ----


async def test_a_handler_that_costs_its_own_connection_is_rerun_forever_without_budget(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """Any server-side end of the delivery's session while the handler runs is classified as
    an *outage* (``Interrupted``): not a failure, not a worker loss. But the handler can be the
    cause: ``idle_in_transaction_session_timeout`` (common on managed PostgreSQL) firing while
    the handler, having opened ``ctx.db()``, waits on a slow HTTP call; a query that makes the
    backend crash or get OOM-killed (PostgreSQL then restarts every backend); a
    ``pg_terminate_backend`` by an operator's watchdog. Each redelivery carries ``resuming``, so
    the claim records the attempt ``interrupted`` and runs the handler again, 2 s later, forever:
    the retry budget (``failures``) and ``worker_losses`` never move and the job is never
    dead-lettered. Promise 3 (nothing re-runs forever) is broken."""
    runtime, kills = make_runtime(database_url)
    runs = 0

    async def slow_http_inside_a_transaction(ctx: JobContext, payload: JsonObject) -> Any:
        nonlocal runs
        runs += 1
        db = await ctx.db()
        # Stands in for the server's setting (ALTER ROLE/DATABASE ... SET, or postgresql.conf).
        await db.execute("SET LOCAL idle_in_transaction_session_timeout = 200")
        await asyncio.sleep(1.0)  # the slow downstream call; the session sits idle meanwhile
        return {"ok": True}

    delivery = await new_job(observer)
    rounds = POLICY.max_retries + 4
    try:
        for _ in range(rounds):
            try:
                decision, _ = await handle(
                    runtime, LEDGER, delivery, slow_http_inside_a_transaction, POLICY
                )
            except Interrupted as exc:
                # worker_svc.execute: discard the connection, re-publish with resuming=attempt.
                await runtime.discard_connection()
                delivery = Delivery(**{**delivery.__dict__, "resuming": exc.attempt})
                continue
            break
        else:
            decision = None
    finally:
        await runtime.close()
    r = await row(observer, delivery.job_id)
    attempts = await observer.fetch(
        "SELECT number, outcome FROM relayq_job_attempts WHERE job_id = $1 ORDER BY number",
        delivery.job_id,
    )
    detail = (runs, dict(r), [tuple(a) for a in attempts], decision)
    assert kills.count == 0
    # The promise: a handler that keeps failing spends its budget and ends in the DLQ.
    assert isinstance(decision, DeadLetter) or r["staged"], detail


# --- 2. A time limit that lands during ctx.db()'s BEGIN leaves the connection in a transaction --


async def test_a_time_limit_during_ctx_db_begin_swallows_every_later_commit(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """``JobContext.db()`` assigns ``self._transaction`` only after ``BEGIN`` returned. When the
    handler is cancelled while that ``BEGIN`` is in flight (its time limit, or any stop of the
    StopSwitch, lands at that instant), the server has begun the transaction but
    ``ctx.transaction`` is None, so ``_rollback`` does nothing. ``settle`` then runs *inside*
    that open transaction and is never committed; ``handle`` returns ``Retry`` (Celery publishes
    the retry and acks). The connection stays in the transaction for the life of the pool
    process: every later delivery on it claims and "succeeds" without committing (its message
    acked), while the rows it touched stay locked, so no other worker can claim them and the
    reconciler (FOR UPDATE SKIP LOCKED) skips them. Jobs are lost/stuck until the process dies.
    """
    runtime, _ = make_runtime(database_url)
    other, _ = make_runtime(database_url)

    async def cancelled_during_begin(ctx: JobContext, payload: JsonObject) -> Any:
        assert runtime.attempt is not None
        runtime.attempt.request("timeout")  # the time limit expires now: the next await
        await ctx.db()  # ... is BEGIN's reply
        raise AssertionError("unreachable: the timeout cancelled the handler")

    first = await new_job(observer)
    second = await new_job(observer)
    try:
        decision, _ = await handle(runtime, LEDGER, first, cancelled_during_begin, POLICY)
        assert isinstance(decision, Retry), decision  # recorded as a timed-out attempt
        conn = await runtime.connection()
        left_open = conn.is_in_transaction()
        # The worker's next job, on the same pool process.
        decision2, _ = await handle(runtime, LEDGER, second, echo, POLICY)
        assert isinstance(decision2, Done)  # Celery would ack this message now
        first_row = await row(observer, first.job_id)
        second_row = await row(observer, second.job_id)
        # What the reconciler's claim would see (FOR UPDATE SKIP LOCKED).
        claimable = await observer.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM relayq_jobs WHERE job_id = $1"
            " FOR UPDATE SKIP LOCKED) s",
            second.job_id,
        )
        # Another worker process gets the second job's message again: it cannot claim it.
        try:
            await handle(other, LEDGER, second, echo, POLICY)
            other_outcome = "ran"
        except Deferred as exc:
            other_outcome = f"deferred: {exc}"
    finally:
        await runtime.close()
        await other.close()
    detail = (left_open, dict(first_row), dict(second_row), claimable, other_outcome)
    assert not left_open, detail
    assert first_row["state"] == "retrying" and first_row["failures"] == 1, detail
    assert second_row["state"] == "succeeded", detail


async def test_a_cancelled_error_from_a_handler_is_its_failure_and_leaves_nothing_open(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """A handler that lets an ``asyncio.CancelledError`` of its own escape (it awaited a task or
    future that something else cancelled, or a ``gather`` whose child was cancelled) escaped
    ``_run_claimed`` as a BaseException, without its transaction being rolled back; billiard's
    pool keeps the process, and Celery acked the message. The runtime kept the connection, still
    inside the handler's transaction, and every later job of that process was swallowed. Now it
    is the handler's failure (``HandlerCancelled``), retried under the policy, with its
    transaction rolled back."""
    runtime, _ = make_runtime(database_url)

    async def awaits_a_cancelled_task(ctx: JobContext, payload: JsonObject) -> Any:
        await (await ctx.db()).execute("SELECT 1")
        task = asyncio.ensure_future(asyncio.sleep(10))
        task.cancel()
        await task  # raises CancelledError into the handler

    first = await new_job(observer)
    second = await new_job(observer)
    try:
        decision1, run1 = await handle(runtime, LEDGER, first, awaits_a_cancelled_task, POLICY)
        left_open = (await runtime.connection()).is_in_transaction()
        decision2, _ = await handle(runtime, LEDGER, second, echo, POLICY)
        first_row = await row(observer, first.job_id)
        second_row = await row(observer, second.job_id)
    finally:
        await runtime.close()
    assert isinstance(decision1, Retry), decision1
    assert run1.failure is not None and run1.failure.error_type == "HandlerCancelled"
    assert first_row["state"] == "retrying" and first_row["failures"] == 1
    assert isinstance(decision2, Done)
    assert not left_open and second_row["state"] == "succeeded", (left_open, dict(second_row))


# --- 3. A failure whose text PostgreSQL cannot store escapes settle ---------------------------


async def test_a_failure_message_with_a_nul_byte_is_retried_by_the_policy(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """``settle`` passes ``str(exc)`` and the traceback to PostgreSQL as text. A NUL byte (a
    webhook's 5xx body excerpt, ``response.text[:200]``, of a binary answer; any bytes decoded
    into a message) or a lone surrogate (``surrogateescape``-decoded file names in an OSError)
    cannot be stored: the statement fails with a DataError that is neither an outage nor RQ001,
    so it escapes ``handle`` and ``execute``; Celery records a task failure and acks the message.
    The job stays ``running`` with nobody holding it: nothing but the reconciler (after its
    deadline and a queue turnover) brings it back, as a *worker loss*; after
    ``max_worker_losses`` it is dead-lettered as a poison job (reason ``worker_lost``) without
    the policy's retries and backoff having been used."""
    runtime, _ = make_runtime(database_url, lease_seconds=3)

    async def webhook_like(ctx: JobContext, payload: JsonObject) -> Any:
        raise JobError("POST http://x answered 502 Bad Gateway: \x00\x1f\x8b binary body")

    delivery = await new_job(observer)
    try:
        try:
            decision, _ = await handle(runtime, LEDGER, delivery, webhook_like, POLICY)
            escaped = None
        except Exception as exc:  # what worker_svc.execute would let through to Celery
            decision, escaped = None, exc
    finally:
        await runtime.close()
    r = await row(observer, delivery.job_id)
    detail = (type(escaped).__name__, str(escaped)[:200], dict(r))
    assert escaped is None and isinstance(decision, Retry), detail
    assert r["state"] == "retrying" and r["failures"] == 1, detail


# --- 4. Cancellation does not stop a thread: two attempts in flight at once ------------------


async def test_attempts_never_overlap_even_when_the_handler_offloads_to_a_thread(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """The runner's time limit (and the connection-loss stop) cancels the handler's coroutine;
    work it offloaded with ``asyncio.to_thread``/``run_in_executor`` (the usual way to call a
    blocking SDK such as requests or boto3 from async code) keeps running. Before the fix the
    retry was recorded and the lock released while that work ran on, and the next attempt
    started beside it. Now the attempt waits for it up to the kill grace, and kills its process
    (after recording the outcome) when it is still running: in a real worker the stray thread
    dies with it. Here the kill is counted, and the "process" lives on, so the test lets the
    thread finish before the next attempt as the kill would have."""
    runtime, kills = make_runtime(database_url, kill_grace_seconds=0.3)
    policy = quick_policy(0.3)
    intervals: list[list[float]] = []

    def blocking_post() -> None:  # requests.post(..., timeout=10) to a slow receiver
        span = [time.monotonic(), float("inf")]
        intervals.append(span)
        time.sleep(1.0)
        span[1] = time.monotonic()

    async def sdk_handler(ctx: JobContext, payload: JsonObject) -> Any:
        await asyncio.to_thread(blocking_post)
        return {"sent": True}

    delivery = await new_job(observer)
    try:
        for _ in range(3):
            before = kills.count
            try:
                decision, _ = await handle(runtime, LEDGER, delivery, sdk_handler, policy)
            except Deferred as exc:
                await asyncio.sleep(exc.countdown or 0.1)
                continue
            if kills.count > before:
                # The process was killed: its threads are gone with it. This stand-in process
                # survives, so wait for the thread as the kill would have ended it.
                while any(span[1] == float("inf") for span in intervals):
                    await asyncio.sleep(0.05)
            if isinstance(decision, Retry):
                await asyncio.sleep(decision.countdown)
    finally:
        await runtime.close()
        await asyncio.sleep(1.1)  # let the stray threads finish
    overlaps = [(a, b) for i, a in enumerate(intervals) for b in intervals[i + 1 :] if b[0] < a[1]]
    assert kills.count == len(intervals), (kills.count, intervals)
    assert overlaps == [], intervals


# --- 5. "Too many connections" is neither an outage nor a delivery outcome --------------------


async def test_too_many_connections_does_not_escape_to_celery(
    database_url: str, observer: asyncpg.Connection
) -> None:
    """``runtime.connection()`` runs before anything is caught. PostgreSQL at
    ``max_connections`` (or a role's CONNECTION LIMIT) answers 53300, ``TooManyConnectionsError``,
    which is not in UNAVAILABLE_ERRORS: it escapes ``handle`` and ``execute``, Celery records a
    task failure and acks the message. Every message a worker takes while the database is
    saturated is dropped, left to the reconciler's turnover rules. (Each pool process now holds
    two connections, the delivery's and its supervisor's, so saturation comes sooner.)"""
    from relayq_core.db.ledger import UNAVAILABLE_ERRORS

    await observer.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'review_saturated')"
        " THEN CREATE ROLE review_saturated LOGIN CONNECTION LIMIT 0; END IF; END $$"
    )
    saturated = database_url.replace("postgres@", "review_saturated@", 1)
    runtime, _ = make_runtime(saturated)
    delivery = await new_job(observer)
    try:
        with pytest.raises(Exception) as raised:
            await handle(runtime, LEDGER, delivery, echo, POLICY)
    finally:
        await runtime.close()
    # worker_svc.execute re-publishes only Deferred, Interrupted and UNAVAILABLE_ERRORS.
    assert isinstance(raised.value, UNAVAILABLE_ERRORS), type(raised.value).__name__
