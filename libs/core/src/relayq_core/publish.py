"""Hands jobs to Celery by task name, without importing any worker code.

Used by ingest (its outbox), dlq-svc (replays) and the reconciler. A call encodes its messages
(:mod:`relayq_core.envelope`) and pushes them with one pipelined ``LPUSH`` per call, on the
event loop (redis-py's asyncio client): no Celery producer, no thread hop, one round trip for
a batch of any size. Ingest encodes at submit time (the trace context is the submit's) and
pushes later (:meth:`Publisher.push`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relayq_core.broker import (
    HEALTH_CHECK_INTERVAL_SECONDS,
    SOCKET_CONNECT_TIMEOUT_SECONDS,
    SOCKET_TIMEOUT_SECONDS,
)
from relayq_core.envelope import encode, origin
from relayq_core.jobs import JobSpec
from relayq_core.telemetry import job_attributes

#: A publish that meets a dropped connection reconnects and tries again this many times (a
#: Redis restart); a retried pipeline may push a message twice, which a worker's claim makes a
#: no-op, never zero times without an error.
PUBLISH_RETRIES = 2

_tracer = trace.get_tracer(__name__)


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


def trace_headers(context: Context | None = None) -> dict[str, str]:
    """The trace context (``context``, or the current one) as message headers (empty outside a
    span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def publish_span(job_ids: Sequence[str]) -> trace.Span:
    """The producer span of the messages of ``job_ids`` (``publish``), started but not current
    (make it current with ``trace.use_span``, or inject it with :func:`trace_headers`). The
    spans of the workers that run the messages are its children."""
    return _tracer.start_span(
        "publish",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "redis",
            "messaging.operation": "publish",
            "messaging.batch.message_count": len(job_ids),
            **job_attributes(job_ids),
        },
    )


class Publisher:
    """Sends job messages to the broker."""

    def __init__(self, redis_url: str) -> None:
        self._redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_SECONDS,
            socket_keepalive=True,
            health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), PUBLISH_RETRIES),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._reply_to = str(uuid.uuid4())
        self._origin = origin()

    def encode(
        self, spec: JobSpec, failures: int = 0, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """``spec``'s message (see :func:`relayq_core.envelope.encode`)."""
        return encode(
            spec.task,
            spec.job_id,
            spec.queue,
            job_message(spec, failures),
            reply_to=self._reply_to,
            origin=self._origin,
            trace_headers=headers,
        )

    async def publish(
        self, specs: Sequence[JobSpec], failures: Mapping[str, int] | None = None
    ) -> None:
        """Publishes every message or raises (the broker's error) for the whole batch.

        ``failures`` by job id: see :func:`job_message`. The messages continue the caller's
        trace through a producer span (``publish``), which their worker spans are children of.
        """
        if not specs:
            return
        failures = failures or {}
        with trace.use_span(publish_span([spec.job_id for spec in specs]), end_on_exit=True):
            headers = trace_headers()
            await self.push(
                [
                    (spec.queue, self.encode(spec, failures.get(spec.job_id, 0), headers))
                    for spec in specs
                ]
            )

    async def push(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Pushes encoded messages, ``(queue, message)``, in one pipeline, or raises (the
        broker's error) for the whole batch; some may have been pushed even then."""
        if not messages:
            return
        pipe = self._redis.pipeline(transaction=False)
        for queue, message in messages:
            pipe.lpush(queue, message)
        await pipe.execute()

    async def ping(self) -> None:
        """Raises when the broker cannot be reached (readiness)."""
        await self._redis.ping()

    async def close(self) -> None:
        """Closes the broker connections."""
        await self._redis.aclose()
