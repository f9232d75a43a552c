"""The dead-letter store as the domain sees it: plain dataclasses, no generated protobuf types.

``dlq_svc.convert`` turns requests into these and these into responses; everything between
(validation, the store, replay) works with them only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from relayq_core.deadletter import DeadLetterReport, Reason
from relayq_core.jobs import AttemptRecord, JsonObject

# One Reason enum and one report type for the worker and dlq-svc (relayq_core.deadletter).
__all__ = ["DeadLetterReport", "Reason"]


class Status(StrEnum):
    """Where an entry stands. Only ``active`` entries are replayed or dropped."""

    ACTIVE = "active"
    REPLAYED = "replayed"
    DROPPED = "dropped"


class Action(StrEnum):
    """The events of the audit trail."""

    DEAD_LETTERED = "dead_lettered"
    REPLAYED = "replayed"
    DROPPED = "dropped"


@dataclass(frozen=True)
class AuditRecord:
    """One event in an entry's life."""

    action: Action
    at: datetime
    actor: str
    reason: str = ""
    result: str = ""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the store: a job, its latest dead-lettering, and its status.

    ``traceback`` and ``audit`` are empty in listings (only :meth:`Store.get` fills them).
    """

    job_id: str
    idempotency_key: str
    task: str
    queue: str
    payload: JsonObject
    reason: Reason
    error_type: str
    error_message: str
    traceback: str
    attempts: list[AttemptRecord]
    trace_id: str
    first_failed_at: datetime
    dead_lettered_at: datetime
    final_attempt: int
    status: Status
    dead_letter_count: int
    created_at: datetime
    updated_at: datetime
    dropped_at: datetime | None = None
    audit: list[AuditRecord] = field(default_factory=list)


@dataclass(frozen=True)
class EntryRef:
    """What bulk operations need to know about an entry: who it is and where it stands."""

    job_id: str
    idempotency_key: str
    task: str
    status: Status


@dataclass(frozen=True)
class Filter:
    """The list/replay/drop filter; ``None`` fields are not applied, set fields are ANDed."""

    task: str | None = None
    reason: Reason | None = None
    status: Status | None = None
    since: datetime | None = None
    until: datetime | None = None
    error_contains: str | None = None


@dataclass(frozen=True)
class Cursor:
    """A position in the newest-first order: strictly after this (dead_lettered_at, job_id)."""

    dead_lettered_at: datetime
    job_id: str


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next`` is None on the last page."""

    entries: list[DeadLetter]
    next: Cursor | None


@dataclass(frozen=True)
class Selection:
    """What a bulk replay or drop works on: explicit ids, or the active entries of a filter."""

    ids: tuple[str, ...] = ()
    filter: Filter | None = None


@dataclass(frozen=True)
class Stats:
    """Counts for the dashboard and ``dlq-tool stats``."""

    active: int
    by_task: list[tuple[str, int]]
    by_reason: list[tuple[str, int]]
    by_status: list[tuple[str, int]]
    oldest_active_at: datetime | None
    oldest_active_id: str
    by_task_reason: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ReportOutcome:
    """What a report did: stored a new dead-lettering, or found it already stored."""

    entry: DeadLetter
    duplicate: bool


@dataclass(frozen=True)
class ReplayProgress:
    """One streamed replay message: what happened to one entry, and how far along we are."""

    job_id: str
    result: str
    done: int
    total: int
