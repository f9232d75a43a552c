"""The job ledger: the Postgres record of every job, shared by ingest and the workers.

Postgres is the source of truth for a job's existence and outcome; Redis only carries the
message. Every method takes the connection (or pool) to run on, so callers choose the
transaction: the worker runs a handler's effect and :meth:`JobLedger.complete` in one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from relayq_core.db.queries import SQL_DIR, load_queries
from relayq_core.deadletter import StagedDeadLetter
from relayq_core.jobs import AttemptRecord, JobRecord, JobSpec, JobState

_Q = load_queries(SQL_DIR / "ledger.sql")

#: Errors that mean "the database could not be reached, went away or cannot take us now" (too
#: many connections, out of resources), not "bad query". Only for relayq's own calls: what a
#: handler raises is the handler's, whatever its type (worker_svc/runner.py).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    # The connection's protocol state is broken (a pooled connection whose session was ended
    # under it: "cannot switch to state ..., another operation is in progress").
    asyncpg.InternalClientError,
)
#: For ingest, whose statements are its own: a ledger that takes no writes (a failover onto a
#: read-only replica, a database set read-only) is an outage too. Not for the worker, where a
#: read-only transaction may be the handler's own doing (``SET TRANSACTION READ ONLY``): that
#: is its failure, retried with backoff.
UNWRITABLE_ERRORS: tuple[type[BaseException], ...] = (
    *UNAVAILABLE_ERRORS,
    asyncpg.ReadOnlySQLTransactionError,
)


class Executor(Protocol):
    """What both ``asyncpg.Connection`` and ``asyncpg.Pool`` offer."""

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...
    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None: ...
    async def execute(self, query: str, *args: Any) -> str: ...


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decodes json/jsonb to Python values on this connection (pool ``init=`` hook)."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def rollback_only(conn: asyncpg.Connection) -> None:
    """A pool ``reset=`` hook for code that leaves no session state behind: only an open
    transaction is rolled back. asyncpg's default reset sends four statements (unlock advisory
    locks, close cursors, unlisten, reset settings) each time a connection is released."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    session_state: bool = True,
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    """A connection pool with relayq's codecs.

    ``session_state=False`` promises that no caller takes session advisory locks, LISTENs,
    opens cursors or changes settings outside a transaction (ingest), so releasing a
    connection costs no round trip (:func:`rollback_only`). ``command_timeout``: a statement
    still running after that many seconds is cancelled and raises ``TimeoutError``.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=None if session_state else rollback_only,
        command_timeout=command_timeout,
    )
    assert pool is not None
    return pool


async def connect(dsn: str, server_settings: dict[str, str] | None = None) -> asyncpg.Connection:
    """One connection with relayq's codecs (and these session settings)."""
    conn = await asyncpg.connect(dsn, server_settings=server_settings)
    await init_connection(conn)
    return conn


@dataclass(frozen=True)
class Claim:
    """A started attempt: its number, and whether an earlier delivery died holding the job
    (``abandoned``) or lost its database connection mid-attempt (``interrupted``).

    ``failures``: the retry budget the job's run has used so far; ``started_at``: when the
    attempt started, by the database's clock; ``waited_seconds``: how long the claim waited
    for the job's lock and row before taking the lease.
    """

    attempt: int
    worker_losses: int
    abandoned: bool
    interrupted: bool = False
    failures: int = 0
    started_at: datetime | None = None
    waited_seconds: float = 0.0


@dataclass(frozen=True)
class NotYet:
    """The job may not run now; ask again in ``seconds``. ``why``: ``retry_not_due`` (a retry
    whose time has not come: a duplicate or early message) or ``lease_held`` (a running attempt
    nobody holds the lock of, whose worker may still be running it until its lease runs out)."""

    seconds: float
    why: str


class AttemptSuperseded(Exception):
    """This attempt no longer owns its job (its worker's supervisor recorded it as timed out, or
    its lease ran out and another attempt took over): nothing of it may be recorded."""

    #: The SQLSTATE the ledger's functions raise (migration 0008).
    SQLSTATE = "RQ001"


