"""The bridge every Celery task goes through: from a message to :func:`run_delivery`.

Tasks stay one line long; this module binds the job's identity to the logs, runs the async
protocol on the process's loop, and turns database outages into a Celery retry (the job's own
attempts are not spent on them).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Task

from relayq_core.db.ledger import UNAVAILABLE_ERRORS, JobLedger
from relayq_core.jobs import JobState
from relayq_core.logging import get_logger, job_context
from worker_svc.app import settings
from worker_svc.runner import (
    Deferred,
    Delivery,
    Handler,
    Outcome,
    record_failure,
    run_delivery,
)
from worker_svc.runtime import Runtime

log = get_logger(__name__)

runtime = Runtime(settings.database_url, settings.lock_wait_seconds)
ledger = JobLedger()

#: Delay before re-trying a delivery that could not reach Postgres.
INFRA_RETRY_SECONDS = 2.0


def execute(task: Task, handler: Handler, message: dict[str, Any]) -> Any:
    """Runs one delivery of ``task`` with ``handler``; returns the job's result."""
    job_id = str(message.get("job_id", ""))
    key = str(message.get("idempotency_key") or job_id)
    with job_context(job_id, key, task=task.name):
        if not job_id or not isinstance(message.get("payload"), dict):
            log.error("job_message_malformed", keys=sorted(message))
            return None
        delivery = Delivery(
            task=task.name,
            job_id=job_id,
            idempotency_key=key,
            payload=message["payload"],
            worker=f"{task.request.hostname or 'worker'}:{os.getpid()}",
        )
        try:
            run = runtime.run(run_delivery(runtime, ledger, delivery, handler))
            if run.outcome is Outcome.FAILED:
                runtime.run(
                    record_failure(
                        runtime, ledger, delivery, run, next_state=JobState.DEAD_LETTERED
                    )
                )
                log.warning("job_failed", attempt=run.attempt, error_type=type(run.error).__name__)
        except Deferred as exc:
            log.info("job_deferred", reason=str(exc), countdown=settings.defer_seconds)
            raise task.retry(countdown=settings.defer_seconds, max_retries=None, exc=exc) from exc
        except UNAVAILABLE_ERRORS as exc:
            runtime.run(runtime.discard_connection())
            log.warning("job_deferred", reason="database unavailable", error=type(exc).__name__)
            raise task.retry(countdown=INFRA_RETRY_SECONDS, max_retries=None, exc=exc) from exc
        return run.result
