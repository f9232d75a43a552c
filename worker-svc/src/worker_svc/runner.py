"""Running one delivery of a job: claim it in the ledger, run the handler, record the outcome.

The protocol (docs/idempotency.md):

1. ``claim`` (autocommit) marks the job running and counts the attempt. It refuses a job that
   already succeeded or was dead-lettered: this delivery is a duplicate and does nothing.
2. One transaction locks the job's row, runs the handler with that transaction's connection, and
   records success. A second delivery of the same job blocks on the row lock until the first
   commits (then finds it succeeded) or dies (then runs it itself). An effect the handler writes
   through ``ctx.conn`` commits with the success, or not at all.
3. A handler error rolls the transaction back (no effect) and is recorded on its own.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg

from relayq_core.db.ledger import UNAVAILABLE_ERRORS, JobLedger
from relayq_core.jobs import AttemptRecord, JobState
from relayq_core.logging import get_logger
from worker_svc.context import JobContext, JsonObject
from worker_svc.runtime import Runtime

log = get_logger(__name__)

Handler = Callable[[JobContext, JsonObject], Awaitable[Any]]


class Outcome(StrEnum):
    """What one delivery did."""

    SUCCEEDED = "succeeded"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    UNKNOWN_JOB = "unknown_job"


@dataclass(frozen=True)
class RunResult:
    """The delivery's outcome, with the result (succeeded, duplicate) or the error (failed)."""

    outcome: Outcome
    attempt: int = 0
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""
    started_at: datetime | None = None
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class Delivery:
    """One message as the worker received it."""

    task: str
    job_id: str
    idempotency_key: str
    payload: JsonObject
    worker: str


class Deferred(Exception):
    """Another delivery of this job holds it longer than we wait; try this one again later."""


async def run_delivery(
    runtime: Runtime, ledger: JobLedger, delivery: Delivery, handler: Handler
) -> RunResult:
    """Claims, runs and records one delivery.

    Raises :class:`Deferred` when another delivery of the same job is still running after the
    lock wait, and lets database outages propagate: the caller retries both later.
    """
    conn = await runtime.connection()
    try:
        attempt = await ledger.claim(conn, delivery.job_id)
    except asyncpg.LockNotAvailableError as exc:
        raise Deferred("another delivery of this job is running") from exc
    if attempt is None:
        found = await ledger.record_duplicate(conn, delivery.job_id)
        if found is None:
            log.error("job_unknown", reason="no ledger row for this message; dropped")
            return RunResult(Outcome.UNKNOWN_JOB)
        log.info("job_duplicate_delivery", state=found[0].value)
        return RunResult(Outcome.DUPLICATE, result=found[1])

    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    log.info("job_started", attempt=attempt)
    try:
        async with conn.transaction():
            locked = await ledger.lock_for_outcome(conn, delivery.job_id)
            if locked is not None and locked[0].terminal:
                # Another delivery finished between our claim and this lock.
                await ledger.record_duplicate(conn, delivery.job_id)
                await ledger.record_attempt(
                    conn,
                    delivery.job_id,
                    AttemptRecord(attempt, delivery.worker, started_at, 0.0, "duplicate"),
                )
                log.info("job_duplicate_delivery", state=locked[0].value)
                return RunResult(Outcome.DUPLICATE, attempt=attempt, result=locked[1])
            ctx = JobContext(
                job_id=delivery.job_id,
                idempotency_key=delivery.idempotency_key,
                task=delivery.task,
                attempt=attempt,
                conn=conn,
            )
            result = await handler(ctx, delivery.payload)
            await ledger.complete(conn, delivery.job_id, result)
            await ledger.record_attempt(
                conn,
                delivery.job_id,
                AttemptRecord(
                    attempt, delivery.worker, started_at, time.perf_counter() - t0, "succeeded"
                ),
            )
    except asyncpg.LockNotAvailableError as exc:
        raise Deferred("another delivery of this job is running") from exc
    except Exception as exc:
        if conn.is_closed() or isinstance(exc, UNAVAILABLE_ERRORS):
            raise  # the database went away: not the handler's failure
        duration = time.perf_counter() - t0
        log.warning(
            "job_attempt_failed",
            attempt=attempt,
            error_type=type(exc).__name__,
            error=str(exc)[:500],
            duration_seconds=round(duration, 6),
        )
        return RunResult(
            Outcome.FAILED,
            attempt=attempt,
            error=exc,
            traceback=traceback.format_exc(),
            started_at=started_at,
            duration_seconds=duration,
        )
    log.info("job_succeeded", attempt=attempt, duration_seconds=round(time.perf_counter() - t0, 6))
    return RunResult(Outcome.SUCCEEDED, attempt=attempt, result=result)


async def record_failure(
    runtime: Runtime,
    ledger: JobLedger,
    delivery: Delivery,
    run: RunResult,
    *,
    next_state: JobState,
    countdown: float = 0.0,
) -> None:
    """Stores a failed attempt and moves the job to retrying or dead-lettered."""
    assert run.error is not None and run.started_at is not None
    conn = await runtime.connection()
    message = f"{type(run.error).__name__}: {run.error}"[:2000]
    next_at = (
        datetime.fromtimestamp(time.time() + countdown, UTC)
        if next_state is JobState.RETRYING
        else None
    )
    async with conn.transaction():
        await ledger.record_attempt(
            conn,
            delivery.job_id,
            AttemptRecord(
                run.attempt,
                delivery.worker,
                run.started_at,
                run.duration_seconds,
                "failed",
                type(run.error).__name__,
                str(run.error)[:2000],
                countdown,
            ),
        )
        await ledger.fail(conn, delivery.job_id, next_state, message, next_at)
