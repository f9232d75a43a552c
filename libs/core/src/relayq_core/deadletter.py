"""The dead-letter report: one typed record from the worker's decision to dlq-svc's store.

A worker that decides to dead-letter a job stages a :class:`StagedDeadLetter` in the ledger
(``relayq_jobs.pending_dead_letter``, JSON) under the job's lock; whichever delivery hands it
off reads it back and sends a :class:`DeadLetterReport` (the staged failure plus the job's whole
record) to dlq-svc, which validates the request into the same type. One :class:`Reason` enum
serves all three places, and :mod:`relayq_core.convert` encodes the report for the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from relayq_core.jobs import AttemptRecord, JobRecord, JsonObject


class Reason(StrEnum):
    """Why a job was dead-lettered (the strings dlq-svc stores and filters on)."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    PERMANENT_ERROR = "permanent_error"
    WORKER_LOST = "worker_lost"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class StagedDeadLetter:
    """The failure that dead-letters a job, as staged in the ledger until dlq-svc has it.

    ``dead_lettered_at`` is set by the ledger when it stages the record (the database's clock,
    like every other time the ledger keeps), so it is None only before staging.
    """

    reason: Reason
    error_type: str
    error_message: str
    traceback: str
    final_attempt: int
    worker: str
    dead_lettered_at: datetime | None = None

    def to_json(self) -> JsonObject:
        """The JSON the ledger stores (``dead_lettered_at`` is the ledger's to add)."""
        return {
            "reason": self.reason.value,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "final_attempt": self.final_attempt,
            "worker": self.worker,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StagedDeadLetter:
        """Reads back what :meth:`to_json` staged (and the ledger's ``dead_lettered_at``)."""
        at = data.get("dead_lettered_at")
        return cls(
            reason=Reason(data["reason"]),
            error_type=str(data["error_type"]),
            error_message=str(data["error_message"]),
            traceback=str(data["traceback"]),
            final_attempt=int(data["final_attempt"]),
            worker=str(data["worker"]),
            dead_lettered_at=datetime.fromisoformat(at) if isinstance(at, str) else None,
        )


@dataclass(frozen=True)
class DeadLetterReport:
    """A dead-lettering as dlq-svc stores it: the job, why it failed, and every attempt."""

    job_id: str
    idempotency_key: str
    task: str
    queue: str
    payload: JsonObject
    reason: Reason
    error_type: str
    error_message: str
    traceback: str
    attempts: Sequence[AttemptRecord]
    trace_id: str
    first_failed_at: datetime
    dead_lettered_at: datetime
    final_attempt: int
    worker: str

    @classmethod
    def of(cls, job: JobRecord, staged: StagedDeadLetter) -> DeadLetterReport:
        """The report of ``job``, dead-lettered by ``staged``."""
        failed = [a for a in job.attempts if a.outcome != "succeeded"]
        first_failed = failed[0].started_at if failed else job.updated_at
        return cls(
            job_id=job.job_id,
            idempotency_key=job.idempotency_key,
            task=job.task,
            queue=job.queue,
            payload=job.payload,
            reason=staged.reason,
            error_type=staged.error_type,
            error_message=staged.error_message,
            traceback=staged.traceback,
            attempts=list(job.attempts),
            trace_id=job.trace_id,
            first_failed_at=first_failed,
            dead_lettered_at=staged.dead_lettered_at or job.updated_at,
            final_attempt=staged.final_attempt,
            worker=staged.worker,
        )
