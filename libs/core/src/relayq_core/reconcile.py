"""The reconciler: re-enqueues jobs the ledger says are waiting but whose message the broker lost.

The Postgres ledger is the source of truth for which jobs exist and where they are; Redis only
carries messages, and can lose them: a ``FLUSHALL``, a restart without persistence, the last
second of an AOF, a worker node that dies holding messages, a worker that reconnects after a
broker restart (Celery drops the retry messages it held, and without kombu's ack emulation
nothing in Redis keeps a copy). The reconciler finds such jobs and publishes them again with
their original ``job_id`` and ``idempotency_key``.

Re-publishing a job whose message is in fact still somewhere costs one duplicate delivery, which
the worker's claim turns into a no-op (docs/idempotency.md). So no rule needs to prove that a
message is gone. But a rule must never fire on a *slow* message, or it re-publishes the same
jobs again and again while a backlog drains (each copy joining the back of the backlog): age
alone proves nothing, because a legitimate backlog keeps jobs queued, and retries (whose message
joins the back of the queue too) overdue, for as long as it takes to drain.

**Queue turnover** is what tells slow from lost, at the cost of two Redis commands per queue.
Every ``scan_interval_seconds`` the reconciler notes the newest message of each queue
(``LINDEX q 0``) and the time. Consumers pop from the other end, so once that message has left
the list every message the list held at that time has been handed to a worker. Whether it has
is one ``LPOS … RANK -1``: a server-side scan from the consumers' end over the messages older
than the noted one only (fewer at each scan as they are consumed), nothing transferred. One scan
later (time for workers to claim what they popped) that time becomes the queue's *cutoff*:
whatever a job was waiting for before the cutoff has reached a worker, and if the ledger still
shows it waiting, the message is gone. A backlog that does not move never advances its cutoff;
an empty queue advances it every scan.

With each new cutoff, per queue (each an index range scan over the few rows it can act on):

- **missing messages**: ``queued`` jobs enqueued before the cutoff;
- **lost retries**: ``retrying`` jobs whose retry was scheduled before the cutoff (its message
  reached a worker, which holds it until due) and due more than ``deadline_seconds`` ago;
- **abandoned deliveries**: ``running`` jobs that nobody holds. Every live delivery holds the
  job's PostgreSQL session lock from before its claim until its outcome is recorded, so an
  unheld ``running`` job's worker died (or lost the database). Each scan notes such jobs (older
  than the deadline); those noted before the cutoff (any message Celery handed back when the
  worker died has been delivered since) and still unheld are re-published; their next delivery
  counts the worker loss, so poison-job detection still works;
- **stalled dead letters**: staged dead letters (``pending_dead_letter``) last touched before
  the cutoff and more than ``dead_letter_grace_seconds`` ago (workers touch the row on every
  failed report to dlq-svc). The next delivery only re-sends the report.

Every ``interval_seconds`` (one ``GET`` and one index probe):

- **Broker epoch.** The reconciler keeps a sentinel key in Redis. If it is missing, Redis lost
  its data (or this is a brand-new broker): the reconciler writes a new one, notes the moment
  (``sweep_before``, kept in the key so a crash mid-sweep resumes it) and re-publishes every
  job that was ``queued`` before that moment, in batches of ``batch_size``: ``O(jobs queued)``
  once per loss, nothing otherwise. Retries and abandoned deliveries follow with the next
  cutoffs.
- **Never published**: ``queued`` jobs with no ``enqueued_at`` older than
  ``unpublished_after_seconds``. A submit answers once its job is in the ledger; ingest's
  outbox publishes it in the background, and gives up on a job (leaving it to this rule) when
  it waited longer than the outbox's max age (Redis down) or the backlog is full, or when
  ingest stops or dies first. Keep this at or above ``RELAYQ_INGEST_OUTBOX_MAX_AGE_SECONDS``
  (both 60 s by default), so the rule takes over what ingest gave up rather than racing it.

Each job re-published is logged (``job_requeued``, with its ``job_id`` and
``idempotency_key``) and counted in ``relayq_reconciler_requeued_total{reason}``. What the
never-published, lost-retry and abandoned rules still have to repair is measured before each
cycle acts (so a cycle that then fails, Redis down, still reports it):
``relayq_reconciler_overdue_jobs{reason}`` and ``relayq_reconciler_oldest_overdue_seconds{reason}``,
how long the oldest of them has waited (since its submit, its due time, its last sign of life).
None of these jobs counts in the queue's oldest-job age (they are not waiting in the broker), so
JobsWaitingForRepair pages on this gauge when one waits too long. A failed cycle
(Postgres or Redis unreachable) is logged and retried at the next interval; a claim whose
publish fails is rolled back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from redis.exceptions import RedisError

from relayq_core.catalog import load_catalog
from relayq_core.db.ledger import UNAVAILABLE_ERRORS, create_pool
from relayq_core.db.queries import SQL_DIR, load_queries
from relayq_core.jobs import JobSpec
from relayq_core.logging import configure_logging, get_logger, job_context
from relayq_core.publish import Publisher
from relayq_core.settings import CommonSettings

log = get_logger(__name__)

_Q = load_queries(SQL_DIR / "ledger.sql")

#: The broker epoch sentinel. It has no TTL; Redis must not evict it (``noeviction``).
EPOCH_KEY = "relayq:reconciler:epoch"

REQUEUED = Counter(
    "relayq_reconciler_requeued_total",
    "Jobs the reconciler re-published, by why their message was missing",
    ["reason"],
)
BROKER_RESETS = Counter(
    "relayq_reconciler_broker_resets_total",
    "Times the reconciler found the broker's epoch key gone (Redis lost its data)",
)
CYCLE_ERRORS = Counter(
    "relayq_reconciler_cycle_errors_total",
    "Reconciler cycles that failed, by the source that failed (postgres, redis, broker)",
    ["source"],
)
CYCLE_SECONDS = Histogram(
    "relayq_reconciler_cycle_seconds",
    "Time one reconciler cycle took",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

OVERDUE_JOBS = Gauge(
    "relayq_reconciler_overdue_jobs",
    "Jobs a repair rule (never_published, retry_lost, worker_lost) still has to act on, as of "
    "the last measure (counted up to 10000)",
    ["reason"],
)
OLDEST_OVERDUE = Gauge(
    "relayq_reconciler_oldest_overdue_seconds",
    "How long the oldest job a repair rule still has to act on has waited: since its submit "
    "(never_published), its due time (retry_lost), its last sign of life (worker_lost); 0: none",
    ["reason"],
)
#: The most overdue jobs counted per measure: the count is for reading, the age is what alerts.
_OVERDUE_COUNT_LIMIT = 10_000


class Reason(StrEnum):
    """Why a job was re-published (the ``reason`` label)."""

    BROKER_DATA_LOST = "broker_data_lost"
    RETRY_LOST = "retry_lost"
    WORKER_LOST = "worker_lost"
    DEAD_LETTER_STALLED = "dead_letter_stalled"
    NEVER_PUBLISHED = "never_published"
    MESSAGE_MISSING = "message_missing"


class ReconcilerSettings(CommonSettings):
    """``RELAYQ_RECONCILER_*`` plus the stack-wide ``RELAYQ_*`` values."""

    model_config = SettingsConfigDict(env_prefix="RELAYQ_RECONCILER_", extra="ignore", frozen=True)

    interval_seconds: float = Field(
        5.0, gt=0, description="Between checks of the broker's epoch and of unpublished submits"
    )
    scan_interval_seconds: float = Field(
        30.0, gt=0, description="Between queue turnover checks (and the rules they drive)"
    )
    deadline_seconds: float = Field(
        60.0, gt=0, description="How late a retry, or how long an unheld running job, may be"
    )
    dead_letter_grace_seconds: float = Field(
        120.0,
        gt=0,
        description="A staged dead letter nobody touched for this long is re-published; "
        "above the workers' longest wait between reports (RELAYQ_WORKER_DLQ_RETRY_MAX_SECONDS)",
    )
    unpublished_after_seconds: float = Field(
        60.0,
        gt=0,
        description="A submit never published after this long is published; at or above "
        "ingest's RELAYQ_INGEST_OUTBOX_MAX_AGE_SECONDS",
    )
    batch_size: int = Field(500, gt=0, le=10_000, description="Jobs claimed per statement")
    statement_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A statement still running after this long (a lock it waits for, a "
        "connection that stopped answering) is cancelled and its cycle counts as failed",
    )
    host: str = Field("127.0.0.1", description="Where /healthz and /metrics listen")
    port: int = Field(
        9102, ge=0, le=65535, description="/healthz and /metrics (on by default); 0: not served"
    )


@dataclass
class _Mark:
    """The newest message of a queue at a moment (queue turnover)."""

    taken_at: datetime
    element: bytes | str | None  # None: the list was empty
    turned_over: bool = False


@dataclass(frozen=True)
class Deadlines:
    """The ages after which each rule acts (seconds)."""

    retry: float = 60.0
    abandoned: float = 60.0
    dead_letter: float = 120.0
    unpublished: float = 60.0

    @classmethod
    def all(cls, seconds: float) -> Deadlines:
        """Every deadline the same (tests)."""
        return cls(seconds, seconds, seconds, seconds)

    @classmethod
    def of(cls, settings: ReconcilerSettings) -> Deadlines:
        """From the settings."""
        return cls(
            retry=settings.deadline_seconds,
            abandoned=settings.deadline_seconds,
            dead_letter=settings.dead_letter_grace_seconds,
            unpublished=settings.unpublished_after_seconds,
        )


class Reconciler:
    """The rules of the module docstring, over a pool, a Redis client and a publisher."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: aioredis.Redis,
        publisher: Publisher,
        queues: list[str],
        *,
        deadlines: Deadlines | None = None,
        batch_size: int = 500,
    ) -> None:
        self._pool = pool
        self._redis = broker
        self._publisher = publisher
        self._queues = queues
        self._deadlines = deadlines or Deadlines()
        self._batch = batch_size
        self._marks: dict[str, _Mark] = {}
        #: Running jobs seen unheld: job id -> (queue, when first seen).
        self._unheld: dict[str, tuple[str, datetime]] = {}
        self._epoch: str | None = None

    async def cycle(self, *, scan: bool = False) -> dict[Reason, int]:
        """The epoch and unpublished checks (and, with ``scan``, the turnover-driven rules);
        how many jobs each reason re-published."""
        done: Tally[Reason] = Tally()
        await self.measure_overdue(scan=scan)
        done[Reason.BROKER_DATA_LOST] = await self.check_epoch()
        done[Reason.NEVER_PUBLISHED] = await self._requeue_all(
            Reason.NEVER_PUBLISHED, "requeue_unpublished", self._deadlines.unpublished
        )
        if scan:
            done.update(await self.scan_queues())
        return {reason: n for reason, n in done.items() if n}

    async def measure_overdue(self, *, scan: bool = False) -> None:
        """Sets the overdue gauges: never-published submits every cycle, overdue retries with
        each scan (abandoned deliveries are measured by the scan itself)."""
        measures = [(Reason.NEVER_PUBLISHED, "overdue_unpublished", self._deadlines.unpublished)]
        if scan:
            measures.append((Reason.RETRY_LOST, "overdue_retries", self._deadlines.retry))
        for reason, query, deadline in measures:
            row = await self._pool.fetchrow(_Q[query], deadline, _OVERDUE_COUNT_LIMIT)
            assert row is not None
            OVERDUE_JOBS.labels(reason=reason.value).set(row["jobs"])
            OLDEST_OVERDUE.labels(reason=reason.value).set(row["oldest_seconds"])

    async def check_epoch(self) -> int:
        """Rule 1: a sweep when the epoch key vanished (or one left unfinished)."""
        raw = await self._redis.get(EPOCH_KEY)
        if raw is not None:
            state = json.loads(raw)
            self._epoch = state["epoch"]
            if not state.get("sweep_before"):
                return 0
            log.info("broker_sweep_resumed", epoch=self._epoch)
        else:
            now = await self._db_now()
            state = {"epoch": uuid.uuid4().hex, "since": now.isoformat()}
            state["sweep_before"] = now.isoformat()
            if not await self._redis.set(EPOCH_KEY, json.dumps(state), nx=True):
                return 0  # another reconciler saw it first and sweeps
            BROKER_RESETS.inc()
            log.warning(
                "broker_data_lost",
                previous_epoch=self._epoch,
                epoch=state["epoch"],
                detail="the epoch key is gone: re-publishing every job queued before now",
            )
            self._epoch = state["epoch"]
            self._marks.clear()
        before = datetime.fromisoformat(state["sweep_before"])
        total = 0
        for queue in self._queues:
            total += await self._requeue_all(
                Reason.BROKER_DATA_LOST, "requeue_queued_before", queue, before
            )
        state["sweep_before"] = None
        await self._redis.set(EPOCH_KEY, json.dumps(state), xx=True)
        log.info("broker_sweep_finished", epoch=state["epoch"], requeued=total)
        return total

    async def scan_queues(self) -> Tally[Reason]:
        """Notes unheld running jobs, advances each queue's turnover, and applies the rules a
        new cutoff allows (see the module docstring)."""
        done: Tally[Reason] = Tally()
        now = await self._db_now()
        unheld = await self._pool.fetch(
            _Q["unheld_running"], self._deadlines.abandoned, self._batch
        )
        for row in unheld:
            self._unheld.setdefault(row["job_id"], (row["queue"], now))
        OVERDUE_JOBS.labels(reason=Reason.WORKER_LOST.value).set(len(unheld))
        OLDEST_OVERDUE.labels(reason=Reason.WORKER_LOST.value).set(
            max((float(r["waited_seconds"]) for r in unheld), default=0.0)
        )
        for queue in self._queues:
            mark = self._marks.get(queue)
            if mark is not None and mark.turned_over:
                # Turned over one scan ago: workers have had a scan interval to claim what
                # they popped. What still waits for a message from before the cutoff has none.
                done += await self._apply_cutoff(queue, mark.taken_at)
                mark = None
            if mark is not None and (
                mark.element is None
                # From the consumers' end: only the messages older than the mark are
                # compared, fewer each scan as they are consumed (new arrivals are not).
                or await self._redis.lpos(queue, cast(str, mark.element), rank=-1) is None
            ):
                mark.turned_over = True
            if mark is None:
                taken_at = await self._db_now()  # first: the list then holds all before it
                newest = await self._redis.lindex(queue, 0)
                mark = _Mark(taken_at, newest)
            self._marks[queue] = mark
        return done

    async def _apply_cutoff(self, queue: str, cutoff: datetime) -> Tally[Reason]:
        d = self._deadlines
        done: Tally[Reason] = Tally()
        done[Reason.MESSAGE_MISSING] = await self._requeue_all(
            Reason.MESSAGE_MISSING, "requeue_queued_before", queue, cutoff
        )
        done[Reason.RETRY_LOST] = await self._requeue_all(
            Reason.RETRY_LOST, "requeue_lost_retries", queue, cutoff, d.retry
        )
        done[Reason.DEAD_LETTER_STALLED] = await self._requeue_all(
            Reason.DEAD_LETTER_STALLED, "requeue_stalled_dead_letters", queue, cutoff, d.dead_letter
        )
        seen = [j for j, (q, at) in self._unheld.items() if q == queue and at < cutoff]
        if seen:
            done[Reason.WORKER_LOST] = await self._requeue_all(
                Reason.WORKER_LOST, "requeue_abandoned", seen, cutoff
            )
            for job_id in seen:  # re-published, or no longer abandoned: noted again if it is
                del self._unheld[job_id]
        return done

    async def _db_now(self) -> datetime:
        row = await self._pool.fetchrow(_Q["reconcile_now"])
        assert row is not None
        now: datetime = row["now"]
        return now

    async def _requeue_all(self, reason: Reason, query: str, *args: Any) -> int:
        """Claims and re-publishes batches until one comes back short."""
        total = 0
        while True:
            n = await self._requeue_batch(reason, query, *args)
            total += n
            if n < self._batch:
                return total

    async def _requeue_batch(self, reason: Reason, query: str, *args: Any) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_Q[query], *args, self._batch)
            if not rows:
                return 0
            specs = [
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
            failures: Mapping[str, int] = {r["job_id"]: int(r["failures"]) for r in rows}
            # Inside the transaction: a publish that fails rolls the claim back.
            await self._publisher.publish(specs, failures)
        REQUEUED.labels(reason=reason.value).inc(len(specs))
        for spec in specs:
            with job_context(spec.job_id, spec.idempotency_key, task=spec.task):
                log.info("job_requeued", reason=reason.value, failures=failures[spec.job_id])
        return len(specs)


async def run(reconciler: Reconciler, settings: ReconcilerSettings, stop: asyncio.Event) -> None:
    """Cycles until ``stop`` is set; a failed cycle is logged and retried at the next one."""
    from relayq_core.reconcile_http import HEALTH

    next_scan = time.monotonic() + settings.scan_interval_seconds
    while not stop.is_set():
        started = time.monotonic()
        scan = started >= next_scan
        try:
            done = await reconciler.cycle(scan=scan)
        except RedisError as exc:
            CYCLE_ERRORS.labels(source="redis").inc()
            log.warning("reconcile_cycle_failed", source="redis", error=type(exc).__name__)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            CYCLE_ERRORS.labels(source="postgres").inc()
            log.warning("reconcile_cycle_failed", source="postgres", error=type(exc).__name__)
        except Exception as exc:  # a publish (redis raises many types)
            CYCLE_ERRORS.labels(source="broker").inc()
            log.warning("reconcile_cycle_failed", source="broker", error=type(exc).__name__)
        else:
            HEALTH.succeeded()
            if scan:
                next_scan = started + settings.scan_interval_seconds
            if done:
                log.info("reconcile_cycle_requeued", **{k.value: v for k, v in done.items()})
        CYCLE_SECONDS.observe(time.monotonic() - started)
        HEALTH.ticked()
        try:
            await asyncio.wait_for(stop.wait(), settings.interval_seconds)
        except TimeoutError:
            pass


async def serve(settings: ReconcilerSettings) -> None:
    """Runs the reconciler until SIGTERM/SIGINT."""
    from relayq_core.reconcile_http import serve_http

    catalog = load_catalog(settings.catalog_path)
    # A statement that never returns would stall every rule, with /healthz still answering
    # from its own thread: bounded, it is a failed cycle (ReconcilerFailing) and the next runs.
    pool = await create_pool(
        settings.database_url,
        min_size=1,
        max_size=2,
        command_timeout=settings.statement_timeout_seconds,
    )
    broker = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10
    )
    publisher = Publisher(settings.redis_url)
    reconciler = Reconciler(
        pool,
        broker,
        publisher,
        catalog.queues(),
        deadlines=Deadlines.of(settings),
        batch_size=settings.batch_size,
    )
    http = (
        serve_http(settings.host, settings.port, settings.interval_seconds)
        if settings.port
        else None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "reconciler_started",
        queues=catalog.queues(),
        interval_seconds=settings.interval_seconds,
        scan_interval_seconds=settings.scan_interval_seconds,
        deadline_seconds=settings.deadline_seconds,
        port=settings.port or None,
    )
    try:
        await run(reconciler, settings, stop)
    finally:
        if http is not None:
            http.shutdown()
        await publisher.close()
        await broker.aclose()
        await pool.close()
        log.info("reconciler_stopped")


def main() -> None:
    """Console entry point: ``relayq-reconciler``."""
    settings = ReconcilerSettings()
    configure_logging("reconciler", level=settings.log_level, json=settings.log_json)
    asyncio.run(serve(settings))
