"""The dead-letter store: a :class:`Store` protocol and its PostgreSQL implementation.

SQL lives in ``sql/store.sql``, loaded by name. Every method picks its own connection from the
pool and transaction, except :meth:`Store.claim_for_replay`, which hands the caller a locked
entry and the transaction it is locked in (the replay re-opens the job in the ledger in that
same transaction, so the entry and the ledger change together or not at all).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from dlq_svc.model import (
    Action,
    AuditRecord,
    Cursor,
    DeadLetter,
    DeadLetterReport,
    EntryRef,
    Filter,
    Page,
    Reason,
    ReportOutcome,
    Stats,
    Status,
)
from dlq_svc.validation import like_pattern
from relayq_core.db.ledger import UNAVAILABLE_ERRORS, Executor
from relayq_core.db.queries import load_queries
from relayq_core.errors import Unavailable
from relayq_core.jobs import AttemptRecord

_Q = load_queries(Path(__file__).with_name("sql") / "store.sql")

#: Drops and purges work in statements of at most this many entries.
BATCH = 1000


class ReplayClaim(Protocol):
    """An active entry locked for replay, and the transaction that holds the lock."""

    @property
    def entry(self) -> DeadLetter:
        """The entry as locked (status ``active``)."""
        ...

    @property
    def conn(self) -> Executor:
        """The transaction's connection: ledger work done on it commits with the entry."""
        ...

    async def mark_replayed(self, actor: str, note: str, result: str) -> None:
        """Marks the entry replayed and writes its audit record (commits on leaving the block)."""
        ...


class Store(Protocol):
    """Everything dlq-svc keeps: entries, their dead-letterings and their audit trail."""

    async def report(self, report: DeadLetterReport) -> ReportOutcome:
        """Stores a dead-lettering; a repeat of a stored one (same job and final attempt) is a
        duplicate and changes nothing."""
        ...

    async def get(self, job_id: str) -> DeadLetter | None:
        """The entry with its traceback and audit trail, or None."""
        ...

    async def page(self, filter: Filter, limit: int, after: Cursor | None) -> Page:
        """Up to ``limit`` entries, newest first, strictly after ``after``."""
        ...

    async def stats(self) -> Stats:
        """Counts by task and reason (active entries) and by status (all)."""
        ...

    async def select(self, filter: Filter) -> list[EntryRef]:
        """Every entry matching ``filter``, oldest first."""
        ...

    async def find(self, ids: Sequence[str]) -> dict[str, EntryRef]:
        """The entries among ``ids`` that exist, by id."""
        ...

    def claim_for_replay(self, job_id: str) -> AbstractAsyncContextManager[ReplayClaim | None]:
        """Locks the entry for the block if it is active (else yields None)."""
        ...

    async def drop(self, ids: Sequence[str], actor: str, reason: str) -> list[EntryRef]:
        """Drops the active entries among ``ids``, each with an audit record; those dropped."""
        ...

    async def purge(self, before: datetime, *, dry_run: bool) -> int:
        """Deletes entries dropped before ``before`` (with their history and audit); how many."""
        ...


@contextmanager
def unavailable_on_db_errors() -> Iterator[None]:
    """Turns "the database is unreachable" into :class:`Unavailable` (a retryable status)."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise Unavailable(f"the DLQ store is unavailable ({type(exc).__name__})") from exc


def attempt_to_json(attempt: AttemptRecord) -> dict[str, Any]:
    """One attempt as stored in ``dlq_entries.attempts``."""
    return {
        "number": attempt.number,
        "worker": attempt.worker,
        "started_at": attempt.started_at.isoformat(),
        "duration_seconds": attempt.duration_seconds,
        "outcome": attempt.outcome,
        "error_type": attempt.error_type,
        "error_message": attempt.error_message,
        "countdown_seconds": attempt.countdown_seconds,
    }


def attempt_from_json(data: dict[str, Any]) -> AttemptRecord:
    """The inverse of :func:`attempt_to_json`."""
    return AttemptRecord(
        number=int(data["number"]),
        worker=str(data.get("worker", "")),
        started_at=datetime.fromisoformat(data["started_at"]),
        duration_seconds=float(data.get("duration_seconds", 0.0)),
        outcome=str(data.get("outcome", "")),
        error_type=str(data.get("error_type", "")),
        error_message=str(data.get("error_message", "")),
        countdown_seconds=float(data.get("countdown_seconds", 0.0)),
    )


def merge_attempts(
    stored: list[dict[str, Any]], reported: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every attempt of both lists, by number; the newer report wins for a number in both.

    A report normally lists every attempt (the ledger keeps them across replays), so this is
    the reported list; if the ledger purged the job before a replay, the older attempts live
    on only here, and are kept.
    """
    by_number = {int(a["number"]): a for a in stored}
    by_number.update({int(a["number"]): a for a in reported})
    return [by_number[n] for n in sorted(by_number)]


