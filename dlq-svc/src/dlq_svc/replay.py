"""Replay: re-enqueue dead-lettered jobs with their original ``job_id`` and ``idempotency_key``.

Each entry is replayed in one PostgreSQL transaction:

1. lock the entry's row (a concurrent replay of the same entry waits here, then finds it
   replayed and skips it: an entry is enqueued once);
2. take the job's lock (``JobLedger.lock_job``, the one every delivery of the job takes first):
   a delivery of the message published below waits until this transaction has committed, so
   it never sees the ledger half-way;
3. make sure the job is in the ledger (``insert_jobs``, ON CONFLICT DO NOTHING: the ledger may
   have purged it; a re-created job's attempt numbers continue from the dead letter's) and
   re-open it (``reopen_for_replay``: dead-lettered -> queued; a job that succeeded meanwhile
   is not re-opened and the entry is skipped);
4. publish the message (original ids: a job whose effect already happened is a no-op at the
   worker);
5. ``mark_enqueued``, mark the entry replayed with its audit record; commit; release the job.

A crash, a lost database or a broker that refuses the message before the commit rolls all of
it back: the entry stays active and the ledger still says dead-lettered. If the message did get
out before the rollback, its delivery finds the job dead-lettered and does nothing (the
worker's claim only takes unfinished jobs). So each entry ends either still active or replayed
and enqueued, never in between, and replaying again is always safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from dlq_svc.metrics import REPLAYS, replay_outcome
from dlq_svc.model import EntryRef, ReplayProgress, Selection, Status
from dlq_svc.store import Store, unavailable_on_db_errors
from relayq_core.db.ledger import Executor, JobLedger
from relayq_core.db.queries import load_queries
from relayq_core.errors import Unavailable
from relayq_core.jobs import JobSpec, JobState
from relayq_core.logging import get_logger, job_context
from relayq_core.publish import Publisher
from relayq_core.telemetry import JOB_ID

log = get_logger(__name__)

_Q = load_queries(Path(__file__).with_name("sql") / "replay.sql")

REPLAYED = "replayed"
WOULD_REPLAY = "would_replay"
#: How long a replay waits for a worker to let go of the job (a dead-lettered job is normally
#: held only for the moment a stray duplicate delivery needs to see it is finished).
LOCK_TIMEOUT = "5s"


class _Skip(Exception):
    """This entry is not replayed now; ``result`` says why (the transaction rolls back)."""

    def __init__(self, result: str) -> None:
        super().__init__(result)
        self.result = result


class Pacer:
    """Spaces events at least ``1/rate`` seconds apart (None: no limit).

    Spacing each event from the previous one, rather than from the start, means a slow stretch
    is never followed by a catch-up burst.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    async def wait(self) -> None:
        """Returns when the next event may happen."""
        if not self._interval:
            return
        now = self._clock()
        if self._next is not None and self._next > now:
            await self._sleep(self._next - now)
            now = self._next
        self._next = now + self._interval


def _ledger_skip(state: JobState) -> str | None:
    """Why the ledger's state of a job stops its replay, or None if it can be replayed."""
    if state is JobState.SUCCEEDED:
        return "skipped: job already succeeded"
    if state in (JobState.RUNNING, JobState.RETRYING):
        return f"skipped: job is {state.value} in the ledger"
    return None


_TRACER = trace.get_tracer("relayq.dlq")


