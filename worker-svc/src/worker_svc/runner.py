"""One delivery of a job: hold it, claim it, run the handler, record what happened.

The protocol (docs/idempotency.md, docs/retries.md):

1. ``lock_and_claim`` (one round trip): a PostgreSQL session lock on the job for the whole
   delivery, then the claim. A second delivery of the same job waits for the lock (at most
   ``lock_timeout``, then it is deferred); the lock vanishes with the connection when a worker
   dies, so the wait ends exactly when the first delivery can no longer finish. The claim marks
   the job running and counts the attempt. A finished job makes this delivery a duplicate; a
   job found ``running`` was abandoned by a dead worker (a worker loss), and after
   ``max_worker_losses`` of those it is dead-lettered as a poison job instead of run again.
2. The handler runs; its first ``await ctx.db()`` begins a transaction, and success is recorded
   in it: an effect written through that connection commits with the success, or not at all.
   A handler that never calls ``ctx.db()`` has its success recorded by one statement that also
   releases the lock (a job of that kind costs two round trips in all).
3. A failure rolls that transaction back; :func:`settle` then records a retry or stages a dead
   letter, still under the lock.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from relayq_core.db.ledger import UNAVAILABLE_ERRORS, Claim, JobLedger
from relayq_core.errors import JobError
from relayq_core.jobs import AttemptRecord, JobState
from relayq_core.logging import get_logger
from relayq_core.retry import RetryPolicy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runtime import Runtime

log = get_logger(__name__)

Handler = Callable[[JobContext, JsonObject], Awaitable[Any]]


class Reason(StrEnum):
    """Why a job is dead-lettered (the strings dlq-svc stores)."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    PERMANENT_ERROR = "permanent_error"
    WORKER_LOST = "worker_lost"


class Outcome(StrEnum):
    """What one delivery found or did."""

    SUCCEEDED = "succeeded"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    POISON = "poison"
    REPORT_PENDING = "report_pending"
    UNKNOWN_JOB = "unknown_job"


class Deferred(Exception):
    """Another delivery of this job holds it longer than we wait; try this one again later."""


class Interrupted(Exception):
    """The database went away after this delivery claimed ``attempt``: run it again later,
    telling the next delivery it resumes that attempt (an outage is not a worker loss)."""

    def __init__(self, attempt: int) -> None:
        super().__init__(f"the database connection was lost during attempt {attempt}")
        self.attempt = attempt


@dataclass(frozen=True)
class Failure:
    """A failed attempt, as the ledger and the DLQ record it."""

    error_type: str
    message: str
    traceback: str
    retryable: bool

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """From a handler's exception: retryable unless it says otherwise."""
        retryable = exc.retryable if isinstance(exc, JobError) else True
        return cls(type(exc).__name__, str(exc)[:2000], traceback.format_exc()[-20000:], retryable)


@dataclass(frozen=True)
class RunResult:
    """The delivery's outcome."""

    outcome: Outcome
    attempt: int = 0
    result: Any = None
    failure: Failure | None = None
    started_at: datetime | None = None
    duration_seconds: float = 0.0
    #: This delivery found the job abandoned by a worker that died running it.
    worker_lost: bool = False
    #: The handler ran (its duration is worth observing).
    ran: bool = False
    #: Recording the outcome also released the job's lock.
    released: bool = False


@dataclass(frozen=True)
class Delivery:
    """One message as the worker received it."""

    task: str
    job_id: str
    idempotency_key: str
    payload: JsonObject
    worker: str
    queue: str = "default"
    #: The attempt a database outage cut short, which this delivery takes over.
    resuming: int | None = None


async def run_delivery(
    runtime: Runtime,
    ledger: JobLedger,
    delivery: Delivery,
    handler: Handler,
    claim: Claim | None,
    *,
    max_worker_losses: int = 2,
) -> RunResult:
    """Runs one claimed delivery (``claim`` None: nothing to claim, see :func:`handle`).

    Database outages propagate (the caller retries the delivery later).
    """
    conn = await runtime.connection()
    if claim is None:
        peek = await ledger.peek_state(conn, delivery.job_id)
        if peek is None:
            log.error("job_unknown", reason="no ledger row for this message; dropped")
            return RunResult(Outcome.UNKNOWN_JOB)
        if peek.pending_dead_letter is not None:
            return RunResult(Outcome.REPORT_PENDING)
        found = await ledger.record_duplicate(conn, delivery.job_id)
        log.info("job_duplicate_delivery", state=peek.state.value)
        return RunResult(Outcome.DUPLICATE, result=found[1] if found else peek.result)

    try:
        return await _run_claimed(runtime, ledger, delivery, handler, claim, max_worker_losses)
    except Exception as exc:
        if isinstance(exc, UNAVAILABLE_ERRORS) or conn.is_closed():
            raise Interrupted(claim.attempt) from exc
        raise


