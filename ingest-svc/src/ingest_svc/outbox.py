"""The outbox: publishing accepted jobs to the broker in the background, off the submit's path.

A submit answers once its job is committed to the PostgreSQL ledger. That row, with
``enqueued_at`` still empty, *is* the outbox: the job will be published whatever happens to
this process. Ingest keeps the jobs it accepted in memory, already encoded, and one background
task pushes them to Redis: whatever waits, up to ``batch`` messages per pipelined ``LPUSH``
(so submits arriving during a push go out together in the next), then hands their ids to the
``enqueued_at`` writer (marks.py). The reconciler's *never published* rule is the safety net
for whatever this process does not publish (it died, or gave up below).

While Redis is slow or down nothing waits for it but this task: a push that fails or does not
answer within ``publish_timeout`` is retried with a capped, jittered backoff; submits go on
being accepted. Memory is bounded: beyond ``max_jobs`` or ``max_bytes`` of waiting messages the
oldest are dropped, and so is a job waiting longer than ``max_age``: their rows stay in the
ledger, and the reconciler publishes them once they are ``unpublished_after_seconds`` old. Keep
``max_age`` at or below that, so the reconciler takes over jobs this process no longer holds
rather than racing it for ones it does. A race costs a duplicate message, which a worker's
claim turns into a no-op; a loss would cost a job, which this design never risks: nothing is
ever deleted from the ledger.

The trace: each submit call opens a ``publish`` producer span (a child of the submit's span),
whose context the messages carry in their headers, so the workers' spans continue the submit's
trace; the span ends when the last of the call's messages reaches the broker (its length is the
time the jobs waited in the outbox), or is left to the reconciler.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace

from ingest_svc.marks import EnqueueMarks
from ingest_svc.metrics import (
    OUTBOX_DROPPED,
    OUTBOX_JOBS,
    PUBLISH_FAILURES,
    PUBLISH_SECONDS,
    PUBLISHED,
)
from relayq_core.jobs import JobSpec
from relayq_core.logging import get_logger, job_context
from relayq_core.publish import Publisher, publish_span, trace_headers

log = get_logger(__name__)

#: The first retry's delay; each failure doubles it, up to ``OutboxLimits.retry_max``.
RETRY_BASE_SECONDS = 0.1


@dataclass(frozen=True)
class OutboxLimits:
    """How much the outbox holds, and how it retries (ingest's ``RELAYQ_INGEST_*`` settings)."""

    max_jobs: int = 20_000
    max_bytes: int = 64 * 1024 * 1024
    max_age: float = 60.0
    batch: int = 1000
    publish_timeout: float = 5.0
    retry_max: float = 5.0
    shutdown_flush: float = 5.0


class _Origin:
    """One submit call's ``publish`` span, ended when the last of its messages is settled."""

    __slots__ = ("span", "unsettled")

    def __init__(self, span: trace.Span, unsettled: int) -> None:
        self.span = span
        self.unsettled = unsettled

    def settle(self, published: bool) -> None:
        if not published:
            self.span.add_event("left_to_reconciler")
        self.unsettled -= 1
        if self.unsettled == 0:
            self.span.end()


@dataclass(slots=True)
class _Entry:
    """A job accepted and not yet in the broker: its encoded message, and since when."""

    job_id: str
    idempotency_key: str
    task: str
    queue: str
    message: bytes
    accepted_at: float  # time.monotonic()
    origin: _Origin


class Outbox:
    """The background publisher of one ingest process (see the module docstring)."""

    def __init__(
        self, publisher: Publisher, marks: EnqueueMarks, limits: OutboxLimits | None = None
    ) -> None:
        self._publisher = publisher
        self._marks = marks
        self._limits = limits or OutboxLimits()
        self._waiting: deque[_Entry] = deque()
        self._in_flight: list[_Entry] = []
        self._bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = 0  # consecutive failed pushes
        self._last_failure_at = 0.0  # monotonic; jobs accepted before it were delayed
        self._first_failure_at = 0.0
        self._context = contextvars.copy_context()

    @property
    def backlog(self) -> int:
        """Jobs accepted and not yet in the broker (waiting or being pushed)."""
        return len(self._waiting) + len(self._in_flight)

    def add(self, specs: Sequence[JobSpec]) -> None:
        """Queues newly recorded jobs for the broker; never waits (call after their commit)."""
        if not specs:
            return
        origin = _Origin(publish_span([spec.job_id for spec in specs]), len(specs))
        headers = trace_headers(trace.set_span_in_context(origin.span))
        now = time.monotonic()
        entries = [
            _Entry(
                spec.job_id,
                spec.idempotency_key,
                spec.task,
                spec.queue,
                self._publisher.encode(spec, headers=headers),
                now,
                origin,
            )
            for spec in specs
        ]
        self._bytes += sum(len(e.message) for e in entries)
        OUTBOX_JOBS.inc(len(entries))
        if self._closing:  # a submit that ended after shutdown began: the reconciler's
            self._drop(entries, "shutdown")
            return
        self._waiting.extend(entries)
        self._trim()
        if self._task is None:
            # In the context the outbox was made in (the process's: its service name bound),
            # not the first submit's: every line of this long-lived task would carry that
            # request's span and fields.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="outbox", context=self._context.copy()
            )
            self._task.add_done_callback(self._stopped)
        self._wake.set()

    async def close(self) -> None:
        """Publishes what waits, for at most ``shutdown_flush`` seconds; what is left then is
        the reconciler's (its rows are in the ledger)."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            _, unfinished = await asyncio.wait({task}, timeout=self._limits.shutdown_flush)
            if unfinished:
                task.cancel()
                await asyncio.wait({task})
        left = list(self._waiting)
        self._waiting.clear()
        if left:
            self._drop(left, "shutdown")
        log.info("outbox_closed", left_to_reconciler=len(left))

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """The publishing task ended: at close, or by a bug (then the next add starts another;
        meanwhile the reconciler covers)."""
        self._task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("outbox_task_failed", error=type(exc).__name__, detail=str(exc)[:200])

    async def _run(self) -> None:
        while True:
            self._expire()
            if not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if await self._push_batch():
                continue  # what arrived during the push goes out at once, together
            doubled = RETRY_BASE_SECONDS * 2 ** min(self._failures - 1, 30)  # days of outage
            delay = min(self._limits.retry_max, doubled)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _push_batch(self) -> bool:
        """Pushes the oldest waiting messages; False when the broker failed them."""
        count = min(self._limits.batch, len(self._waiting))
        batch = [self._waiting.popleft() for _ in range(count)]
        self._in_flight = batch
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._limits.publish_timeout):
                await self._publisher.push([(e.queue, e.message) for e in batch])
        except BaseException as exc:
            # Back at the front, in order: published with the next push (if the broker took
            # some of them before failing, those are sent twice: a no-op at the worker).
            self._in_flight = []
            self._waiting.extendleft(reversed(batch))
            if not isinstance(exc, Exception):
                raise  # cancelled: close() gave up
            PUBLISH_SECONDS.observe(time.monotonic() - started)
            self._failed(len(batch), exc)
            return False
        self._in_flight = []
        PUBLISH_SECONDS.observe(time.monotonic() - started)
        self._published(batch)
        return True

    def _failed(self, jobs: int, exc: Exception) -> None:
        PUBLISH_FAILURES.inc()
        now = time.monotonic()
        if not self._failures:
            self._first_failure_at = now
        self._failures += 1
        self._last_failure_at = now
        log.warning(
            "outbox_publish_failed",
            jobs=jobs,
            waiting=self.backlog,
            attempt=self._failures,
            error=type(exc).__name__,
            detail=str(exc)[:200],
        )

    def _published(self, batch: list[_Entry]) -> None:
        now = time.monotonic()
        for entry in batch:
            self._bytes -= len(entry.message)
            entry.origin.settle(published=True)
            if entry.accepted_at <= self._last_failure_at:  # delayed by the broker: say so
                with job_context(entry.job_id, entry.idempotency_key, task=entry.task):
                    log.info("job_published", waited_seconds=round(now - entry.accepted_at, 3))
        OUTBOX_JOBS.dec(len(batch))
        PUBLISHED.inc(len(batch))
        self._marks.add(e.job_id for e in batch)
        if self._failures:
            log.info(
                "outbox_publish_recovered",
                jobs=len(batch),
                waiting=self.backlog,
                failed_attempts=self._failures,
                outage_seconds=round(now - self._first_failure_at, 3),
            )
            self._failures = 0

    def _expire(self) -> None:
        """Drops jobs that waited longer than ``max_age`` (the oldest are first)."""
        cutoff = time.monotonic() - self._limits.max_age
        old: list[_Entry] = []
        while self._waiting and self._waiting[0].accepted_at < cutoff:
            old.append(self._waiting.popleft())
        if old:
            self._drop(old, "max_age")

    def _trim(self) -> None:
        """Drops the oldest waiting jobs while more than ``max_jobs`` or ``max_bytes`` wait."""
        excess = self.backlog - self._limits.max_jobs
        size = self._bytes
        over: list[_Entry] = []
        while self._waiting and (len(over) < excess or size > self._limits.max_bytes):
            entry = self._waiting.popleft()
            size -= len(entry.message)
            over.append(entry)
        if over:
            self._drop(over, "backlog_full")

    def _drop(self, entries: list[_Entry], reason: str) -> None:
        """Stops trying to publish ``entries`` (already out of the queue): the reconciler will,
        from their ledger rows."""
        now = time.monotonic()
        for entry in entries:
            self._bytes -= len(entry.message)
            entry.origin.settle(published=False)
            with job_context(entry.job_id, entry.idempotency_key, task=entry.task):
                log.info(
                    "job_left_to_reconciler",
                    reason=reason,
                    waited_seconds=round(now - entry.accepted_at, 3),
                )
        OUTBOX_JOBS.dec(len(entries))
        OUTBOX_DROPPED.labels(reason=reason).inc(len(entries))
        log.warning("outbox_jobs_left_to_reconciler", jobs=len(entries), reason=reason)
