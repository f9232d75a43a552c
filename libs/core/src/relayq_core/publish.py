"""Hands jobs to Celery by task name, without importing any worker code.

Used by ingest (submits) and dlq-svc (replays). Publishing is blocking I/O (kombu), so it runs on
one dedicated thread, off the event loop, and a batch shares one producer connection.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery

from relayq_core.broker import celery_config
from relayq_core.jobs import JobSpec


def job_message(spec: JobSpec, failures: int = 0) -> dict[str, Any]:
    """The task's keyword arguments: what a worker needs to run and record the job.

    ``failures``: retries the job's current run has used (a re-published retry keeps its place
    in the retry policy); left out when 0, as in every first message.
    """
    message: dict[str, Any] = {
        "job_id": spec.job_id,
        "idempotency_key": spec.idempotency_key,
        "payload": spec.payload,
        "queue": spec.queue,
    }
    if failures:
        message["failures"] = failures
    return message


class Publisher:
    """Sends job messages to the broker."""

    def __init__(self, redis_url: str, default_queue: str) -> None:
        self._app = Celery("relayq-publisher", set_as_current=False)
        self._app.conf.update(celery_config(redis_url, default_queue))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")

    def _publish_sync(self, specs: Sequence[JobSpec], failures: Mapping[str, int]) -> None:
        with self._app.producer_or_acquire() as producer:
            for spec in specs:
                self._app.send_task(
                    spec.task,
                    kwargs=job_message(spec, failures.get(spec.job_id, 0)),
                    task_id=spec.job_id,
                    queue=spec.queue,
                    producer=producer,
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
                )

    async def publish(
        self, specs: Sequence[JobSpec], failures: Mapping[str, int] | None = None
    ) -> None:
        """Publishes every message or raises (the broker's error) for the whole batch.

        ``failures`` by job id: see :func:`job_message`.
        """
        if specs:
            loop = asyncio.get_running_loop()
            # The executor thread would start from an empty context: carry the caller's (its
            # trace) so the producer spans and the message headers continue the submit's trace.
            ctx = contextvars.copy_context()
            await loop.run_in_executor(
                self._executor, ctx.run, self._publish_sync, list(specs), dict(failures or {})
            )

    def ping(self) -> None:
        """Raises when the broker cannot be reached (readiness)."""
        with self._app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)

    def close(self) -> None:
        """Releases the thread and broker connections."""
        self._executor.shutdown(wait=True)
        self._app.close()