def _entry(row: asyncpg.Record, audit: list[AuditRecord] | None = None) -> DeadLetter:
    return DeadLetter(
        job_id=row["job_id"],
        idempotency_key=row["idempotency_key"],
        task=row["task"],
        queue=row["queue"],
        payload=row["payload"],
        reason=Reason(row["reason"]),
        error_type=row["error_type"],
        error_message=row["error_message"],
        traceback=row["traceback"],
        attempts=[attempt_from_json(a) for a in row["attempts"]],
        trace_id=row["trace_id"],
        first_failed_at=row["first_failed_at"],
        dead_lettered_at=row["dead_lettered_at"],
        final_attempt=row["final_attempt"],
        status=Status(row["status"]),
        dead_letter_count=row["dead_letter_count"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        dropped_at=row["dropped_at"],
        audit=audit or [],
    )


def _ref(row: asyncpg.Record) -> EntryRef:
    return EntryRef(row["job_id"], row["idempotency_key"], row["task"], Status(row["status"]))


def _filter_args(f: Filter) -> list[Any]:
    return [
        f.task,
        f.reason.value if f.reason else None,
        f.status.value if f.status else None,
        f.since,
        f.until,
        like_pattern(f.error_contains) if f.error_contains else None,
    ]


def _error_summary(report: DeadLetterReport) -> str:
    error = f"{report.error_type}: {report.error_message}" if report.error_type else ""
    text = f"attempt {report.final_attempt}" + (f", {error}" if error else "")
    return text if len(text) <= 300 else text[:299] + "…"


class _PgReplayClaim:
    def __init__(self, conn: asyncpg.Connection, entry: DeadLetter) -> None:
        self._conn = conn
        self._entry = entry

    @property
    def entry(self) -> DeadLetter:
        return self._entry

    @property
    def conn(self) -> Executor:
        return self._conn  # type: ignore[no-any-return]

    async def mark_replayed(self, actor: str, note: str, result: str) -> None:
        await self._conn.execute(_Q["mark_replayed"], self._entry.job_id)
        await self._conn.execute(
            _Q["insert_audit"], self._entry.job_id, Action.REPLAYED.value, actor, note, result
        )


class PostgresStore:
    """:class:`Store` on an asyncpg pool (with relayq's json codecs: ``create_pool``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def report(self, report: DeadLetterReport) -> ReportOutcome:
        r = report
        attempts = [attempt_to_json(a) for a in r.attempts]
        actor = r.worker or "unknown"
        with unavailable_on_db_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                fresh = await conn.fetchrow(
                    _Q["insert_history"],
                    r.job_id,
                    r.final_attempt,
                    r.reason.value,
                    r.error_type,
                    r.error_message,
                    r.traceback,
                    r.worker,
                    r.trace_id,
                    r.dead_lettered_at,
                )
                if fresh is not None:
                    result = await self._store_dead_lettering(conn, r, attempts)
                    await conn.execute(
                        _Q["insert_audit"],
                        r.job_id,
                        Action.DEAD_LETTERED.value,
                        actor,
                        r.reason.value,
                        f"{result}; {_error_summary(r)}",
                    )
            entry = await self.get(r.job_id)
        assert entry is not None, "the report's transaction committed its entry"
        return ReportOutcome(entry=entry, duplicate=fresh is None)

    async def _store_dead_lettering(
        self, conn: asyncpg.Connection, r: DeadLetterReport, attempts: list[dict[str, Any]]
    ) -> str:
        """Creates or updates the entry for a new dead-lettering; the audit result."""
        inserted = await conn.fetchrow(
            _Q["insert_entry"],
            r.job_id,
            r.idempotency_key,
            r.task,
            r.queue,
            r.payload,
            r.reason.value,
            r.error_type,
            r.error_message,
            r.traceback,
            attempts,
            r.trace_id,
            r.first_failed_at,
            r.dead_lettered_at,
            r.final_attempt,
        )
        if inserted is not None:
            return "new entry"
        current = await conn.fetchrow(_Q["lock_entry"], r.job_id)
        assert current is not None, "insert_entry found the entry"
        if current["final_attempt"] > r.final_attempt:
            await conn.execute(_Q["count_late_dead_lettering"], r.job_id)
            return f"history only: older than attempt {current['final_attempt']}"
        await conn.execute(
            _Q["reactivate_entry"],
            r.job_id,
            r.reason.value,
            r.error_type,
            r.error_message,
            r.traceback,
            merge_attempts(current["attempts"], attempts),
            r.trace_id,
            r.first_failed_at,
            r.dead_lettered_at,
            r.final_attempt,
        )
        previous = current["status"]
        return "active again" if previous == Status.ACTIVE else f"active again (was {previous})"

    async def get(self, job_id: str) -> DeadLetter | None:
        with unavailable_on_db_errors():
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(_Q["get_entry"], job_id)
                if row is None:
                    return None
                audit = [
                    AuditRecord(Action(a["action"]), a["at"], a["actor"], a["reason"], a["result"])
                    for a in await conn.fetch(_Q["get_audit"], job_id)
                ]
        return _entry(row, audit)

    async def page(self, filter: Filter, limit: int, after: Cursor | None) -> Page:
        with unavailable_on_db_errors():
            rows = await self._pool.fetch(
                _Q["list_entries"],
                *_filter_args(filter),
                after.dead_lettered_at if after else None,
                after.job_id if after else None,
                limit + 1,
            )
        entries = [_entry(r) for r in rows[:limit]]
        more = len(rows) > limit
        last = entries[-1] if entries else None
        return Page(
            entries=entries,
            next=Cursor(last.dead_lettered_at, last.job_id) if more and last else None,
        )

    async def stats(self) -> Stats:
        with unavailable_on_db_errors():
            # One snapshot: the counts add up even while reports arrive.
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                by_status = {
                    r["key"]: int(r["count"]) for r in await conn.fetch(_Q["stats_by_status"])
                }
                by_task = [
                    (r["key"], int(r["count"]))
                    for r in await conn.fetch(_Q["stats_active_by_task"])
                ]
                by_reason = [
                    (r["key"], int(r["count"]))
                    for r in await conn.fetch(_Q["stats_active_by_reason"])
                ]
                by_task_reason = [
                    (r["task"], r["reason"], int(r["count"]))
                    for r in await conn.fetch(_Q["stats_active_by_task_reason"])
                ]
                oldest = await conn.fetchrow(_Q["oldest_active"])
        return Stats(
            active=by_status.get(Status.ACTIVE, 0),
            by_task=by_task,
            by_reason=by_reason,
            # Every status, zeros included: a dashboard's series never disappear.
            by_status=[(s.value, by_status.get(s.value, 0)) for s in Status],
            oldest_active_at=oldest["dead_lettered_at"] if oldest else None,
            oldest_active_id=oldest["job_id"] if oldest else "",
            by_task_reason=by_task_reason,
        )

    async def select(self, filter: Filter) -> list[EntryRef]:
        with unavailable_on_db_errors():
            rows = await self._pool.fetch(_Q["select_refs"], *_filter_args(filter))
        return [_ref(r) for r in rows]

    async def find(self, ids: Sequence[str]) -> dict[str, EntryRef]:
        with unavailable_on_db_errors():
            rows = await self._pool.fetch(_Q["find_refs"], list(ids))
        return {r["job_id"]: _ref(r) for r in rows}

    @asynccontextmanager
    async def claim_for_replay(self, job_id: str) -> AsyncIterator[ReplayClaim | None]:
        with unavailable_on_db_errors():
            conn = await self._pool.acquire()
        try:
            tx = conn.transaction()
            with unavailable_on_db_errors():
                await tx.start()
                row = await conn.fetchrow(_Q["lock_for_replay"], job_id)
            try:
                if row is None or row["status"] != Status.ACTIVE:
                    yield None
                else:
                    yield _PgReplayClaim(conn, _entry(row))
            except BaseException:
                # A dead connection rolls back by itself; the body's error is the one to report.
                with suppress(*UNAVAILABLE_ERRORS):
                    await tx.rollback()
                raise
            with unavailable_on_db_errors():
                await tx.commit()
        finally:
            # Session locks taken in the block (the job's lock: see dlq_svc.replay) are released
            # only now, after the commit has made the block's changes visible.
            with suppress(*UNAVAILABLE_ERRORS):
                await conn.execute(_Q["release_session_locks"])
            await self._pool.release(conn)

    async def drop(self, ids: Sequence[str], actor: str, reason: str) -> list[EntryRef]:
        dropped: list[EntryRef] = []
        with unavailable_on_db_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                for start in range(0, len(ids), BATCH):
                    rows = await conn.fetch(
                        _Q["drop_entries"], list(ids[start : start + BATCH]), actor, reason
                    )
                    dropped.extend(_ref(r) for r in rows)
        return dropped

    async def purge(self, before: datetime, *, dry_run: bool) -> int:
        with unavailable_on_db_errors():
            if dry_run:
                return int(await self._pool.fetchval(_Q["count_purgeable"], before))
            total = 0
            while True:
                status = await self._pool.execute(_Q["purge_dropped"], before, BATCH)
                deleted = int(status.split()[-1])
                total += deleted
                if deleted < BATCH:
                    return total