def _link_to(trace_id: str) -> list[Link]:
    """A span link to the job's original trace. The ledger keeps only the trace id, so the
    link names the trace (its span id is derived from it, not a recorded span): trace viewers
    open the original trace from the replay's."""
    try:
        tid = int(trace_id, 16)
    except ValueError:
        return []
    if not tid:
        return []
    context = SpanContext(
        trace_id=tid,
        span_id=(tid & 0xFFFFFFFFFFFFFFFF) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return [Link(context)]


class Replayer:
    """Runs replays; one instance per process."""

    def __init__(
        self, store: Store, ledger: JobLedger, ledger_db: Executor, publisher: Publisher
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._ledger_db = ledger_db
        self._publisher = publisher

    async def run(
        self,
        selection: Selection,
        *,
        dry_run: bool,
        rate: float | None,
        actor: str,
        note: str,
    ) -> AsyncIterator[ReplayProgress]:
        """Replays the selection, oldest first for a filter, in the given order for ids; one
        progress message per entry. Raises :class:`Unavailable` when the broker or the database
        fails (entries already replayed stay replayed, the rest stay active)."""
        if selection.filter is not None:
            refs = await self._store.select(selection.filter)
            order = [r.job_id for r in refs]
            known = {r.job_id: r for r in refs}
        else:
            order = list(selection.ids)
            known = await self._store.find(order)
        total = len(order)
        pacer = Pacer(rate)
        counts = {"replayed": 0, "skipped": 0}
        log.info("dead_letter_replay_started", total=total, dry_run=dry_run, rate=rate, actor=actor)
        for done, job_id in enumerate(order, start=1):
            ref = known.get(job_id)
            if ref is None:
                result = "skipped: not found"
            else:
                with job_context(ref.job_id, ref.idempotency_key, task=ref.task):
                    try:
                        result = await self._one(ref, dry_run, pacer, actor, note)
                    except Unavailable as exc:
                        log.warning("dead_letter_replay_failed", error=exc.message)
                        raise Unavailable(
                            f"{exc.message}; {counts['replayed']} of {total} entries were "
                            f"replayed before {job_id}; it and the rest stay active: replay "
                            "again once it is back"
                        ) from exc
            counts["replayed" if result in (REPLAYED, WOULD_REPLAY) else "skipped"] += 1
            if not dry_run:
                task = ref.task if ref is not None else "unknown"
                REPLAYS.labels(task=task, outcome=replay_outcome(result)).inc()
            yield ReplayProgress(job_id=job_id, result=result, done=done, total=total)
        log.info("dead_letter_replay_finished", total=total, dry_run=dry_run, **counts)

    async def _one(self, ref: EntryRef, dry_run: bool, pacer: Pacer, actor: str, note: str) -> str:
        if ref.status is not Status.ACTIVE:
            return self._skipped(f"skipped: not active ({ref.status.value})")
        with unavailable_on_db_errors():
            if dry_run:
                verdict = await self._ledger_verdict(
                    self._ledger_db, ref.job_id, ref.idempotency_key
                )
                return verdict or WOULD_REPLAY
            await pacer.wait()
            try:
                queue = await self._replay_claimed(ref.job_id, actor, note)
            except _Skip as skip:
                return self._skipped(skip.result)
        log.info("dead_letter_replayed", queue=queue, actor=actor)
        return REPLAYED

    async def _replay_claimed(self, job_id: str, actor: str, note: str) -> str:
        """Steps 1-5 of the module's docstring; the queue published to. Raises :class:`_Skip`
        (the transaction rolls back) when the entry or the job cannot be replayed now."""
        async with self._store.claim_for_replay(job_id) as claim:
            if claim is None:
                raise _Skip("skipped: not active")
            entry, db = claim.entry, claim.conn
            await db.execute(_Q["set_lock_timeout"], LOCK_TIMEOUT)
            try:
                await self._ledger.lock_job(db, job_id)
            except asyncpg.LockNotAvailableError:
                raise _Skip("skipped: a worker holds the job; replay again shortly") from None
            spec = JobSpec(
                job_id=entry.job_id,
                idempotency_key=entry.idempotency_key,
                task=entry.task,
                queue=entry.queue,
                payload=entry.payload,
                trace_id=entry.trace_id,
            )
            if await self._ledger.insert_jobs(db, [spec]):
                await self._ledger.continue_attempt_numbering(db, job_id, entry.final_attempt)
            specs = await self._ledger.reopen_for_replay(db, [job_id])
            if not specs:
                verdict = await self._ledger_verdict(db, job_id, entry.idempotency_key)
                raise _Skip(verdict or "skipped: the ledger did not re-open the job")
            try:
                # The replayed run is a new trace (this RPC's), linked to the job's first one.
                with _TRACER.start_as_current_span(
                    "relayq.replay",
                    links=_link_to(entry.trace_id),
                    attributes={
                        JOB_ID: job_id,
                        "relayq.replay_of_trace_id": entry.trace_id,
                        "relayq.replay_actor": actor,
                        "relayq.dead_letter_count": entry.dead_letter_count,
                    },
                ):
                    await self._publisher.publish(specs)
            except Exception as exc:  # redis raises many types; all mean "not sent"
                raise Unavailable(f"the broker is unavailable ({type(exc).__name__})") from exc
            await self._ledger.mark_enqueued(db, [job_id])
            await claim.mark_replayed(actor, note, "enqueued")
        return specs[0].queue

    async def _ledger_verdict(self, db: Executor, job_id: str, key: str) -> str | None:
        """Why the ledger stops this job's replay, or None if it does not."""
        peeked = await self._ledger.peek_state(db, job_id)
        if peeked is None:
            # Purged from the ledger: the replay re-creates it, unless a new job took the key.
            holders = await self._ledger.find_existing(db, [key], [])
            if holders:
                return (
                    f"skipped: the idempotency key now belongs to job {holders[0].job_id} "
                    "in the ledger"
                )
            return None
        if peeked.pending_dead_letter is not None:
            return "skipped: its worker is still handing the dead letter over; replay again shortly"
        return _ledger_skip(peeked.state)

    @staticmethod
    def _skipped(result: str) -> str:
        log.info("dead_letter_replay_skipped", result=result)
        return result
