"""Helpers for tests that drive the delivery protocol (``worker_svc.runner.handle``) in process."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from relayq_core.db.ledger import JobLedger
from relayq_core.jobs import JobSpec
from relayq_core.retry import RetryPolicy
from worker_svc.runner import Delivery
from worker_svc.runtime import DeliveryLimits

LEDGER = JobLedger()

#: A lease, a lock wait and a kill grace short enough for a test to outlast them.
SHORT_LIMITS = DeliveryLimits(lock_wait_seconds=0.5, lease_seconds=3.0, kill_grace_seconds=1.0)


def quick_policy(timeout_seconds: float) -> RetryPolicy:
    """Three retries, each due 50 ms after its failure (no jitter), and this time limit."""
    return RetryPolicy(
        base_delay_seconds=0.05,
        max_delay_seconds=0.05,
        max_retries=3,
        jitter=0.0,
        timeout_seconds=timeout_seconds,
    )


class Kills:
    """Stands in for ``kill_this_process``: counts the kills instead. A real kill ends the
    process at the first call; this one returns, so ``slow`` keeps a supervisor that would call
    it again at once from spinning."""

    def __init__(self, slow: float = 0.0) -> None:
        self.count = 0
        self._slow = slow

    def __call__(self) -> None:
        self.count += 1
        if self._slow:
            time.sleep(self._slow)


async def new_job(
    conn: asyncpg.Connection, task: str = "demo.echo", prefix: str = "job"
) -> Delivery:
    """Records a job (enqueued, as ingest would leave it) and returns its delivery."""
    job_id = f"{prefix}-{uuid.uuid4()}"
    await LEDGER.insert_jobs(conn, [JobSpec(job_id, job_id, task, "default", {})])
    await LEDGER.mark_enqueued(conn, [job_id])
    return Delivery(task, job_id, job_id, {}, f"{prefix}-worker")


class InFlight:
    """Work in flight, as ``[start, end]`` intervals (``end`` infinite while it runs): an
    attempt's requests, from its threads or its loop, to show two attempts never overlap."""

    def __init__(self) -> None:
        self.intervals: list[list[float]] = []

    def _open(self) -> list[float]:
        span = [time.monotonic(), float("inf")]
        self.intervals.append(span)
        return span

    def blocking(self, seconds: float) -> None:
        """A blocking request (``requests.post`` to a downstream), run in a thread."""
        span = self._open()
        time.sleep(seconds)
        span[1] = time.monotonic()

    async def brief(self, seconds: float) -> None:
        """A request awaited on the loop."""
        span = self._open()
        await asyncio.sleep(seconds)
        span[1] = time.monotonic()

    async def settled(self) -> None:
        """Waits until nothing is in flight."""
        while any(end == float("inf") for _, end in self.intervals):
            await asyncio.sleep(0.05)

    @property
    def last_start(self) -> float:
        return self.intervals[-1][0]

    def beside_the_last(self) -> list[list[float]]:
        """The earlier intervals still in flight when the last began."""
        return [s for s in self.intervals[:-1] if self.last_start < s[1]]
