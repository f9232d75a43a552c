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
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from relayq_core.db.ledger import (
    UNAVAILABLE_ERRORS,
    AttemptSuperseded,
    Claim,
    JobLedger,
    NotYet,
)
from relayq_core.deadletter import Reason, StagedDeadLetter
from relayq_core.errors import JobError
from relayq_core.jobs import AttemptRecord
from relayq_core.logging import get_logger
from relayq_core.retry import RetryPolicy
from relayq_core.telemetry import current_trace_id
from worker_svc.context import JobContext, JsonObject
from worker_svc.metrics import JOB_RUNS, JOB_TIMEOUTS, observe_duration
from worker_svc.runtime import Runtime, StopSwitch, TrackedExecutor, tracked_executor
from worker_svc.supervisor import Watch

log = get_logger(__name__)

Handler = Callable[[JobContext, JsonObject], Awaitable[Any]]

#: The longest a handler's transaction may take to roll back before its connection is closed.
ROLLBACK_SECONDS = 5.0

#: The running attempt, in the context of its handler and of every task the handler starts.
_ATTEMPT: contextvars.ContextVar[object] = contextvars.ContextVar("relayq_attempt")

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
    "decide",
    "handle",
    "settle",
]


class Outcome(StrEnum):
    """What one delivery found or did."""

    SUCCEEDED = "succeeded"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    POISON = "poison"
    REPORT_PENDING = "report_pending"
    UNKNOWN_JOB = "unknown_job"


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


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it (in text and jsonb): a NUL byte, which neither
    accepts, written out as ``\\x00``, and lone surrogates as ``\\udXXX`` escapes. A failure
    whose message held either (a webhook's binary 5xx body) could otherwise not be recorded."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Stopped(Exception):
    """The handler was stopped from outside (its time limit, or the connection's loss)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Failure:
    """A failed attempt, as the ledger and the DLQ record it."""

    error_type: str
    message: str
    traceback: str
    retryable: bool
    #: The failure asked for at least this long before the next attempt (HTTP Retry-After).
    retry_after: float | None = None
    #: The attempt ran past its time limit (recorded ``timed_out``).
    timed_out: bool = False

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """From a handler's exception: retryable unless it says otherwise."""
        retryable, retry_after = True, None
        if isinstance(exc, JobError):
            retryable, retry_after = exc.retryable, exc.retry_after
        return cls(
            storable(type(exc).__name__),
            storable(str(exc)[:2000]),
            storable("".join(traceback.format_exception(exc))[-20000:]),
            retryable,
            retry_after,
        )

    @classmethod
    def time_limit(cls, limit: float, *, hard: bool) -> Failure:
        """An attempt that ran past its time limit: cancelled, or (``hard``) its process killed
        because it ignored the cancellation."""
        message = f"the attempt was still running after its time limit ({limit:g} s)"
        if hard:
            message += "; it ignored the cancellation, so its process was killed"
        return cls("JobTimeout", message, "", retryable=True, timed_out=True)


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
        return DeadLetter(Reason.TIMEOUT if run.failure.timed_out else Reason.RETRIES_EXHAUSTED)
    return Retry(policy.retry_countdown(failures, run.failure.retry_after), failures)


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
            await _release(conn, ledger, delivery.job_id)
        if isinstance(exc, asyncpg.LockNotAvailableError):
            raise Deferred("another delivery of this job is running") from exc
        raise
    attempt = _Attempt(runtime, ledger, delivery, policy, conn)
    try:
        if isinstance(claim, NotYet):
            log.info("job_not_due", why=claim.why, seconds=round(claim.seconds, 3))
            raise Deferred(claim.why, claim.seconds)
        run = await _run(attempt, handler, claim, sent)
        decision = decide(run, policy, claim.failures if claim else 0)
        try:
            await settle(attempt.conn, ledger, delivery, run, decision)
        except UNAVAILABLE_ERRORS as exc:
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
    if attempt.must_kill:
        # Its handler's offloaded work is still running: only the process's end stops it, and
        # the next attempt (after the recorded retry's backoff) must not run beside it.
        log.error("job_attempt_killed", attempt=run.attempt, reason="work_left_running")
        runtime.kill()
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
    attempt: _Attempt,
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
    except (Interrupted, _Stopped):
        raise
    except Exception as exc:
        # A ledger call of this delivery failed (a handler's failure never gets here).
        if isinstance(exc, UNAVAILABLE_ERRORS) or attempt.conn.is_closed():
            raise Interrupted(claim.attempt) from exc
        raise


async def _run_claimed(
    attempt: _Attempt,
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
    attempt.begin(conn, claim, sent + claim.waited_seconds, t0)
    try:
        result = await _call(handler, ctx, delivery.payload, policy.timeout_seconds, attempt.stop)
    except _Stopped as stopped:
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
    except AttemptSuperseded as exc:
        await attempt.end_transaction(ctx, cut=False)
        raise _superseded(claim.attempt) from exc
    except Exception as exc:
        if conn.is_closed() or isinstance(exc, UNAVAILABLE_ERRORS):
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


async def _call(
    handler: Handler, ctx: JobContext, payload: JsonObject, limit: float, stop: StopSwitch
) -> Any:
    """The handler under its time limit; :class:`_Stopped` when the limit or ``stop`` ended it.

    A ``TimeoutError`` of the handler's own (its HTTP client's, its own ``asyncio.timeout``) is
    the handler's failure, told apart by whether *this* timeout expired.
    """
    timeout = asyncio.timeout(limit)
    stop.attach(timeout)
    token = _ATTEMPT.set(stop)  # tasks the handler starts inherit it (see _Attempt.quiesce)
    try:
        async with timeout:
            return await handler(ctx, payload)
    except TimeoutError:
        if timeout.expired():
            raise _Stopped(stop.reason or "timeout") from None
        raise
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this delivery itself is being cancelled (the process is stopping)
        # The handler let a cancellation of its own escape (it awaited a task that something
        # cancelled): its failure, like any other exception.
        raise HandlerCancelled("the handler raised CancelledError") from None
    finally:
        _ATTEMPT.reset(token)
        stop.attach(None)


class HandlerCancelled(Exception):
    """A ``CancelledError`` that escaped the handler without this delivery being cancelled."""


def _asyncpg_task(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is asyncpg's own bookkeeping (it must finish for the connection's sake)."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "asyncpg" in code.co_filename


class _Attempt:
    """One delivery's running attempt: its stop switch and the supervisor's watch on it."""

    def __init__(
        self,
        runtime: Runtime,
        ledger: JobLedger,
        delivery: Delivery,
        policy: RetryPolicy,
        conn: asyncpg.Connection,
    ) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.delivery = delivery
        self.policy = policy
        #: The connection the delivery records on: the claim's, holding the job's lock, until
        #: end_transaction() has to replace it (then the lease alone keeps others away).
        self.conn = conn
        self.lock_held = True
        self.stop = StopSwitch()
        self._watch: Watch | None = None
        self._executor: TrackedExecutor | None = None
        #: The handler's offloaded work outlived it: the process must end (after recording).
        self.must_kill = False

    def begin(self, conn: asyncpg.Connection, claim: Claim, sent: float, t0: float) -> None:
        """The handler is about to run: the connection's loss stops it, the supervisor watches."""
        self.runtime.attempt = self.stop
        self._executor = tracked_executor()
        if self.runtime.limits.unsafe_skip_claim:
            return  # no lock held: nothing for a lease to prove
        loop = asyncio.get_running_loop()
        stop = self.stop

        def stop_from_thread(reason: str) -> None:
            loop.call_soon_threadsafe(stop.request, reason)

        delivery, policy, ledger = self.delivery, self.policy, self.ledger

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

        self._watch = Watch(
            job_id=delivery.job_id,
            idempotency_key=delivery.idempotency_key,
            task=delivery.task,
            attempt=claim.attempt,
            holder_pid=conn.get_server_pid(),
            lease_sent=sent,
            started=time.monotonic(),
            timeout=policy.timeout_seconds,
            stop=stop_from_thread,
            record_timeout=record_timeout,
        )
        self.runtime.supervisor(ledger).begin(self._watch)

    async def quiesce(self, *, wait: bool = True) -> None:
        """The handler has returned: its leftover tasks are cancelled and, unless it succeeded
        (``wait`` False), awaited with what it handed to threads, for up to half the kill grace.
        Work still running then would overlap the next attempt: :attr:`must_kill`."""
        current = asyncio.current_task()
        # The handler's tasks carry its attempt in their context (set by _call), and only they;
        # asyncpg's own (the cancel request of a statement the handler abandoned) are left alone.
        leftover = [
            t
            for t in asyncio.all_tasks()
            if t is not current
            and not t.done()
            and t.get_context().get(_ATTEMPT) is self.stop
            and not _asyncpg_task(t)
        ]
        for task in leftover:
            task.cancel()
        if wait:
            # Half the kill grace: decided here, on the loop, before the supervisor's hard
            # deadline (time limit + grace) would make it decide from its thread.
            grace = self.runtime.limits.kill_grace_seconds / 2
            started = time.monotonic()
            if leftover:
                _, pending = await asyncio.wait(leftover, timeout=grace)
                self.must_kill = bool(pending)
            remaining = max(0.0, grace - (time.monotonic() - started))
            executor = self._executor
            if executor is not None and not await executor.idle(remaining):
                self.must_kill = True
            if self.must_kill:
                log.error(
                    "job_attempt_left_work_running",
                    tasks=len(leftover),
                    threads=executor.busy if executor is not None else 0,
                    grace_seconds=grace,
                )
        self.handler_returned()

    async def end_transaction(self, ctx: JobContext, *, cut: bool) -> None:
        """Leaves nothing of the handler's open on the delivery's connection.

        A handler that failed on its own (``cut`` False) has its transaction rolled back. One
        that was cancelled (its time limit; ``cut``) may have been cut off mid-statement, and
        asyncpg then waits for the cancellation of a statement that already finished: that
        connection is never trusted again, nor is one whose rollback failed or took too long.
        It is closed (its session lock goes with it, and the attempt's lease keeps other
        deliveries away meanwhile) and the outcome is recorded on a fresh connection.
        """
        conn = self.conn
        if conn.is_closed() or (ctx.transaction is None and not conn.is_in_transaction()):
            return
        if not cut and ctx.transaction is not None:
            try:
                async with asyncio.timeout(ROLLBACK_SECONDS):
                    await ctx.transaction.rollback()
                if not conn.is_in_transaction():
                    return
            except Exception as exc:
                log.warning("job_rollback_failed", error=type(exc).__name__)
        old_pid = conn.get_server_pid()
        await self.runtime.discard_connection()
        self.lock_held = False
        self.conn = await self.runtime.connection()
        # Closing the socket does not stop a statement the server is still running (PostgreSQL
        # notices a vanished client only between statements, or at the next
        # client_connection_check_interval): end that session now, and its locks with it.
        with contextlib.suppress(Exception):
            await self.conn.execute("SELECT pg_terminate_backend($1)", old_pid)

    async def release(self) -> None:
        """Releases the job's lock, if this delivery still holds it."""
        if self.lock_held:
            await _release(self.conn, self.ledger, self.delivery.job_id)

    def kill_if_busy(self) -> None:
        """No outcome can be recorded (the connection is gone), and the handler's work still
        runs: end the process now, before anyone may take the job over."""
        if self.must_kill:
            log.error("job_attempt_killed", reason="work_left_running")
            self.runtime.kill()

    def handler_returned(self) -> None:
        """Nothing left to stop (the lease is still renewed until the outcome is recorded)."""
        if self._watch is not None:
            self._watch.handler_done = True
        self.runtime.attempt = None

    def end(self) -> None:
        """The delivery is over."""
        self.runtime.attempt = None
        if self._watch is not None:
            self.runtime.supervisor(self.ledger).end(self._watch)
            self._watch = None


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


async def _release(conn: asyncpg.Connection, ledger: JobLedger, job_id: str) -> None:
    if not conn.is_closed():
        await ledger.unlock_job(conn, job_id)