async def _run_claimed(
    runtime: Runtime,
    ledger: JobLedger,
    delivery: Delivery,
    handler: Handler,
    claim: Claim,
    max_worker_losses: int,
) -> RunResult:
    """The part of a delivery after its claim (see :func:`run_delivery`)."""
    conn = await runtime.connection()
    started_at = datetime.now(UTC)
    if claim.interrupted:
        # The previous attempt lost its database connection: recorded, not counted as a loss.
        await ledger.record_attempt(
            conn,
            delivery.job_id,
            AttemptRecord(
                claim.attempt - 1,
                delivery.worker,
                started_at,
                0.0,
                "interrupted",
                "DatabaseUnavailable",
                "the database connection was lost during this attempt",
            ),
        )
        log.info("job_attempt_interrupted", attempt=claim.attempt - 1)
    if claim.abandoned:
        # The previous attempt's worker died mid-run: record that attempt as lost.
        await ledger.record_attempt(
            conn,
            delivery.job_id,
            AttemptRecord(
                claim.attempt - 1,
                "unknown",
                started_at,
                0.0,
                "worker_lost",
                "WorkerLost",
                "the worker running this attempt died",
            ),
        )
        log.warning("job_worker_lost", losses=claim.worker_losses, limit=max_worker_losses)
        if claim.worker_losses >= max_worker_losses:
            return RunResult(
                Outcome.POISON,
                worker_lost=True,
                attempt=claim.attempt,
                failure=Failure(
                    "WorkerLost",
                    f"the job's worker died {claim.worker_losses} times while running it",
                    "",
                    retryable=False,
                ),
                started_at=started_at,
            )

    t0 = time.perf_counter()
    log.info("job_started", attempt=claim.attempt)
    ctx = JobContext(delivery.job_id, delivery.idempotency_key, delivery.task, claim.attempt, conn)
    try:
        result = await handler(ctx, delivery.payload)
        attempt = AttemptRecord(
            claim.attempt, delivery.worker, started_at, time.perf_counter() - t0, "succeeded"
        )
        # With nothing of the handler's to commit alongside, one statement records the success
        # and releases the job.
        transaction = ctx.transaction
        await ledger.complete(conn, delivery.job_id, result, attempt, unlock=transaction is None)
        if transaction is not None:
            await transaction.commit()
    except Exception as exc:
        if ctx.transaction is not None and not conn.is_closed() and conn.is_in_transaction():
            await ctx.transaction.rollback()
        if conn.is_closed() or isinstance(exc, UNAVAILABLE_ERRORS):
            raise  # the database went away: not the handler's failure
        duration = time.perf_counter() - t0
        failure = Failure.of(exc)
        log.warning(
            "job_attempt_failed",
            attempt=claim.attempt,
            error_type=failure.error_type,
            error=failure.message[:500],
            retryable=failure.retryable,
            duration_seconds=round(duration, 6),
        )
        return RunResult(
            Outcome.FAILED,
            attempt=claim.attempt,
            failure=failure,
            started_at=started_at,
            duration_seconds=duration,
            worker_lost=claim.abandoned,
            ran=True,
        )
    duration = time.perf_counter() - t0
    log.info("job_succeeded", attempt=claim.attempt, duration_seconds=round(duration, 6))
    return RunResult(
        Outcome.SUCCEEDED,
        attempt=claim.attempt,
        result=result,
        started_at=started_at,
        duration_seconds=duration,
        worker_lost=claim.abandoned,
        ran=True,
        released=ctx.transaction is None,
    )


@dataclass(frozen=True)
class Retry:
    """Run the job again after ``countdown`` seconds; ``failures`` so far in this run."""

    countdown: float
    failures: int


@dataclass(frozen=True)
class DeadLetter:
    """Hand the job to dlq-svc (the dead-lettering is staged in the ledger)."""

    reason: Reason | None  # None: an earlier delivery staged it


