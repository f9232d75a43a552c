"""Noting in the ledger that the broker has jobs' messages (``enqueued_at``), in batches, off
the submit's path.

A submit answers once its job is in the ledger (one PostgreSQL commit); the outbox
(outbox.py) publishes it soon after and hands its id here. The mark only serves recovery (the
reconciler's never-published rule, after ``unpublished_after_seconds``; the oldest-queued
gauge), so it needs to land within seconds. Marks are collected and written with one ``UPDATE``
every ``interval`` (default 50 ms): under load that is one statement and one commit for
hundreds of jobs instead of one each.

If ingest dies with marks not yet written, those jobs look never-published: the reconciler
publishes them again, and the second message is a duplicate delivery, which a worker's claim
turns into a no-op. If the ledger is unreachable, marks are kept and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import asyncpg

from relayq_core.db.ledger import UNAVAILABLE_ERRORS, JobLedger
from relayq_core.logging import get_logger

log = get_logger(__name__)

#: Marks kept while the ledger is unreachable; beyond this the oldest are dropped (their jobs
#: are published again by the reconciler: duplicates, never losses).
MAX_PENDING = 100_000


class EnqueueMarks:
    """A background writer of ``enqueued_at`` marks for one ingest process."""

    def __init__(self, pool: asyncpg.Pool, ledger: JobLedger, interval: float = 0.05) -> None:
        self._pool = pool
        self._ledger = ledger
        self._interval = interval
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, job_ids: Iterable[str]) -> None:
        """Marks these jobs' messages as in the broker, soon."""
        self._pending.extend(job_ids)
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.warning("enqueue_marks_dropped", jobs=dropped)
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        """Marks not written yet."""
        return len(self._pending)

    async def _run(self) -> None:
        # Runs while there is something to write: an idle ingest does not wake every interval.
        # add() starts it again (no await between the last check and the reset below).
        try:
            while self._pending:
                await asyncio.sleep(self._interval)
                await self.flush()
        finally:
            self._task = None

    async def flush(self) -> None:
        """Writes every pending mark now (kept for the next flush if the ledger fails)."""
        job_ids, self._pending = self._pending, []
        if not job_ids:
            return
        try:
            await self._ledger.mark_enqueued(self._pool, job_ids)
        except BaseException as exc:
            self._pending[:0] = job_ids  # cancelled or failed: the next flush writes them
            if not isinstance(exc, Exception):
                raise
            log.warning(
                "mark_enqueued_failed",
                jobs=len(job_ids),
                error=type(exc).__name__,
                unavailable=isinstance(exc, UNAVAILABLE_ERRORS),
            )

    async def close(self) -> None:
        """Stops the writer after a last flush."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
