"""End-to-end throughput: jobs submitted through gRPC, timed from the first submit to the last
job succeeded (its ``finished_at`` in the ledger).

The requests are built before the clock starts, and sent by a grpc.aio client in this process
(a few in flight: single ``SubmitJob`` calls, or ``SubmitJobs`` batches). The client shares the
machine with the stack, as any client on this one machine would; its CPU shows as ``bench``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, ingest_pb2_grpc
from relayq_load.bench.counters import MARK, CostMeter
from relayq_load.bench.sampler import Sampler
from relayq_load.bench.stack import BenchError, BenchStack

TASK = "demo.echo"


@dataclass
class SubmitStats:
    """What the client saw: one entry per RPC."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    accepted: int = 0


def build_requests(
    prefix: str, jobs: int, batch: int
) -> list[ingest_pb2.SubmitJobRequest] | list[ingest_pb2.SubmitJobsRequest]:
    """``jobs`` demo.echo jobs keyed ``<prefix><n>``, one per request or ``batch`` per request."""
    items = []
    for n in range(jobs):
        payload = struct_pb2.Struct()
        payload.update({"n": n})
        items.append(
            ingest_pb2.SubmitJobRequest(task=TASK, payload=payload, idempotency_key=f"{prefix}{n}")
        )
    if batch <= 1:
        return items
    return [ingest_pb2.SubmitJobsRequest(jobs=items[i : i + batch]) for i in range(0, jobs, batch)]


async def submit_all(
    address: str,
    requests: Sequence[ingest_pb2.SubmitJobRequest] | Sequence[ingest_pb2.SubmitJobsRequest],
    concurrency: int,
) -> SubmitStats:
    """Sends every request, ``concurrency`` in flight, and counts what was accepted."""
    stats = SubmitStats()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    channel = grpc.aio.insecure_channel(address)
    stub = ingest_pb2_grpc.IngestServiceStub(channel)

    async def sender() -> None:
        while not queue.empty():
            request = queue.get_nowait()
            start = time.perf_counter()
            try:
                if isinstance(request, ingest_pb2.SubmitJobsRequest):
                    reply = await stub.SubmitJobs(request, timeout=60)
                    stats.accepted += sum(1 for r in reply.results if r.HasField("job"))
                    for r in reply.results:
                        if r.HasField("error"):
                            stats.errors[r.error.code] = stats.errors.get(r.error.code, 0) + 1
                else:
                    await stub.SubmitJob(request, timeout=60)
                    stats.accepted += 1
            except grpc.aio.AioRpcError as exc:
                name = exc.code().name
                stats.errors[name] = stats.errors.get(name, 0) + 1
            stats.latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(sender() for _ in range(concurrency)))
    finally:
        await channel.close(None)
    return stats


async def wait_done(
    pool: asyncpg.Pool, prefix: str, expected: int, timeout: float
) -> tuple[int, float | None]:
    """Polls the ledger until ``expected`` jobs of the run succeeded; (done, last finished_at)."""
    deadline = time.monotonic() + timeout
    while True:
        row = await pool.fetchrow(
            f"{MARK} SELECT count(*) FILTER (WHERE state = 'succeeded') AS done, "
            "extract(epoch FROM max(finished_at))::float8 AS last "
            "FROM relayq_jobs WHERE idempotency_key LIKE $1",
            prefix + "%",
        )
        assert row is not None
        done = int(row["done"])
        if done >= expected:
            return done, row["last"]
        if time.monotonic() >= deadline:
            return done, row["last"]
        await asyncio.sleep(0.5)


async def per_second(pool: asyncpg.Pool, prefix: str, t0: float) -> dict[str, list[int]]:
    """Jobs created and finished in each second after ``t0`` (Unix time)."""
    rows = await pool.fetch(
        f"{MARK} SELECT floor(extract(epoch FROM created_at) - $2)::int AS c, "
        "floor(extract(epoch FROM finished_at) - $2)::int AS f "
        "FROM relayq_jobs WHERE idempotency_key LIKE $1",
        prefix + "%",
        t0,
    )
    span = max([0, *(r["f"] for r in rows if r["f"] is not None), *(r["c"] for r in rows)]) + 1
    created = [0] * span
    finished = [0] * span
    for r in rows:
        if r["c"] is not None and r["c"] >= 0:
            created[r["c"]] += 1
        if r["f"] is not None and r["f"] >= 0:
            finished[r["f"]] += 1
    return {"submitted": created, "succeeded": finished}


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def waiting_jobs(pool: asyncpg.Pool) -> int:
    """Jobs waiting in the ledger (queued or retrying: the index ``relayq_jobs_waiting``)."""
    value = await pool.fetchval(
        f"{MARK} SELECT count(*) FROM relayq_jobs WHERE state IN ('queued', 'retrying')"
    )
    return int(value or 0)


async def e2e_run(
    stack: BenchStack,
    *,
    jobs: int,
    batch: int,
    concurrency: int,
    label: str,
    timeout: float = 1800,
    during: Any = None,
) -> dict[str, Any]:
    """One timed run; its figures as a JSON-ready dict."""
    prefix = f"bench-{label}-{uuid.uuid4().hex[:8]}-"
    requests = build_requests(prefix, jobs, batch)
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    meter = CostMeter(stack.database_url, stack.redis_url)
    sampler = Sampler(
        find_processes=stack.processes,
        redis_url=stack.redis_url,
        queue="default",
        backlog=lambda: waiting_jobs(pool),
    )
    try:
        await meter.reset()
        sampler.start()
        t0 = time.time()
        started = time.perf_counter()
        side = asyncio.ensure_future(during()) if during is not None else None
        stats = await submit_all(stack.ingest, requests, concurrency)
        submit_seconds = time.perf_counter() - started
        if stats.accepted == 0:
            raise BenchError(f"{label}: ingest accepted no job: {stats.errors}")
        done, last = await wait_done(pool, prefix, stats.accepted, timeout)
        await sampler.stop()
        if side is not None:
            await side
        costs = await meter.read()
        series = await per_second(pool, prefix, t0)
    finally:
        await sampler.stop()
        await pool.close()
    if done < stats.accepted or last is None:
        raise BenchError(f"{label}: only {done} of {stats.accepted} jobs succeeded in {timeout}s")
    seconds = last - t0
    sizes = [s.message_bytes for s in sampler.samples if s.message_bytes]
    return {
        "label": label,
        "jobs": jobs,
        "accepted": stats.accepted,
        "batch": batch,
        "concurrency": concurrency,
        "seconds": seconds,
        "jobs_per_min": done / seconds * 60,
        "submit_seconds": submit_seconds,
        "submit_per_s": stats.accepted / submit_seconds,
        "rpc_p50_ms": _percentile(stats.latencies, 0.5) * 1000,
        "rpc_p99_ms": _percentile(stats.latencies, 0.99) * 1000,
        "errors": stats.errors,
        "cores": sampler.cores(),
        "machine_cores": sampler.machine_cores(),
        "cpu_ms_per_job": {k: v * 1000 / done for k, v in sampler.cpu_seconds.items()},
        "message_bytes": int(sum(sizes) / len(sizes)) if sizes else None,
        "max_queue": max((s.queue for s in sampler.samples), default=0),
        "series": series,
        **costs.per_job(done),
    }
