"""One delivery of a job: hold it, claim it, run the handler, record what happened.

The protocol (docs/idempotency.md, docs/reliability.md, docs/retries.md):

1. ``lock_and_claim`` (one round trip): a PostgreSQL session lock on the job for the whole
   delivery, then the claim. A second delivery of the same job waits for the lock (at most
   ``lock_timeout``, then it is deferred); the lock vanishes with the connection when a worker
   dies. The claim marks the job running, counts the attempt and leases the job to it. It may
   instead say "not now": a retry whose time (by the database's clock) has not come, or a
   running job nobody holds whose lease has not run out (its worker may still be running it,
   cut off from the database); the delivery is then deferred. A finished job makes this
   delivery a duplicate; a running job found unheld with its lease run out was abandoned by a
   dead worker (a worker loss), and after ``max_worker_losses`` of those it is dead-lettered
   as a poison job instead of run again.
2. The handler runs under its time limit (``timeout_seconds`` of the task's policy), watched by
   the process's supervisor (worker_svc/supervisor.py), which renews the lease and stops a
   handler that ignores its time limit or outlives its lease. Its first ``await ctx.db()``
   begins a transaction, and success is recorded in it: an effect written through that
   connection commits with the success, or not at all. A handler that never calls ``ctx.db()``
   has its success recorded by one statement that also releases the lock.
3. A failure rolls that transaction back; :func:`settle` then records a retry (due by the
   database's clock) or stages a dead letter, still under the lock. Only the attempt that owns
   the job may record anything: the ledger refuses a success or failure from an attempt that
   was superseded (``AttemptSuperseded``).

A failure is classified by where it came from, never by its type alone. Whatever the handler
raises is the handler's failure, retried under the policy unless it says it is permanent
(including ``TimeoutError``, ``OSError`` and the errors of statements it runs through
``ctx.db()``, such as a ``statement_timeout``). Only the loss of the delivery's own connection
to the ledger interrupts an attempt without counting it.

The running attempt itself (its time limit, what stops it, the work it leaves behind) is
worker_svc/attempt.py; what an outcome means under the policy is worker_svc/outcome.py.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace

import asyncpg

from relayq_core.db.ledger import (
    UNAVAILABLE_ERRORS,
    UNWRITABLE_ERRORS,
    AttemptSuperseded,
    Claim,
    JobLedger,
    NotYet,
)
from relayq_core.deadletter import Reason, StagedDeadLetter
from relayq_core.jobs import AttemptRecord
from relayq_core.logging import get_logger
from relayq_core.retry import RetryPolicy
from relayq_core.telemetry import current_trace_id
from worker_svc.attempt import (
    Attempt,
    Handler,
    HandlerCancelled,
    Stopped,
    TimeoutRecorder,
    call_handler,
    release_job,
)
from worker_svc.context import JobContext, JsonObject
from worker_svc.metrics import JOB_RUNS, JOB_TIMEOUTS, observe_duration
from worker_svc.outcome import (
    DeadLetter,
    Decision,
    Done,
    Failure,
    Outcome,
    Retry,
    RunResult,
    decide,
    storable,
)
from worker_svc.runtime import Runtime

log = get_logger(__name__)


__all__ = [
    "DeadLetter",
    "Decision",
    "Deferred",
    "Delivery",
    "Done",
    "Failure",
    "Handler",
    "Interrupted",
    "Outcome",
    "Reason",
    "Retry",
    "RunResult",
    "HandlerCancelled",
    "decide",
    "handle",
    "settle",
    "storable",
]


class Deferred(Exception):
    """This delivery may not run the job now; try it again later (not an attempt of the job).

    ``countdown``: when (None: the worker's ``defer_seconds``)."""

    def __init__(self, reason: str, countdown: float | None = None) -> None:
        super().__init__(reason)
        self.countdown = countdown


class Interrupted(Exception):
    """The delivery's database connection went away after it claimed ``attempt``: run it again
    later, telling the next delivery it resumes that attempt (an outage is not a worker loss)."""

    def __init__(self, attempt: int) -> None:
        super().__init__(f"the database connection was lost during attempt {attempt}")
        self.attempt = attempt


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


async def handle(
    runtime: Runtime,
    ledger: JobLedger,
    delivery: Delivery,
    handler: Handler,
    policy: RetryPolicy,
) -> tuple[Decision, RunResult]:
    """The whole locked part of a delivery: lock and claim, run, decide, record, release.

    Raises :class:`Deferred` (try later), :class:`Interrupted` (the connection was lost mid
    attempt) or a database error (the ledger is unreachable).
    """
    conn = await runtime.connection()
    sent = time.monotonic()
    try:
        claim = await ledger.lock_and_claim(
            conn,
            delivery.job_id,
            delivery.resuming,
            lease_seconds=runtime.limits.lease_seconds,
            max_interruptions=policy.max_interruptions,
            unsafe_skip_lock=runtime.limits.unsafe_skip_claim,
        )
    except BaseException as exc:
        # The call may have taken the lock before failing: the job's row lock (FOR UPDATE)
        # comes after the session lock, and a session lock outlives a failed statement. Left
        # held, only this process could ever claim the job again. An unlock of a lock not held
        # is harmless; the call's own error is the one to report.
        with contextlib.suppress(Exception):
            await release_job(conn, ledger, delivery.job_id)
        if isinstance(exc, asyncpg.LockNotAvailableError):
            raise Deferred("another delivery of this job is running") from exc
        raise
    attempt = Attempt(runtime, ledger, delivery, policy, conn)
    try:
        if isinstance(claim, NotYet):
            log.info("job_not_due", why=claim.why, seconds=round(claim.seconds, 3))
            raise Deferred(claim.why, claim.seconds)
        run = await _run(attempt, handler, claim, sent)
        decision = decide(run, policy, claim.failures if claim else 0)
        try:
            await settle(attempt.conn, ledger, delivery, run, decision)
        except UNWRITABLE_ERRORS as exc:  # relayq's own statements: read-only is the ledger's
            if run.attempt:
                raise Interrupted(run.attempt) from exc
            raise
        except AttemptSuperseded as exc:
            raise _superseded(run.attempt) from exc
    except BaseException:
        attempt.end()
        # Whatever stops this delivery (its outcome could not be recorded: the connection died,
        # the attempt was superseded, an unexpected error), work its handler left running must
        # not outlive it: the message comes back, perhaps as a resuming delivery that does not
        # wait for the lease.
        attempt.kill_if_busy()
        # The delivery's own error is the one to report, not the unlock's (a broken connection
        # fails both, and masking Interrupted would lose the attempt it resumes).
        with contextlib.suppress(Exception):
            await attempt.release()
        if not attempt.conn.is_closed() and attempt.conn.is_in_transaction():
            runtime.taint()  # never run the next delivery inside what this one left open
        raise
    attempt.end()
    count(delivery, decision, run)  # recorded: counted even if the unlock below fails
    # Its handler's offloaded work still running: only the process's end stops it, and the
    # next attempt (after the recorded retry's backoff) must not run beside it.
    attempt.kill_if_busy()
    if not run.released:
        await attempt.release()
    return decision, run


def _superseded(number: int) -> Deferred:
    # The supervisor recorded this attempt as timed out (and is killing this process), or its
    # lease ran out and another attempt owns the job: nothing of this one may be recorded. The
    # message comes back later; its claim then sees what the job's owner decided.
    log.warning("job_attempt_superseded", attempt=number)
    return Deferred("the attempt no longer owns the job")


async def _run(
    attempt: Attempt,
    handler: Handler,
    claim: Claim | None,
    sent: float,
) -> RunResult:
    """The delivery after its claim (``claim`` None: nothing to claim)."""
    ledger, delivery, conn = attempt.ledger, attempt.delivery, attempt.conn
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
        return await _run_claimed(attempt, handler, claim, sent)
    except (Interrupted, Stopped):
        raise
    except Exception as exc:
        # A ledger call of this delivery failed (a handler's failure never gets here).
        if isinstance(exc, UNWRITABLE_ERRORS) or attempt.conn.is_closed():
            raise Interrupted(claim.attempt) from exc
        raise


async def _run_claimed(
    attempt: Attempt,
    handler: Handler,
    claim: Claim,
    sent: float,
) -> RunResult:
    ledger, delivery, policy, conn = attempt.ledger, attempt.delivery, attempt.policy, attempt.conn
    started_at = claim.started_at
    assert started_at is not None
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
        limit = policy.max_worker_losses
        log.warning("job_worker_lost", losses=claim.worker_losses, limit=limit)
        if claim.worker_losses >= limit:
            return RunResult(
                Outcome.POISON,
                worker_lost=True,
                attempt=claim.attempt,
                failure=Failure(
                    "WorkerLost",
                    f"the job's worker died (or lost its database connection, again and again) "
                    f"{claim.worker_losses} times while running it",
                    "",
                    retryable=False,
                ),
                started_at=started_at,
            )

    log.info("job_started", attempt=claim.attempt)
    runtime = attempt.runtime
    ctx = JobContext(
        delivery.job_id,
        delivery.idempotency_key,
        delivery.task,
        claim.attempt,
        conn,
        runtime.http,
    )
    base = RunResult(
        Outcome.FAILED,
        attempt=claim.attempt,
        started_at=started_at,
        worker_lost=claim.abandoned,
        ran=True,
    )
    t0 = time.perf_counter()
    attempt.begin(claim, sent + claim.waited_seconds, _timeout_recorder(attempt, claim, t0))
    try:
        result = await call_handler(
            handler, ctx, delivery.payload, policy.timeout_seconds, attempt.stop
        )
    except Stopped as stopped:
        await attempt.quiesce()
        if stopped.reason != "timeout":  # the connection (and with it the job's lock) is gone
            attempt.kill_if_busy()
            raise Interrupted(claim.attempt) from None
        # Cancelled by its time limit, perhaps mid-statement on the delivery's connection.
        await attempt.end_transaction(ctx, cut=True)
        JOB_TIMEOUTS.labels(task=delivery.task, queue=delivery.queue, kind="soft").inc()
        return _failed(base, Failure.time_limit(policy.timeout_seconds, hard=False), t0)
    except Exception as exc:
        await attempt.quiesce()
        if conn.is_closed():
            # The delivery's own connection died under the handler: whatever the handler made
            # of that, the attempt cannot be recorded here (the next delivery resumes it).
            attempt.kill_if_busy()
            raise Interrupted(claim.attempt) from exc
        await attempt.end_transaction(ctx, cut=False)
        return _failed(base, Failure.of(exc), t0)
    except BaseException:
        # Not a failure of the job (the process is being stopped): leave nothing open behind.
        attempt.handler_returned()
        with contextlib.suppress(Exception):
            await attempt.end_transaction(ctx, cut=True)
        raise
    await attempt.quiesce(wait=False)
    duration = time.perf_counter() - t0
    record = AttemptRecord(claim.attempt, delivery.worker, started_at, duration, "succeeded")
    # With nothing of the handler's to commit alongside, one statement records the success
    # and releases the job.
    transaction = ctx.transaction
    try:
        await ledger.complete(conn, delivery.job_id, result, record, unlock=transaction is None)
        if transaction is not None:
            await transaction.commit()
    except BaseException as exc:
        # The success is not recorded: the next attempt may come, so what the handler left
        # running must be over first, or the process killed (by handle, on the way out).
        await attempt.quiesce()
        if isinstance(exc, AttemptSuperseded):
            await attempt.end_transaction(ctx, cut=False)
            raise _superseded(claim.attempt) from exc
        if not isinstance(exc, Exception):
            raise
        # Read-only is the ledger's outage when the statement was relayq's alone; in the
        # handler's transaction it may be the handler's doing (SET TRANSACTION READ ONLY): its
        # failure, and if the ledger is read-only after all, recording it says so.
        ours = UNWRITABLE_ERRORS if transaction is None else UNAVAILABLE_ERRORS
        if conn.is_closed() or isinstance(exc, ours):
            raise Interrupted(claim.attempt) from exc
        await attempt.end_transaction(ctx, cut=False)
        # The handler's transaction could not commit (a serialization failure, a deferred
        # constraint, a statement it left failed): its failure.
        return _failed(base, Failure.of(exc), t0)
    log.info("job_succeeded", attempt=claim.attempt, duration_seconds=round(duration, 6))
    return replace(
        base,
        outcome=Outcome.SUCCEEDED,
        result=result,
        duration_seconds=duration,
        released=transaction is None,
    )


def _timeout_recorder(attempt: Attempt, claim: Claim, t0: float) -> TimeoutRecorder:
    """How the supervisor records this attempt as timed out before it kills the process."""
    delivery, policy, ledger = attempt.delivery, attempt.policy, attempt.ledger

    async def record_timeout(db: asyncpg.Connection) -> bool:
        run = RunResult(
            Outcome.FAILED,
            attempt=claim.attempt,
            failure=Failure.time_limit(policy.timeout_seconds, hard=True),
            started_at=claim.started_at,
            duration_seconds=time.perf_counter() - t0,
            worker_lost=claim.abandoned,
            ran=True,
        )
        decision = decide(run, policy, claim.failures)
        try:
            await settle(db, ledger, delivery, run, decision)
        except AttemptSuperseded:
            return False
        JOB_TIMEOUTS.labels(task=delivery.task, queue=delivery.queue, kind="hard").inc()
        count(delivery, decision, run)
        return True

    return record_timeout


def _failed(base: RunResult, failure: Failure, t0: float) -> RunResult:
    duration = time.perf_counter() - t0
    log.warning(
        "job_attempt_failed",
        attempt=base.attempt,
        error_type=failure.error_type,
        error=failure.message[:500],
        retryable=failure.retryable,
        timed_out=failure.timed_out,
        duration_seconds=round(duration, 6),
    )
    return replace(base, failure=failure, duration_seconds=duration)


async def settle(
    conn: asyncpg.Connection,
    ledger: JobLedger,
    delivery: Delivery,
    run: RunResult,
    decision: Decision,
) -> None:
    """Records a failed delivery's consequence in the ledger (under the job's lock, or from the
    supervisor while the attempt still owns the job); nothing for other outcomes."""
    if run.failure is None or run.started_at is None:
        return
    failure = run.failure
    summary = f"{failure.error_type}: {failure.message}"[:2000]
    if run.outcome is Outcome.FAILED:
        outcome, counted = ("timed_out" if failure.timed_out else "failed"), True
    else:  # poison: this delivery did not run the job
        outcome, counted = "dead_lettered", False
    record = AttemptRecord(
        run.attempt,
        delivery.worker,
        run.started_at,
        run.duration_seconds,
        outcome,
        failure.error_type,
        failure.message,
        decision.countdown if isinstance(decision, Retry) else 0.0,
    )
    if isinstance(decision, Retry):
        await ledger.settle_failure(
            conn, delivery.job_id, record, error=summary, counted=counted, dead_letter=None
        )
    elif isinstance(decision, DeadLetter) and decision.reason is not None:
        staged = StagedDeadLetter(
            reason=decision.reason,
            error_type=failure.error_type,
            error_message=failure.message,
            traceback=failure.traceback,
            final_attempt=run.attempt,
            worker=delivery.worker,
        )
        await ledger.settle_failure(
            conn,
            delivery.job_id,
            record,
            error=f"dead-lettering ({decision.reason.value}): {summary}"[:2000],
            counted=counted,
            dead_letter=staged,
        )


def count(delivery: Delivery, decision: Decision, run: RunResult) -> None:
    """Metrics for one delivery (low-cardinality labels only: task, queue, outcome)."""
    labels = {"task": delivery.task, "queue": delivery.queue}
    if run.worker_lost:
        JOB_RUNS.labels(outcome="worker_lost", **labels).inc()
    if run.ran:
        observe_duration(delivery.task, delivery.queue, run.duration_seconds, current_trace_id())
    if isinstance(decision, Retry):
        outcome = "retried"
    elif isinstance(decision, DeadLetter):
        if decision.reason is None:
            return  # a staged dead letter re-sent: counted when it was decided
        outcome = "dead_lettered"
    elif run.outcome is Outcome.DUPLICATE:
        outcome = "duplicate"
    elif run.outcome is Outcome.SUCCEEDED:
        outcome = "succeeded"
    else:
        return
    JOB_RUNS.labels(outcome=outcome, **labels).inc()
