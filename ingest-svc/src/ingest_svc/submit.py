"""Submitting and looking up jobs: the logic behind both front doors.

A submit records the job in the Postgres ledger first (the idempotency key is a unique
constraint, so racing submits resolve there), then publishes it, answers, and notes soon after
that the broker has it (``enqueued_at``, written in batches: marks.py). A re-submit of the
same key with the same task and payload returns the first job and publishes nothing, unless
the first publish never completed, in which case it publishes again.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ingest_svc.marks import EnqueueMarks
from ingest_svc.metrics import JOBS_SUBMITTED
from relayq_core.db.ledger import UNAVAILABLE_ERRORS, ExistingJob, JobLedger
from relayq_core.errors import AlreadyExists, NotFound, RelayqError, Unavailable
from relayq_core.jobs import JobRecord, JobSpec, JobState, SubmitResult
from relayq_core.logging import get_logger, job_context
from relayq_core.publish import Publisher

log = get_logger(__name__)

_DB_ERRORS = UNAVAILABLE_ERRORS


def _match(
    spec: JobSpec, existing: list[ExistingJob], client_named_job_id: bool
) -> SubmitResult | RelayqError:
    """Decides what an already-recorded key or job id means for this submission."""
    by_key = next((e for e in existing if e.idempotency_key == spec.idempotency_key), None)
    if by_key is None:
        return AlreadyExists(
            f'job_id "{spec.job_id}" already exists with a different idempotency_key'
        )
    if by_key.fingerprint != spec.fingerprint:
        return AlreadyExists(
            f'idempotency_key "{spec.idempotency_key}" was already used for job '
            f'"{by_key.job_id}" with a different task or payload'
        )
    if client_named_job_id and spec.job_id != by_key.job_id:
        # The client named both: they must agree with the first submit.
        return AlreadyExists(
            f'idempotency_key "{spec.idempotency_key}" belongs to job "{by_key.job_id}", '
            f'not "{spec.job_id}"'
        )
    return SubmitResult(
        job_id=by_key.job_id,
        idempotency_key=by_key.idempotency_key,
        queue=by_key.queue,
        state=by_key.state,
        duplicate=True,
    )


class JobService:
    """Submit and GetJob over the ledger and the broker."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        ledger: JobLedger,
        *,
        republish_after_seconds: float = 10.0,
        mark_interval_seconds: float = 0.05,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._ledger = ledger
        self._republish_after = republish_after_seconds
        self._marks = EnqueueMarks(pool, ledger, mark_interval_seconds)

    async def close(self) -> None:
        """Writes the marks still pending (call before closing the pool)."""
        await self._marks.close()

    async def submit(
        self, specs: Sequence[JobSpec], *, generated_ids: set[str] | None = None
    ) -> list[SubmitResult | RelayqError]:
        """Records and enqueues each job; the answer for each, in order.

        ``generated_ids`` are job ids the server made up (not the client's): a re-submit of a key
        never conflicts over them.
        """
        generated = generated_ids or set()
        # One connection for the whole submit: its statements, and one release, not one per
        # statement (docs/benchmarks.md).
        try:
            async with self._pool.acquire() as conn:
                return await self._submit(conn, specs, generated)
        except _DB_ERRORS as exc:
            raise Unavailable(f"the job ledger is unavailable ({type(exc).__name__})") from exc

    async def _submit(
        self, conn: asyncpg.Connection, specs: Sequence[JobSpec], generated: set[str]
    ) -> list[SubmitResult | RelayqError]:
        inserted = await self._ledger.insert_jobs(conn, specs)
        # The first spec of each inserted job is new; any other (a repeat within this batch, or
        # a job recorded before) is answered from what the ledger holds.
        first: dict[str, int] = {}
        for n, spec in enumerate(specs):
            if spec.job_id in inserted:
                first.setdefault(spec.job_id, n)
        others = [s for n, s in enumerate(specs) if first.get(s.job_id) != n]
        existing = (
            await self._ledger.find_existing(
                conn,
                [s.idempotency_key for s in others],
                [s.job_id for s in others if s.job_id not in generated],
            )
            if others
            else []
        )

        results: list[SubmitResult | RelayqError] = []
        to_publish: list[JobSpec] = []
        unpublished: dict[str, JobSpec] = {}
        for n, spec in enumerate(specs):
            if first.get(spec.job_id) == n:
                results.append(
                    SubmitResult(
                        spec.job_id,
                        spec.idempotency_key,
                        spec.queue,
                        JobState.QUEUED,
                        duplicate=False,
                    )
                )
                to_publish.append(spec)
                continue
            relevant = [
                e
                for e in existing
                if e.idempotency_key == spec.idempotency_key
                or (e.job_id == spec.job_id and spec.job_id not in generated)
            ]
            outcome = _match(spec, relevant, client_named_job_id=spec.job_id not in generated)
            if isinstance(outcome, SubmitResult):
                found = next(e for e in relevant if e.idempotency_key == spec.idempotency_key)
                if not found.enqueued and found.state is JobState.QUEUED:
                    unpublished[found.job_id] = JobSpec(
                        found.job_id,
                        found.idempotency_key,
                        spec.task,
                        found.queue,
                        spec.payload,
                        spec.trace_id,
                    )
            results.append(outcome)
        new_ids = [s.job_id for s in to_publish]
        candidates = [j for j in unpublished if j not in first]
        if candidates:
            # The first submit recorded these but never saw the broker accept them (it failed
            # or died midway). One caller, after a grace period, publishes them again.
            again = await self._ledger.claim_republish(conn, candidates, self._republish_after)
            to_publish.extend(unpublished[j] for j in candidates if j in again)

        try:
            await self._publisher.publish(to_publish)
        except Exception as exc:  # redis raises many types; all mean "not enqueued"
            await self._forget(conn, new_ids)
            log.warning("publish_failed", jobs=len(to_publish), error=type(exc).__name__)
            failed = {s.job_id for s in to_publish}
            unavailable = Unavailable(
                f"the broker is unavailable ({type(exc).__name__}); retry with the same "
                "idempotency_key"
            )
            return [
                unavailable if isinstance(r, SubmitResult) and r.job_id in failed else r
                for r in results
            ]
        # Written in batches, after the answer (marks.py): the submit's one commit is the insert.
        self._marks.add(s.job_id for s in to_publish)
        self._log(specs, results)
        return results

    def _log(self, specs: Sequence[JobSpec], results: list[SubmitResult | RelayqError]) -> None:
        for spec, result in zip(specs, results, strict=True):
            with job_context(
                spec.job_id if not isinstance(result, SubmitResult) else result.job_id,
                spec.idempotency_key,
                task=spec.task,
            ):
                if isinstance(result, SubmitResult):
                    label = "duplicate" if result.duplicate else "accepted"
                    log.info("job_submitted", queue=result.queue, duplicate=result.duplicate)
                else:
                    label = "rejected"
                    log.info("job_refused", code=result.code.name, reason=result.message)
                JOBS_SUBMITTED.labels(task=spec.task, queue=spec.queue, outcome=label).inc()

    async def _forget(self, conn: asyncpg.Connection, job_ids: list[str]) -> None:
        """Removes jobs this call recorded but could not enqueue, so the refusal is honest."""
        if not job_ids:
            return
        try:
            await self._ledger.forget_unpublished(conn, job_ids)
        except _DB_ERRORS:
            log.warning("forget_unpublished_failed", jobs=len(job_ids))

    async def get_job(self, job_id: str) -> JobRecord:
        """The job with its attempts; NotFound when the ledger has no such job."""
        try:
            record = await self._ledger.get_job(self._pool, job_id)
        except _DB_ERRORS as exc:
            raise Unavailable(f"the job ledger is unavailable ({type(exc).__name__})") from exc
        if record is None:
            raise NotFound(f'no job with job_id "{job_id}"')
        return record
