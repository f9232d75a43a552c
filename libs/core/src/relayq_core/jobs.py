"""The job as the domain sees it: plain dataclasses, no generated protobuf types.

Servicers convert at the edge (``from_proto`` / ``to_proto`` in each service, and
:mod:`relayq_core.convert` for what several services send alike); everything else works with
these.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

JsonObject = dict[str, Any]


class JobState(StrEnum):
    """A job's place in its life; the strings are what the ledger stores."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"

    @property
    def terminal(self) -> bool:
        """True once nothing more will happen to the job."""
        return self in (JobState.SUCCEEDED, JobState.DEAD_LETTERED)


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(task: str, payload: JsonObject) -> bytes:
    """What makes two submits "the same request": the task and the payload, canonicalised."""
    return hashlib.sha256(canonical_json([task, payload]).encode()).digest()


@dataclass(frozen=True)
class JobSpec:
    """A validated submission, ready for the ledger and the broker."""

    job_id: str
    idempotency_key: str
    task: str
    queue: str
    payload: JsonObject
    trace_id: str = ""

    @property
    def fingerprint(self) -> bytes:
        """See :func:`fingerprint`."""
        return fingerprint(self.task, self.payload)


@dataclass(frozen=True)
class AttemptRecord:
    """One run of a job."""

    number: int
    worker: str
    started_at: datetime
    duration_seconds: float
    outcome: str
    error_type: str = ""
    error_message: str = ""
    countdown_seconds: float = 0.0


@dataclass(frozen=True)
class JobRecord:
    """A job as the ledger holds it."""

    job_id: str
    idempotency_key: str
    task: str
    queue: str
    payload: JsonObject
    state: JobState
    attempt_count: int
    result: Any
    last_error: str
    trace_id: str
    created_at: datetime
    updated_at: datetime
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    duplicate_deliveries: int = 0
    worker_losses: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)


@dataclass(frozen=True)
class SubmitResult:
    """What a submit did: recorded a new job, or found the same request already recorded."""

    job_id: str
    idempotency_key: str
    queue: str
    state: JobState
    duplicate: bool
