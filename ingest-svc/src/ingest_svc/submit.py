"""Submitting and looking up jobs: the logic behind both front doors.

A submit records the job in the Postgres ledger (the idempotency key is a unique constraint,
so racing submits resolve there) and answers once that commit is done: the job is accepted,
and will be published. Publishing happens in the background (outbox.py), and the reconciler
publishes whatever this process does not. Redis is never on the submit's path: a broker outage
delays jobs, it never refuses, deletes or holds up a submit. The only infrastructure refusal is
the ledger's (``UNAVAILABLE``).

A re-submit of the same key with the same task and payload returns the first job and publishes
nothing, whether or not the first has reached the broker yet: it will.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ingest_svc.marks import EnqueueMarks
from ingest_svc.metrics import JOBS_SUBMITTED
from ingest_svc.outbox import Outbox, OutboxLimits
from relayq_core.db.ledger import UNWRITABLE_ERRORS, ExistingJob, JobLedger
from relayq_core.errors import AlreadyExists, NotFound, RelayqError, Unavailable
from relayq_core.jobs import JobRecord, JobSpec, JobState, SubmitResult
from relayq_core.logging import get_logger, job_context
from relayq_core.publish import Publisher
from relayq_core.telemetry import job_attributes, tag_current_span

log = get_logger(__name__)

_DB_ERRORS = UNWRITABLE_ERRORS


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
    """Submit and GetJob over the ledger; the broker is the outbox's business."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        ledger: JobLedger,
        *,
        outbox: OutboxLimits | None = None,
        mark_interval_seconds: float = 0.05,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._ledger = ledger
        self._marks = EnqueueMarks(pool, ledger, mark_interval_seconds)
        self.outbox = Outbox(publisher, self._marks, outbox)

    async def close(self) -> None:
        """Publishes what the outbox holds (for a bounded time), then writes the marks still
        pending (call after the servers stopped, before closing the pool and the publisher)."""
        await self.outbox.close()
        await self._marks.close()

    async def submit(
        self, specs: Sequence[JobSpec], *, generated_ids: set[str] | None = None
    ) -> list[SubmitResult | RelayqError]:
        """Records each job, to be published; the answer for each, in order.

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
            error = Unavailable(f"the job ledger is unavailable ({type(exc).__name__}: {exc})")
            # One line per job turned away, with its ids: what IngestRefusing's runbook greps.
            for spec in specs:
                with job_context(spec.job_id, spec.idempotency_key, task=spec.task):
                    log.warning("job_refused", code=error.code.name, reason=error.message)
            raise error from exc

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
        # The insert has committed: these jobs are accepted, whatever happens next (even if
        # the lookup below fails and this call answers UNAVAILABLE: a retry finds them).
        self.outbox.add([specs[n] for n in sorted(first.values())])
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
                continue
            relevant = [
                e
                for e in existing
                if e.idempotency_key == spec.idempotency_key
                or (e.job_id == spec.job_id and spec.job_id not in generated)
            ]
            # A duplicate publishes nothing, even if the first is not in the broker yet: its
            # submit's outbox, or else the reconciler, publishes it.
            results.append(_match(spec, relevant, client_named_job_id=spec.job_id not in generated))
        self._log(specs, results)
        tag_current_span(job_attributes([r.job_id for r in results if isinstance(r, SubmitResult)]))
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

    async def get_job(self, job_id: str) -> JobRecord:
        """The job with its attempts; NotFound when the ledger has no such job."""
        try:
            record = await self._ledger.get_job(self._pool, job_id)
        except _DB_ERRORS as exc:
            raise Unavailable(f"the job ledger is unavailable ({type(exc).__name__})") from exc
        if record is None:
            raise NotFound(f'no job with job_id "{job_id}"')
        return record
