"""The Celery adapter every task goes through: it only translates.

From a message to a :class:`~worker_svc.runner.Delivery`, run on the process's loop by
:func:`worker_svc.runner.handle`; from its decision back to Celery: ``self.retry(countdown=…)``
for a retry (workers never sleep), :func:`worker_svc.handoff.hand_off` for a dead letter, and a
re-publish that spends no attempt when the job may not run now, the database is unreachable, or
dlq-svc cannot take the dead letter yet. What it runs with comes from
:func:`worker_svc.services.services`, built in the pool process on the first message.

The retry budget a job has used lives in the ledger, not in the message, so a replay (a fresh
message) and a republished retry both keep their place in the policy.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

from celery import Task

from relayq_core.db.ledger import UNWRITABLE_ERRORS
from relayq_core.logging import get_logger, job_context
from worker_svc import spans
from worker_svc.handoff import DlqUnreachable, HandedOff, hand_off
from worker_svc.metrics import DELIVERY_ERRORS
from worker_svc.runner import (
    DeadLetter,
    Deferred,
    Delivery,
    Done,
    Handler,
    Interrupted,
    Retry,
    handle,
)
from worker_svc.services import Services, services

log = get_logger(__name__)

#: Delay before re-trying a delivery that could not reach Postgres.
INFRA_RETRY_SECONDS = 2.0
#: A delivery told "not before T" comes back this much after T (timers fire a little early).
NOT_BEFORE_MARGIN_SECONDS = 0.05


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
        spans.start(job_id)
        if not job_id or not isinstance(message.get("payload"), dict):
            log.error("job_message_malformed", keys=sorted(message))
            return None
        svc = services()
        # Only the delivery that follows an interrupted attempt resumes it; retries of this
        # one must not carry the mark (a worker death then would not count as a loss).
        resuming = message.pop("resuming", None)
        delivery = Delivery(
            task=task.name,
            job_id=job_id,
            idempotency_key=key,
            payload=message["payload"],
            worker=f"{task.request.hostname or 'worker'}:{os.getpid()}",
            queue=str(message.get("queue") or svc.catalog.default_queue),
            resuming=int(resuming) if isinstance(resuming, int) else None,
        )
        policy = svc.policies.for_task(task.name)
        runtime = svc.runtime
        try:
            decision, run = runtime.run(handle(runtime, svc.ledger, delivery, handler, policy))
        except Deferred as exc:
            spans.deferred(str(exc))
            if exc.countdown is None:
                countdown = svc.settings.defer_seconds
            else:
                countdown = exc.countdown + NOT_BEFORE_MARGIN_SECONDS
            log.info("job_deferred", reason=str(exc), countdown=round(countdown, 3))
            _again(task, countdown, _resume(message, resuming), exc)
        except Interrupted as exc:
            spans.deferred(str(exc))
            runtime.run(runtime.discard_connection())
            log.warning("job_deferred", reason="database lost mid-attempt", attempt=exc.attempt)
            _again(task, INFRA_RETRY_SECONDS, _resume(message, exc.attempt), exc)
        except UNWRITABLE_ERRORS as exc:
            runtime.run(runtime.discard_connection())
            log.warning("job_deferred", reason="database unavailable", error=type(exc).__name__)
            _again(task, INFRA_RETRY_SECONDS, _resume(message, resuming), exc)
        except Exception as exc:
            # Not the handler's failure (the runner records those): a bug, or the ledger
            # refusing a write. Acknowledging the message would leave the job to the reconciler
            # at best; it comes back instead, and the error is logged and counted each time.
            runtime.run(runtime.discard_connection())
            log.exception("job_delivery_error", error=type(exc).__name__)
            DELIVERY_ERRORS.labels(task=task.name, error=type(exc).__name__[:64]).inc()
            _again(task, svc.settings.defer_seconds, _resume(message, resuming), exc)
        spans.outcome(decision, run)
        if isinstance(decision, Retry):
            log.info(
                "job_retry_scheduled",
                failures=decision.failures,
                countdown=round(decision.countdown, 3),
            )
            raise task.retry(countdown=decision.countdown, kwargs=message)
        if isinstance(decision, DeadLetter):
            _hand_off(task, svc, message, job_id)
            return None
        assert isinstance(decision, Done)
        return decision.result


def _resume(message: dict[str, Any], attempt: Any) -> dict[str, Any]:
    """The message for a delivery that takes over ``attempt`` (None: nothing to take over)."""
    return message if attempt is None else {**message, "resuming": attempt}


def _hand_off(task: Task, svc: Services, message: dict[str, Any], job_id: str) -> None:
    """Hands the staged dead letter to dlq-svc; while it cannot take it, the message comes back
    with a growing delay (acknowledged only once dlq-svc has the row)."""
    tries = int(message.get("dlq_report_tries", 0))
    runtime = svc.runtime

    async def go() -> HandedOff | None:
        return await hand_off(await runtime.connection(), svc.ledger, svc.dlq, job_id)

    try:
        runtime.run(go())
    except DlqUnreachable as exc:
        countdown = min(2.0 ** (tries + 1), svc.settings.dlq_retry_max_seconds)
        log.warning(
            "dead_letter_report_failed", code=exc.code, tries=tries + 1, countdown=countdown
        )
        _again(task, countdown, {**message, "dlq_report_tries": tries + 1}, exc)
    except UNWRITABLE_ERRORS as exc:
        runtime.run(runtime.discard_connection())
        _again(task, INFRA_RETRY_SECONDS, message, exc)
