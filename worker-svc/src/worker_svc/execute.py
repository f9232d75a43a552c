"""The bridge every Celery task goes through: from a message to a settled delivery.

Tasks stay one line long. This module binds the job's identity to the logs, runs the locked part
of the delivery (:func:`worker_svc.runner.handle`) on the process's loop, and turns its decision
into Celery's terms: ``self.retry(countdown=…)`` for a retry (workers never sleep), the DLQ
hand-off for a dead letter, and a retry without spending an attempt when the database or dlq-svc
is unreachable or another delivery holds the job.

The message's kwargs carry ``failures`` (failed attempts so far in this run of the job) so a
replay, which publishes a fresh message, gets the whole retry policy again.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import grpc
from celery import Task

from relayq_core.db.ledger import UNAVAILABLE_ERRORS, JobLedger
from relayq_core.jobs import JobRecord
from relayq_core.logging import get_logger, job_context
from relayq_core.telemetry import current_trace_id
from relayq_core.tls import client_tls
from worker_svc.app import catalog, policies, settings
from worker_svc.dlq_client import DlqClient, build_report
from worker_svc.metrics import JOB_RUNS, observe_duration
from worker_svc.runner import (
    DeadLetter,
    Decision,
    Deferred,
    Delivery,
    Done,
    Handler,
    Interrupted,
    Outcome,
    Retry,
    RunResult,
    handle,
)
from worker_svc.runtime import Runtime

log = get_logger(__name__)

runtime = Runtime(settings.database_url, settings.lock_wait_seconds)
ledger = JobLedger()
dlq = DlqClient(settings.dlq_grpc, settings.dlq_timeout_seconds, client_tls(settings))

#: Delay before re-trying a delivery that could not reach Postgres.
INFRA_RETRY_SECONDS = 2.0


class RetryLater(Exception):
    """Why a message is re-published without spending an attempt (picklable, unlike the
    driver errors behind it, which Celery would have to send from the pool process)."""


def _again(task: Task, countdown: float, message: dict[str, Any], exc: BaseException) -> NoReturn:
    """Re-publishes this message after ``countdown`` (not a failed attempt of the job)."""
    reason = RetryLater(f"{type(exc).__name__}: {str(exc)[:200]}")
    raise task.retry(countdown=countdown, kwargs=message, exc=reason)


def execute(task: Task, handler: Handler, message: dict[str, Any]) -> Any:
    """Runs one delivery of ``task`` with ``handler``; returns the job's result."""
    job_id = str(message.get("job_id", ""))
    key = str(message.get("idempotency_key") or job_id)
    with job_context(job_id, key, task=task.name):
        if not job_id or not isinstance(message.get("payload"), dict):
            log.error("job_message_malformed", keys=sorted(message))
            return None
        # Only the delivery that follows an interrupted attempt resumes it; retries of this
        # one must not carry the mark (a worker death then would not count as a loss).
        resuming = message.pop("resuming", None)
        delivery = Delivery(
            task=task.name,
            job_id=job_id,
            idempotency_key=key,
            payload=message["payload"],
            worker=f"{task.request.hostname or 'worker'}:{os.getpid()}",
            queue=str(message.get("queue") or catalog.default_queue),
            resuming=int(resuming) if isinstance(resuming, int) else None,
        )
        policy = policies.for_task(task.name)
        failures = int(message.get("failures", 0))
        try:
            decision, run = runtime.run(
                handle(runtime, ledger, delivery, handler, policy, failures)
            )
        except Deferred as exc:
            log.info("job_deferred", reason=str(exc), countdown=settings.defer_seconds)
            _again(task, settings.defer_seconds, _resume(message, resuming), exc)
        except Interrupted as exc:
            runtime.run(runtime.discard_connection())
            log.warning("job_deferred", reason="database lost mid-attempt", attempt=exc.attempt)
            _again(task, INFRA_RETRY_SECONDS, _resume(message, exc.attempt), exc)
        except UNAVAILABLE_ERRORS as exc:
            runtime.run(runtime.discard_connection())
            log.warning("job_deferred", reason="database unavailable", error=type(exc).__name__)
            _again(task, INFRA_RETRY_SECONDS, _resume(message, resuming), exc)
        count(delivery, message, decision, run)
        if isinstance(decision, Retry):
            log.info(
                "job_retry_scheduled",
                failures=decision.failures,
                countdown=round(decision.countdown, 3),
            )
            raise task.retry(
                countdown=decision.countdown,
                kwargs={**message, "failures": decision.failures},
            )
        if isinstance(decision, DeadLetter):
            hand_off(task, message, job_id)
            return None
        assert isinstance(decision, Done)
        return decision.result


def _resume(message: dict[str, Any], attempt: Any) -> dict[str, Any]:
    """The message for a delivery that takes over ``attempt`` (None: nothing to take over)."""
    return message if attempt is None else {**message, "resuming": attempt}


async def _staged(job_id: str) -> tuple[JobRecord, dict[str, Any]] | None:
    """The job and its staged dead letter, or None when nothing is staged any more."""
    conn = await runtime.connection()
    job = await ledger.get_job(conn, job_id)
    peek = await ledger.peek_state(conn, job_id)
    if job is None or peek is None or peek.pending_dead_letter is None:
        return None
    return job, peek.pending_dead_letter


async def _mark_dead_lettered(job_id: str) -> None:
    await ledger.mark_dead_lettered(await runtime.connection(), job_id)


async def _touch_dead_letter(job_id: str) -> None:
    try:
        await ledger.touch_staged_dead_letter(await runtime.connection(), job_id)
    except UNAVAILABLE_ERRORS:
        await runtime.discard_connection()  # the retry below goes ahead all the same


def count(delivery: Delivery, message: dict[str, Any], decision: Decision, run: RunResult) -> None:
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


def hand_off(task: Task, message: dict[str, Any], job_id: str) -> None:
    """Stores the staged dead letter in dlq-svc, then marks the job dead-lettered.

    The message is acknowledged only after dlq-svc has the row: while it is unreachable the
    message comes back with a growing delay, and the staged report waits in the ledger.
    """
    tries = int(message.get("dlq_report_tries", 0))
    try:
        staged = runtime.run(_staged(job_id))
        if staged is None:
            return  # another delivery finished the hand-off
        job, report = staged
        duplicate = dlq.report(build_report(job, report))
        runtime.run(_mark_dead_lettered(job_id))
    except grpc.RpcError as exc:
        countdown = min(2.0 ** (tries + 1), settings.dlq_retry_max_seconds)
        # The reconciler leaves a staged dead letter alone while workers keep touching it.
        runtime.run(_touch_dead_letter(job_id))
        log.warning(
            "dead_letter_report_failed",
            code=exc.code().name,
            tries=tries + 1,
            countdown=countdown,
        )
        _again(task, countdown, {**message, "dlq_report_tries": tries + 1}, exc)
    except UNAVAILABLE_ERRORS as exc:
        runtime.run(runtime.discard_connection())
        _again(task, INFRA_RETRY_SECONDS, message, exc)
    log.warning(
        "job_dead_lettered",
        reason=report["reason"],
        attempts=job.attempt_count,
        already_stored=duplicate,
    )