@dataclass(frozen=True)
class Peek:
    """A job's state without claiming it."""

    state: JobState
    result: Any
    pending_dead_letter: StagedDeadLetter | None


@dataclass(frozen=True)
class ExistingJob:
    """The parts of a recorded job a re-submit is compared with."""

    job_id: str
    idempotency_key: str
    task: str
    queue: str
    fingerprint: bytes
    state: JobState


def _attempt(row: asyncpg.Record) -> AttemptRecord:
    return AttemptRecord(
        number=row["number"],
        worker=row["worker"],
        started_at=row["started_at"],
        duration_seconds=row["duration_seconds"],
        outcome=row["outcome"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        countdown_seconds=row["countdown_seconds"],
    )


@contextlib.contextmanager
def _superseded() -> Iterator[None]:
    """Turns the ledger's RQ001 into :class:`AttemptSuperseded`."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == AttemptSuperseded.SQLSTATE:
            raise AttemptSuperseded(str(exc)) from exc
        raise


class JobLedger:
    """The ledger's operations; stateless, so one instance serves a whole process."""

    async def insert_jobs(self, db: Executor, specs: Sequence[JobSpec]) -> set[str]:
        """Records new jobs in one round trip; returns the ids actually inserted."""
        if not specs:
            return set()
        rows = await db.fetch(
            _Q["insert_jobs"],
            [s.job_id for s in specs],
            [s.idempotency_key for s in specs],
            [s.task for s in specs],
            [s.queue for s in specs],
            [s.payload for s in specs],
            [s.fingerprint for s in specs],
            [s.trace_id for s in specs],
        )
        return {r["job_id"] for r in rows}

    async def find_existing(
        self, db: Executor, keys: Sequence[str], job_ids: Sequence[str]
    ) -> list[ExistingJob]:
        """Recorded jobs holding any of ``keys`` or ``job_ids``."""
        rows = await db.fetch(_Q["find_existing"], list(keys), list(job_ids))
        return [
            ExistingJob(
                job_id=r["job_id"],
                idempotency_key=r["idempotency_key"],
                task=r["task"],
                queue=r["queue"],
                fingerprint=bytes(r["fingerprint"]),
                state=JobState(r["state"]),
            )
            for r in rows
        ]

    async def mark_enqueued(self, db: Executor, job_ids: Sequence[str]) -> None:
        """Notes that the broker accepted these jobs' messages."""
        if job_ids:
            await db.execute(_Q["mark_enqueued"], list(job_ids))

    async def reopen_for_replay(self, db: Executor, job_ids: Sequence[str]) -> list[JobSpec]:
        """Queues dead-lettered jobs again (see SQL); the specs to publish."""
        if not job_ids:
            return []
        rows = await db.fetch(_Q["reopen_for_replay"], list(job_ids))
        return [
            JobSpec(
                job_id=r["job_id"],
                idempotency_key=r["idempotency_key"],
                task=r["task"],
                queue=r["queue"],
                payload=r["payload"],
                trace_id=r["trace_id"],
            )
            for r in rows
        ]

    async def oldest_queued(self, db: Executor, queue: str) -> datetime | None:
        """When the oldest job waiting in ``queue`` entered it, or None."""
        row = await db.fetchrow(_Q["oldest_queued"], queue)
        return None if row is None else row["since"]

    async def continue_attempt_numbering(self, db: Executor, job_id: str, at_least: int) -> None:
        """Makes the job's next attempt number follow ``at_least`` (see ledger.sql)."""
        await db.execute(_Q["continue_attempt_numbering"], job_id, at_least)

    async def counts(self, db: Executor) -> list[tuple[str, str, int]]:
        """(queue, state, count) for the whole ledger (an operator's command, not a scrape)."""
        rows = await db.fetch(_Q["counts_by_queue_and_state"])
        return [(r["queue"], r["state"], int(r["count"])) for r in rows]

    async def attention(self, db: Executor) -> dict[str, int]:
        """Counts of unfinished jobs an operator should look at (see ledger.sql)."""
        row = await db.fetchrow(_Q["attention_counts"])
        return {k: int(v) for k, v in dict(row or {}).items()}

    async def get_job(self, db: Executor, job_id: str) -> JobRecord | None:
        """The job with its attempts, or None."""
        row = await db.fetchrow(_Q["get_job"], job_id)
        if row is None:
            return None
        attempts = [_attempt(r) for r in await db.fetch(_Q["get_attempts"], job_id)]
        return JobRecord(
            job_id=row["job_id"],
            idempotency_key=row["idempotency_key"],
            task=row["task"],
            queue=row["queue"],
            payload=row["payload"],
            state=JobState(row["state"]),
            attempt_count=row["attempt_count"],
            result=row["result"],
            last_error=row["last_error"] or "",
            trace_id=row["trace_id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            enqueued_at=row["enqueued_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            next_attempt_at=row["next_attempt_at"],
            duplicate_deliveries=row["duplicate_deliveries"],
            worker_losses=row["worker_losses"],
            attempts=attempts,
        )

    async def lock_job(self, db: Executor, job_id: str) -> None:
        """Holds the job for this session (see ledger.sql); waits at most ``lock_timeout``."""
        await db.execute(_Q["lock_job"], job_id)

    async def unlock_job(self, db: Executor, job_id: str) -> None:
        """Releases :meth:`lock_job`."""
        await db.execute(_Q["unlock_job"], job_id)

    async def lock_and_claim(
        self,
        db: Executor,
        job_id: str,
        resuming: int | None = None,
        *,
        lease_seconds: float = 15.0,
        max_interruptions: int = 3,
        unsafe_skip_lock: bool = False,
    ) -> Claim | NotYet | None:
        """Holds the job for this session (:meth:`lock_job`) and starts an attempt leased for
        ``lease_seconds``; :class:`NotYet` when it may not run now; None when the job is
        finished, awaiting its DLQ report, or unknown. The lock is held in every case.

        Waits at most ``lock_timeout`` for another delivery or for the job's row
        (``LockNotAvailableError``; the lock may be held by then: release it). ``resuming``:
        the attempt this delivery continues after a database outage cut it short (not a worker
        loss), free up to ``max_interruptions`` in a row, a worker loss beyond.
        ``unsafe_skip_lock``: tests only (see ``claim_unsafely`` in ledger.sql).
        """
        query = _Q["claim_unsafely"] if unsafe_skip_lock else _Q["lock_and_claim"]
        args = (
            (job_id, lease_seconds)
            if unsafe_skip_lock
            else (job_id, resuming, lease_seconds, max_interruptions)
        )
        row = await db.fetchrow(query, *args)
        if row is None:
            return None
        if row["attempt"] is None:
            return NotYet(
                float(row["wait_seconds"]),
                "retry_not_due" if row["prev_state"] == JobState.RETRYING.value else "lease_held",
            )
        interrupted = bool(row["interrupted"])
        return Claim(
            attempt=int(row["attempt"]),
            worker_losses=int(row["losses"]),
            abandoned=row["prev_state"] == JobState.RUNNING.value and not interrupted,
            interrupted=interrupted,
            failures=int(row["failures"]),
            started_at=row["started_at"],
            waited_seconds=float(row["waited_seconds"]),
        )

    async def renew_lease(
        self, db: Executor, job_id: str, attempt: int, lease_seconds: float, holder_pid: int
    ) -> bool:
        """Extends attempt ``attempt``'s lease while the session ``holder_pid`` still holds the
        job's lock; False when it does not (or the attempt is over)."""
        row = await db.fetchrow(_Q["renew_lease"], job_id, attempt, lease_seconds, holder_pid)
        return row is not None

    async def record_duplicate(self, db: Executor, job_id: str) -> tuple[JobState, Any] | None:
        """Counts a delivery that found the job finished; its state and stored result."""
        row = await db.fetchrow(_Q["record_duplicate"], job_id)
        return None if row is None else (JobState(row["state"]), row["result"])

    async def purge_finished(self, db: Executor, before: datetime, batch: int = 1000) -> int:
        """Deletes up to ``batch`` finished jobs that finished before ``before``; how many."""
        status = await db.execute(_Q["purge_finished"], before, batch)
        return int(status.split()[-1])

    async def peek_state(self, db: Executor, job_id: str) -> Peek | None:
        """The job's state, stored result and pending dead letter, or None when unknown."""
        row = await db.fetchrow(_Q["peek_state"], job_id)
        if row is None:
            return None
        staged = row["pending_dead_letter"]
        return Peek(
            JobState(row["state"]),
            row["result"],
            None if staged is None else StagedDeadLetter.from_json(staged),
        )

    async def mark_dead_lettered(self, db: Executor, job_id: str, final_attempt: int) -> None:
        """dlq-svc has the dead letter of attempt ``final_attempt``: the job is dead-lettered
        now (unless a newer dead letter is staged meanwhile)."""
        await db.execute(_Q["mark_dead_lettered"], job_id, final_attempt)

    async def complete(
        self, db: Executor, job_id: str, result: Any, attempt: AttemptRecord, *, unlock: bool
    ) -> None:
        """Records success, the handler's result and the succeeding attempt; ``unlock`` also
        releases :meth:`lock_job` (only outside a transaction: see ledger.sql). Raises
        :class:`AttemptSuperseded` when the attempt no longer owns the job."""
        with _superseded():
            await db.execute(
                _Q["complete"],
                job_id,
                result,
                attempt.number,
                attempt.worker,
                attempt.started_at,
                attempt.duration_seconds,
                unlock,
            )

    async def settle_failure(
        self,
        db: Executor,
        job_id: str,
        attempt: AttemptRecord,
        *,
        error: str,
        counted: bool,
        dead_letter: StagedDeadLetter | None,
    ) -> datetime | None:
        """Records a failed attempt and what follows it: a retry after
        ``attempt.countdown_seconds`` by the database's clock (its time is returned), or, with
        ``dead_letter``, the dead letter staged until dlq-svc has it (None). ``counted``: the
        attempt used the retry budget. Raises :class:`AttemptSuperseded` when the attempt no
        longer owns the job."""
        with _superseded():
            row = await db.fetchrow(
                _Q["settle_failure"],
                job_id,
                attempt.number,
                attempt.outcome,
                attempt.worker,
                attempt.started_at,
                attempt.duration_seconds,
                attempt.error_type,
                attempt.error_message,
                attempt.countdown_seconds,
                None if dead_letter is None else dead_letter.to_json(),
                error,
                counted,
            )
        assert row is not None
        due: datetime | None = row["due"]
        return due

    async def fail(
        self,
        db: Executor,
        job_id: str,
        state: JobState,
        error: str,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Records a failed attempt's effect on the job: retrying later, or dead-lettered."""
        if state not in (JobState.RETRYING, JobState.DEAD_LETTERED):
            raise ValueError(f"fail() moves a job to retrying or dead_lettered, not {state}")
        await db.execute(_Q["fail"], job_id, state.value, error, next_attempt_at)

    async def record_attempt(self, db: Executor, job_id: str, attempt: AttemptRecord) -> None:
        """Stores one attempt (idempotent on ``(job_id, number)``)."""
        await db.execute(
            _Q["record_attempt"],
            job_id,
            attempt.number,
            attempt.worker,
            attempt.started_at,
            attempt.duration_seconds,
            attempt.outcome,
            attempt.error_type,
            attempt.error_message,
            attempt.countdown_seconds,
        )

    async def touch_staged_dead_letter(self, db: Executor, job_id: str) -> None:
        """Notes that a worker still tries to hand this staged dead letter to dlq-svc (the
        reconciler re-publishes only dead letters nobody touches)."""
        await db.execute(_Q["touch_staged_dead_letter"], job_id)
