"""The reconciler: re-enqueues jobs the ledger says are waiting but whose message the broker lost.

The Postgres ledger is the source of truth for which jobs exist and where they are; Redis only
carries messages, and can lose them: a ``FLUSHALL``, a restart without persistence, the last
second of an AOF, a worker node that dies holding messages (its unacked and retry messages come
back only after the one-hour visibility timeout). The reconciler finds such jobs and publishes
them again with their original ``job_id`` and ``idempotency_key``.

Re-publishing a job whose message is in fact still somewhere costs one duplicate delivery, which
the worker's claim turns into a no-op (docs/idempotency.md): so every rule below errs towards
re-publishing, and none needs to prove a message is gone, only that it is overdue.

Every ``interval_seconds`` (cheap: one ``GET`` and four index probes, each bounded):

1. **Broker epoch.** The reconciler keeps a sentinel key in Redis. If it is missing, Redis lost
   its data (or this is a brand-new broker): the reconciler writes a new one, notes the moment
   (``sweep_before``, kept in the key so a crash mid-sweep resumes it) and re-publishes every
   job that was ``queued`` before that moment, in batches of ``batch_size``. ``O(jobs queued)``
   once per loss, nothing otherwise.
2. **Overdue retries**: ``retrying`` jobs whose next attempt is more than ``deadline_seconds``
   late. The retry message waits inside a worker (an ETA message, in Redis's unacked hash until
   it runs); if that worker or Redis lost it, nothing else would ever run the job.
3. **Abandoned deliveries**: ``running`` jobs older than the deadline whose job lock nobody
   holds. Every live delivery holds the job's PostgreSQL session lock from before its claim to
   after its outcome is recorded, so an unheld ``running`` job's worker died; its next delivery
   counts the worker loss (poison-job detection still works).
4. **Stalled dead letters**: staged dead letters (``pending_dead_letter``) that no worker has
   tried to hand to dlq-svc for ``dead_letter_grace_seconds`` (workers touch the row on every
   failed report). The next delivery only re-sends the report.
5. **Never published**: ``queued`` jobs with no ``enqueued_at`` older than
   ``unpublished_after_seconds`` (ingest died between the ledger and the broker and no client
   re-submitted). Longer than any publish can take, so a refusal stays a refusal.

Every ``scan_interval_seconds``, one more rule for messages that vanished without the whole
broker going (a list edited by hand, a partial loss):

6. **Missing messages.** A legitimate backlog keeps jobs ``queued`` for as long as it takes to
   drain, so age alone proves nothing, and looking for each job's message in the list costs
   ``O(backlog)``. Instead the reconciler notes the newest message of each queue (``LINDEX q 0``)
   and the time. Consumers pop from the other end, so once that message has left the list
   (``LPOS``, one server-side scan, nothing transferred) every message the list held at that
   time has been delivered. One scan later (time for workers to claim what they popped), a job
   still ``queued`` that was enqueued before the noted time has no message left: it is
   re-published. A backlog that does not move is never touched; an empty queue turns over at
   once.

Each job re-published is logged (``job_requeued``, with its ``job_id`` and
``idempotency_key``) and counted in ``relayq_reconciler_requeued_total{reason}``. A failed cycle
(Postgres or Redis unreachable) is logged and retried at the next interval; a claim whose
publish fails is rolled back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram
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
    "Reconciler cycles that failed, by the source that failed (postgres, redis)",
    ["source"],
)
CYCLE_SECONDS = Histogram(
    "relayq_reconciler_cycle_seconds",
    "Time one reconciler cycle took",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class Reason(StrEnum):
    """Why a job was re-published (the ``reason`` label)."""

    BROKER_DATA_LOST = "broker_data_lost"
    RETRY_OVERDUE = "retry_overdue"
    WORKER_LOST = "worker_lost"
    DEAD_LETTER_STALLED = "dead_letter_stalled"
    NEVER_PUBLISHED = "never_published"
    MESSAGE_MISSING = "message_missing"


class ReconcilerSettings(CommonSettings):
    """``RELAYQ_RECONCILER_*`` plus the stack-wide ``RELAYQ_*`` values."""

    model_config = SettingsConfigDict(env_prefix="RELAYQ_RECONCILER_", extra="ignore", frozen=True)

    interval_seconds: float = Field(5.0, gt=0, description="Between cheap cycles (rules 1-5)")
    scan_interval_seconds: float = Field(
        30.0, gt=0, description="Between scans of the broker's lists (rule 6)"
    )
    deadline_seconds: float = Field(
        60.0, gt=0, description="How late a retry, or how old an unheld running job, may be"
    )
    dead_letter_grace_seconds: float = Field(
        120.0,
        gt=0,
        description="A staged dead letter nobody touched for this long is re-published; "
        "above the workers' longest wait between reports (RELAYQ_WORKER_DLQ_RETRY_MAX_SECONDS)",
    )
    unpublished_after_seconds: float = Field(
        120.0, gt=0, description="A submit never published after this long is published"
    )
    batch_size: int = Field(500, gt=0, le=10_000, description="Jobs claimed per statement")
    host: str = Field("127.0.0.1", description="Where /healthz and /metrics listen")
    port: int = Field(0, ge=0, le=65535, description="/healthz and /metrics; 0: not served")


@dataclass
class _Mark:
    """The newest message of a queue at a moment (rule 6)."""

    taken_at: datetime
    element: bytes | str | None  # None: the list was empty
    turned_over: bool = False


@dataclass(frozen=True)
class Deadlines:
    """The ages after which each rule acts (seconds)."""

    retry: float = 60.0
    abandoned: float = 60.0
    dead_letter: float = 120.0
    unpublished: float = 120.0

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
        self._epoch: str | None = None

    async def cycle(self, *, scan: bool = False) -> dict[Reason, int]:
        """One pass of rules 1-5 (and 6 with ``scan``); how many jobs each re-published."""
        done: dict[Reason, int] = {}
        d = self._deadlines
        done[Reason.BROKER_DATA_LOST] = await self.check_epoch()
        for reason, query, age in (
            (Reason.RETRY_OVERDUE, "requeue_overdue_retries", d.retry),
            (Reason.WORKER_LOST, "requeue_abandoned", d.abandoned),
            (Reason.DEAD_LETTER_STALLED, "requeue_stalled_dead_letters", d.dead_letter),
            (Reason.NEVER_PUBLISHED, "requeue_unpublished", d.unpublished),
        ):
            done[reason] = await self._requeue_all(reason, query, age)
        if scan:
            done[Reason.MESSAGE_MISSING] = await self.scan_queues()
        return {reason: n for reason, n in done.items() if n}

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

    async def scan_queues(self) -> int:
        """Rule 6, for every queue."""
        total = 0
        for queue in self._queues:
            mark = self._marks.get(queue)
            if mark is not None and mark.turned_over:
                # Confirmed one scan ago: workers have had a scan interval to claim what they
                # popped; whatever is still queued from before the mark has no message.
                total += await self._requeue_all(
                    Reason.MESSAGE_MISSING, "requeue_queued_before", queue, mark.taken_at
                )
                mark = None
            if mark is not None and (
                mark.element is None
                or await self._redis.lpos(queue, cast(str, mark.element)) is None
            ):
                mark.turned_over = True
            if mark is None:
                taken_at = await self._db_now()  # first: the list then holds all before it
                newest = await self._redis.lindex(queue, 0)
                mark = _Mark(taken_at, newest)
            self._marks[queue] = mark
        return total

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
        except Exception as exc:  # a publish (kombu/redis raise many types)
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
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    broker = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10
    )
    publisher = Publisher(settings.redis_url, catalog.default_queue)
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
        publisher.close()
        await broker.aclose()
        await pool.close()
        log.info("reconciler_stopped")


def main() -> None:
    """Console entry point: ``relayq-reconciler``."""
    settings = ReconcilerSettings()
    configure_logging("reconciler", level=settings.log_level, json=settings.log_json)
    asyncio.run(serve(settings))
