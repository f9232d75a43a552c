"""Fleet gauges, computed per scrape at a bounded cost.

Per scrape, for Q catalogue queues: one pipelined round trip to Redis (Q ``LLEN``), Q index
probes on the ledger (``relayq_jobs_queued_since``), and one ``GetDeadLetterStats`` call to
dlq-svc (a GROUP BY over *active* dead letters only). Nothing scans the job table, so the cost
does not grow with the backlog or the history. A source that fails or is slow is left out of
that scrape (its gauges go stale, which Prometheus shows), counted in
``relayq_gateway_source_errors_total`` and shown as ``relayq_gateway_source_up{source} 0`` (the
signal of PostgresUnreachable, RedisUnreachable and MetricsGatewaySourceFailing: a series that
says 0, not one that vanishes); the others are still served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc
from relayq_core.db.ledger import JobLedger
from relayq_core.logging import get_logger
from relayq_core.tls import ClientTls, aio_channel

log = get_logger(__name__)


@dataclass
class Snapshot:
    """One scrape's values; a source that failed leaves its part empty."""

    depth: dict[str, float] = field(default_factory=dict)
    oldest_age: dict[str, float] = field(default_factory=dict)
    dlq_depth: dict[tuple[str, str], float] | None = None
    #: Seconds the oldest active dead letter has waited (0: none active); None: dlq-svc failed.
    dlq_oldest_age: float | None = None
    #: Whether each source answered in this scrape.
    up: dict[str, bool] = field(default_factory=dict)


class FleetGauges:
    """Reads the broker, the ledger and dlq-svc; renders Prometheus metric families."""

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        dlq: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub,
        queues: list[str],
        timeout: float = 2.0,
        expected_workers: int = 0,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._dlq = dlq
        self._queues = queues
        self._timeout = timeout
        self._expected_workers = expected_workers
        self._ledger = JobLedger()
        self.errors: dict[str, int] = {"redis": 0, "postgres": 0, "dlq": 0}

    async def _depth(self) -> dict[str, float]:
        pipe = self._redis.pipeline(transaction=False)
        for queue in self._queues:
            pipe.llen(queue)
        lengths = await pipe.execute()
        return {q: float(n) for q, n in zip(self._queues, lengths, strict=True)}

    async def _oldest(self) -> dict[str, float]:
        now = datetime.now(UTC)
        ages: dict[str, float] = {}
        async with self._pool.acquire() as conn:
            for queue in self._queues:
                since = await self._ledger.oldest_queued(conn, queue)
                ages[queue] = max((now - since).total_seconds(), 0.0) if since else 0.0
        return ages

    async def _dlq_stats(self) -> tuple[dict[tuple[str, str], float], float]:
        stats = await self._dlq.GetDeadLetterStats(
            dead_letter_pb2.GetDeadLetterStatsRequest(), timeout=self._timeout
        )
        depth = {(c.task, c.reason): float(c.count) for c in stats.active_by_task_reason}
        oldest = 0.0
        if stats.HasField("oldest_active_at"):
            since = stats.oldest_active_at.ToDatetime(tzinfo=UTC)
            oldest = max((datetime.now(UTC) - since).total_seconds(), 0.0)
        return depth, oldest

    async def snapshot(self) -> Snapshot:
        """Reads every source concurrently, each within the timeout."""
        results = await asyncio.gather(
            asyncio.wait_for(self._depth(), self._timeout),
            asyncio.wait_for(self._oldest(), self._timeout),
            self._dlq_stats(),
            return_exceptions=True,
        )
        snap = Snapshot()
        for source, value in zip(("redis", "postgres", "dlq"), results, strict=True):
            snap.up[source] = not isinstance(value, BaseException)
            if isinstance(value, BaseException):
                self.errors[source] += 1
                log.warning(
                    "gauge_source_failed",
                    source=source,
                    error=type(value).__name__,
                    detail=str(value)[:200],
                )
        if isinstance(results[0], dict):
            snap.depth = results[0]
        if isinstance(results[1], dict):
            snap.oldest_age = results[1]
        if isinstance(results[2], tuple):
            snap.dlq_depth, snap.dlq_oldest_age = results[2]
        return snap

    def families(self, snap: Snapshot) -> Iterable[Metric]:
        """The metric families of one snapshot."""
        depth = GaugeMetricFamily(
            "relayq_queue_depth", "Messages waiting in the broker, by queue", labels=["queue"]
        )
        for queue, value in snap.depth.items():
            depth.add_metric([queue], value)
        yield depth
        age = GaugeMetricFamily(
            "relayq_queue_oldest_job_age_seconds",
            "Seconds the oldest job still waiting in the queue has waited (0: none waiting)",
            labels=["queue"],
        )
        for queue, value in snap.oldest_age.items():
            age.add_metric([queue], value)
        yield age
        if snap.dlq_depth is not None:
            dlq = GaugeMetricFamily(
                "relayq_dlq_depth",
                "Active dead letters, by task and reason",
                labels=["task", "reason"],
            )
            for (task, reason), value in sorted(snap.dlq_depth.items()):
                dlq.add_metric([task, reason], value)
            yield dlq
        if snap.dlq_oldest_age is not None:
            yield GaugeMetricFamily(
                "relayq_dlq_oldest_active_age_seconds",
                "Seconds since the oldest active dead letter (neither replayed nor dropped) was "
                "stored (0: none active)",
                value=snap.dlq_oldest_age,
            )
        up = GaugeMetricFamily(
            "relayq_gateway_source_up",
            "Whether the source (redis, postgres, dlq) answered this scrape (1) or failed or "
            "timed out (0)",
            labels=["source"],
        )
        for source, ok in sorted(snap.up.items()):
            up.add_metric([source], 1.0 if ok else 0.0)
        yield up
        yield GaugeMetricFamily(
            "relayq_workers_expected",
            "Worker nodes the deployment should run (RELAYQ_EXPECTED_WORKERS; 0: not set)",
            value=float(self._expected_workers),
        )
        errors = CounterMetricFamily(
            "relayq_gateway_source_errors",
            "Scrapes in which a source (redis, postgres, dlq) failed or timed out",
            labels=["source"],
        )
        for source, count in self.errors.items():
            errors.add_metric([source], float(count))
        yield errors


def channel(address: str, tls: ClientTls | None = None) -> grpc.aio.Channel:
    """The gateway's channel to dlq-svc (TLS when ``tls`` is given)."""
    return aio_channel(address, tls)