@dataclass(frozen=True)
class Done:
    """Nothing more to do for this message."""

    result: Any = None


Decision = Retry | DeadLetter | Done


def decide(run: RunResult, policy: RetryPolicy, failures_before: int) -> Decision:
    """What a delivery's outcome means under the task's policy (pure)."""
    if run.outcome is Outcome.POISON:
        return DeadLetter(Reason.WORKER_LOST)
    if run.outcome is Outcome.REPORT_PENDING:
        return DeadLetter(None)
    if run.outcome is not Outcome.FAILED:
        return Done(run.result)
    assert run.failure is not None
    if not run.failure.retryable:
        return DeadLetter(Reason.PERMANENT_ERROR)
    failures = failures_before + 1
    if failures > policy.max_retries:
        return DeadLetter(Reason.RETRIES_EXHAUSTED)
    return Retry(policy.countdown(failures), failures)


async def settle(
    runtime: Runtime,
    ledger: JobLedger,
    delivery: Delivery,
    run: RunResult,
    decision: Decision,
) -> None:
    """Records a failed delivery's consequence in the ledger (under the job's lock)."""
    if run.failure is None or run.started_at is None:
        return
    conn = await runtime.connection()
    failure = run.failure
    summary = f"{failure.error_type}: {failure.message}"[:2000]
    countdown = decision.countdown if isinstance(decision, Retry) else 0.0
    async with conn.transaction():
        if run.outcome is Outcome.FAILED:
            await ledger.record_attempt(
                conn,
                delivery.job_id,
                AttemptRecord(
                    run.attempt,
                    delivery.worker,
                    run.started_at,
                    run.duration_seconds,
                    "failed",
                    failure.error_type,
                    failure.message,
                    countdown,
                ),
            )
        else:  # poison: this delivery did not run the job
            await ledger.record_attempt(
                conn,
                delivery.job_id,
                AttemptRecord(
                    run.attempt,
                    delivery.worker,
                    run.started_at,
                    0.0,
                    "dead_lettered",
                    failure.error_type,
                    failure.message,
                ),
            )
        if isinstance(decision, Retry):
            next_at = datetime.now(UTC) + timedelta(seconds=countdown)
            await ledger.fail(conn, delivery.job_id, JobState.RETRYING, summary, next_at)
        elif isinstance(decision, DeadLetter) and decision.reason is not None:
            report = {
                "reason": decision.reason.value,
                "error_type": failure.error_type,
                "error_message": failure.message,
                "traceback": failure.traceback,
                "final_attempt": run.attempt,
                "worker": delivery.worker,
                "dead_lettered_at": datetime.now(UTC).isoformat(),
            }
            await ledger.fail(conn, delivery.job_id, JobState.RETRYING, summary, None)
            await ledger.stage_dead_letter(
                conn, delivery.job_id, report, f"dead-lettering ({decision.reason}): {summary}"
            )


async def handle(
    runtime: Runtime,
    ledger: JobLedger,
    delivery: Delivery,
    handler: Handler,
    policy: RetryPolicy,
    failures_before: int,
) -> tuple[Decision, RunResult]:
    """The whole locked part of a delivery: lock and claim, run, decide, record, release."""
    conn = await runtime.connection()
    try:
        claim = await ledger.lock_and_claim(conn, delivery.job_id, delivery.resuming)
    except asyncpg.LockNotAvailableError as exc:
        raise Deferred("another delivery of this job is running") from exc
    except BaseException:
        # The call may have taken the lock before failing: a session lock outlives a failed
        # statement, and an unlock of a lock not held is harmless. The call's own error is the
        # one to report, not the unlock's (a broken connection fails both).
        with contextlib.suppress(Exception):
            await _release(conn, ledger, delivery.job_id)
        raise
    released = False
    try:
        run = await run_delivery(
            runtime, ledger, delivery, handler, claim, max_worker_losses=policy.max_worker_losses
        )
        released = run.released
        decision = decide(run, policy, failures_before)
        try:
            await settle(runtime, ledger, delivery, run, decision)
        except UNAVAILABLE_ERRORS as exc:
            if run.attempt:
                raise Interrupted(run.attempt) from exc
            raise
        return decision, run
    finally:
        if not released:
            await _release(conn, ledger, delivery.job_id)


async def _release(conn: asyncpg.Connection, ledger: JobLedger, job_id: str) -> None:
    if not conn.is_closed():
        await ledger.unlock_job(conn, job_id)
