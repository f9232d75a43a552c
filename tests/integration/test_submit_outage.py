"""Submits while the broker is slow or down: an accepted job is never deleted, and a submit's
answer never waits for Redis (the ledger is the outbox; ingest publishes in the background).

Each test runs its own Redis, which it stops (SIGSTOP) or takes down, and an in-process ingest
on it, over the session's real ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import redis.asyncio as aioredis
import structlog
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from structlog.testing import LogCapture

from ingest_svc.outbox import OutboxLimits
from ingest_svc.submit import JobService
from relayq.v1 import ingest_pb2
from relayq_core.catalog import Catalog
from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.db.migrate import migrate_ledger
from relayq_core.jobs import JobSpec, SubmitResult
from relayq_core.publish import Publisher
from relayq_core.reconcile import Deadlines, Reconciler
from relayq_devstack.ports import free_port
from relayq_devstack.postgres import PostgresServer
from relayq_devstack.process import ServiceProcess
from relayq_devstack.redis import RedisServer, start_redis
from tests.conftest import BIN, DlqServer, broker_messages, ingest_server, service_env
from tests.integration.test_worker_lifecycle import start_node
from worker_svc.schema import migrate as migrate_worker

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def request(payload: dict[str, Any], **fields: str) -> ingest_pb2.SubmitJobRequest:
    struct = struct_pb2.Struct()
    struct.update(payload)
    return ingest_pb2.SubmitJobRequest(task="demo.echo", payload=struct, **fields)


@pytest.fixture(scope="module")
def outage_db(postgres: PostgresServer) -> str:
    """A database of its own: the test's reconciler acts on every job it finds."""
    postgres.psql("DROP DATABASE IF EXISTS outage_tests", database="postgres")
    postgres.psql("CREATE DATABASE outage_tests", database="postgres")
    url = postgres.url_for("outage_tests")
    asyncio.run(migrate_ledger(url))
    asyncio.run(migrate_worker(url))
    return url


def start_reconciler(database_url: str, broker_url: str, log_dir: Path) -> ServiceProcess:
    """``relayq-reconciler`` with short cycles: it re-publishes what the worker loses when Redis
    goes down under it (a prefetched message), as it does in the stack."""
    return ServiceProcess(
        "reconciler",
        [str(BIN / "relayq-reconciler")],
        log_path=log_dir / "reconciler.log",
        env=service_env(
            database_url,
            broker_url,
            RELAYQ_RECONCILER_INTERVAL_SECONDS="0.5",
            RELAYQ_RECONCILER_SCAN_INTERVAL_SECONDS="1",
            RELAYQ_RECONCILER_DEADLINE_SECONDS="2",
        ),
        inherit_env=False,
    )


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, always resumed and stopped at the end."""
    server = start_redis(tmp_path / "redis", persistence=True)
    try:
        yield server
    finally:
        if server.is_running():
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


async def wait_for(what: str, check: Any, timeout: float) -> Any:
    """``await check()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.05)


async def job_row(pool: asyncpg.Pool, job_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT job_id, state, enqueued_at FROM relayq_jobs WHERE job_id = $1", job_id
    )
    return row


def published(broker_url: str, job_id: str) -> int:
    """How many messages for ``job_id`` wait in the broker's default queue."""
    return sum(m["headers"]["id"] == job_id for m in broker_messages(broker_url, "default"))


async def test_a_duplicate_answered_while_the_publish_fails_never_loses_the_job(
    database_url: str, catalog: Catalog, private_redis: RedisServer
) -> None:
    """Issue 13, bug 1: a webhook retried during a Redis outage was told the job exists, and
    then the first call's failed publish deleted it."""
    broker = private_redis.url
    key = f"webhook-{uuid.uuid4()}"
    body = {"task": "demo.echo", "payload": {"hook": 1}}
    async with ingest_server(database_url, broker, catalog) as ingest:
        pool = ingest.jobs._pool
        os.kill(private_redis.pid, signal.SIGSTOP)  # the broker is slow ...
        first = asyncio.ensure_future(
            ingest.stub.SubmitJob(request({"hook": 1}, idempotency_key=key), timeout=60)
        )
        job_id = await wait_for(
            "the first submit's ledger row",
            lambda: pool.fetchval("SELECT job_id FROM relayq_jobs WHERE idempotency_key = $1", key),
            timeout=10,
        )
        # ... and the webhook's sender retries: answered at once, the job exists.
        transport = httpx.ASGITransport(app=ingest.http_app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
            again = await asyncio.wait_for(
                http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}), 5
            )
        assert again.status_code == 200, again.text
        assert again.json()["job_id"] == job_id and again.json()["duplicate"] is True

        await asyncio.to_thread(private_redis.kill)  # ... then down: that publish fails
        try:
            outcome: object = (await first).job_id
        except grpc.aio.AioRpcError as err:
            outcome = err.code()
        assert await job_row(pool, job_id) is not None, (
            f"job {job_id} was deleted after a client was told it exists (first call: {outcome})"
        )

        await asyncio.to_thread(private_redis.start)  # Redis is back, empty of this job
        await wait_for(
            "the job's message in the broker",
            lambda: asyncio.to_thread(published, broker, job_id),
            timeout=30,
        )
        await wait_for(
            "the job's enqueued_at",
            lambda: pool.fetchval(
                "SELECT enqueued_at IS NOT NULL FROM relayq_jobs WHERE job_id = $1", job_id
            ),
            timeout=10,
        )
        row = await job_row(pool, job_id)
        assert row is not None and row["state"] == "queued"
        assert published(broker, job_id) == 1


#: How long each fault lasts in this test (the measurement, relayq-load outage, runs 60 s).
FAULT_SECONDS = 3.0
#: The most a submit may take while Redis is stalled or down.
ANSWER_BOUND_SECONDS = 1.0


async def test_submits_during_a_stall_and_an_outage_answer_at_once_and_all_run(
    outage_db: str,
    catalog: Catalog,
    private_redis: RedisServer,
    dlq_server: DlqServer,
    tmp_path: Path,
) -> None:
    broker = private_redis.url
    reconciler = start_reconciler(outage_db, broker, tmp_path)
    node = await asyncio.to_thread(
        start_node,
        "outage",
        outage_db,
        broker,
        dlq_server,
        tmp_path,
        RELAYQ_WORKER_CONCURRENCY="2",
    )
    accepted: list[str] = []
    slowest: dict[str, float] = {}
    # Pushes time out within the stall (1 s), so it exercises the retry of a hung push.
    limits = OutboxLimits(publish_timeout=1.0, retry_max=0.5)
    try:
        async with ingest_server(outage_db, broker, catalog, outbox=limits) as ingest:
            transport = httpx.ASGITransport(app=ingest.http_app)  # type: ignore[arg-type]
            health = health_pb2_grpc.HealthStub(ingest.channel)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:

                async def submit_for(phase: str) -> None:
                    """Submits over both doors for FAULT_SECONDS, each answer timed."""
                    until = time.monotonic() + FAULT_SECONDS
                    n = 0
                    while time.monotonic() < until:
                        n += 1
                        started = time.monotonic()
                        reply = await ingest.stub.SubmitJob(
                            request({"phase": phase, "n": n}), timeout=30
                        )
                        grpc_took = time.monotonic() - started
                        started = time.monotonic()
                        answer = await http.post(
                            "/v1/jobs",
                            json={"task": "demo.echo", "payload": {"phase": phase, "n": -n}},
                            timeout=30,
                        )
                        http_took = time.monotonic() - started
                        assert answer.status_code == 201, answer.text
                        accepted.extend([reply.job_id, answer.json()["job_id"]])
                        slowest[phase] = max(slowest.get(phase, 0.0), grpc_took, http_took)
                        await asyncio.sleep(0.1)
                    check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert check.status == health_pb2.HealthCheckResponse.SERVING, phase
                    assert (await http.get("/healthz")).status_code == 200

                failed = sample("relayq_ingest_publish_failures_total")
                os.kill(private_redis.pid, signal.SIGSTOP)  # stalled: connections hang
                try:
                    await submit_for("stall")
                finally:
                    os.kill(private_redis.pid, signal.SIGCONT)
                # The outbox's pushes hung and timed out meanwhile; the submits did not wait.
                assert sample("relayq_ingest_publish_failures_total") > failed
                await asyncio.to_thread(private_redis.stop)  # down: connections refused
                try:
                    await submit_for("outage")
                finally:
                    await asyncio.to_thread(private_redis.start)
                assert slowest["stall"] < ANSWER_BOUND_SECONDS, slowest
                assert slowest["outage"] < ANSWER_BOUND_SECONDS, slowest

                pool = ingest.jobs._pool
                succeeded = "SELECT count(*) FROM relayq_jobs WHERE job_id = ANY($1::text[])"
                succeeded += " AND state = 'succeeded'"
                await wait_for(
                    f"all {len(accepted)} accepted jobs to run",
                    lambda: _all(pool.fetchval(succeeded, accepted), len(accepted)),
                    timeout=60,
                )
    finally:
        await asyncio.to_thread(node.stop, 15)
        await asyncio.to_thread(reconciler.stop, 10)
    assert len(accepted) >= 10


async def _all(count: Any, expected: int) -> bool:
    return int(await count) == expected


def sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def spec(n: int) -> JobSpec:
    return JobSpec(f"ob-{uuid.uuid4()}", f"ob-{uuid.uuid4()}", "demo.echo", "default", {"n": n})


async def test_broker_down_accepts_at_once_and_never_deletes(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2, session_state=False)
    publisher = Publisher(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    jobs = JobService(
        pool, publisher, JobLedger(), outbox=OutboxLimits(retry_max=0.1, shutdown_flush=0.5)
    )
    failures = sample("relayq_ingest_publish_failures_total")
    left = sample("relayq_ingest_outbox_dropped_total", reason="shutdown")
    job = spec(1)
    try:
        started = time.monotonic()
        (result,) = await jobs.submit([job])
        assert time.monotonic() - started < ANSWER_BOUND_SECONDS
        assert isinstance(result, SubmitResult) and result.job_id == job.job_id
        assert not result.duplicate and jobs.outbox.backlog == 1
        await wait_for(
            "three failed pushes",
            lambda: _true(sample("relayq_ingest_publish_failures_total") >= failures + 3),
            timeout=10,
        )
        started = time.monotonic()
        await jobs.close()  # SIGTERM with Redis still down: a bounded flush, then it gives up
        assert time.monotonic() - started < 2
        assert jobs.outbox.backlog == 0
        assert sample("relayq_ingest_outbox_dropped_total", reason="shutdown") == left + 1
        row = await job_row(pool, job.job_id)
        # Still accepted: queued, never enqueued, which is what the reconciler publishes.
        assert row is not None and row["state"] == "queued" and row["enqueued_at"] is None
    finally:
        await publisher.close()
        await pool.close()


async def test_the_outbox_logs_in_its_own_context_not_the_first_submits(
    database_url: str,
) -> None:
    """The publishing task is started by a submit, but lives on: its lines must not carry that
    request's bound fields (a client name, a span's trace id) for ever after."""
    captured = LogCapture()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, captured],
        cache_logger_on_first_use=False,
    )
    pool = await create_pool(database_url, max_size=2, session_state=False)
    publisher = Publisher(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    jobs = JobService(
        pool, publisher, JobLedger(), outbox=OutboxLimits(retry_max=0.05, shutdown_flush=0.1)
    )
    try:
        with structlog.contextvars.bound_contextvars(client="first-caller"):
            await jobs.submit([spec(1)])
        await wait_for(
            "a failed push",
            lambda: _true(any(e["event"] == "outbox_publish_failed" for e in captured.entries)),
            timeout=10,
        )
    finally:
        await jobs.close()
        await publisher.close()
        await pool.close()
        structlog.configure(**old)
    submitted = [e for e in captured.entries if e["event"] == "job_submitted"]
    assert submitted and submitted[0]["client"] == "first-caller"
    outbox = [e for e in captured.entries if e["event"].startswith("outbox_")]
    assert outbox and not [e for e in outbox if "client" in e], outbox
    failed = next(e for e in outbox if e["event"] == "outbox_publish_failed")
    assert failed["jobs"] == 1 and failed["waiting"] == 1, failed  # counted once, not twice


async def test_shutdown_publishes_what_waits(database_url: str, private_redis: RedisServer) -> None:
    pool = await create_pool(database_url, max_size=2, session_state=False)
    publisher = Publisher(private_redis.url)
    jobs = JobService(pool, publisher, JobLedger())
    specs = [spec(n) for n in range(50)]
    try:
        for one in specs:  # 50 calls, closed at once: nothing has had time to go out
            await jobs.submit([one])
        await jobs.close()
        assert jobs.outbox.backlog == 0
        in_broker = {m["headers"]["id"] for m in broker_messages(private_redis.url, "default")}
        assert in_broker == {s.job_id for s in specs}
        marked = await pool.fetchval(
            "SELECT count(*) FROM relayq_jobs WHERE job_id = ANY($1::text[])"
            " AND enqueued_at IS NOT NULL",
            [s.job_id for s in specs],
        )
        assert marked == 50
    finally:
        await publisher.close()
        await pool.close()


async def test_jobs_past_the_bounds_are_left_to_the_reconciler_which_publishes_them(
    outage_db: str, private_redis: RedisServer
) -> None:
    pool = await create_pool(outage_db, max_size=4, session_state=False)
    await pool.execute("TRUNCATE relayq_jobs CASCADE")
    dead = Publisher(f"redis://127.0.0.1:{free_port()}/0")  # ingest cannot reach its broker
    jobs = JobService(
        pool, dead, JobLedger(), outbox=OutboxLimits(max_jobs=5, max_age=0.5, retry_max=0.05)
    )
    full = sample("relayq_ingest_outbox_dropped_total", reason="backlog_full")
    old = sample("relayq_ingest_outbox_dropped_total", reason="max_age")
    live = Publisher(private_redis.url)
    client = aioredis.Redis.from_url(private_redis.url)
    reconciler = Reconciler(
        pool, client, live, ["default"], deadlines=Deadlines.all(1.0), batch_size=50
    )
    specs = [spec(n) for n in range(8)]
    try:
        results = await jobs.submit(specs)
        assert all(isinstance(r, SubmitResult) for r in results)
        # At most max_jobs wait in memory: the three oldest are the reconciler's already.
        assert jobs.outbox.backlog == 5
        assert sample("relayq_ingest_outbox_dropped_total", reason="backlog_full") == full + 3
        await wait_for(
            "the rest to pass max_age", lambda: _true(jobs.outbox.backlog == 0), timeout=10
        )
        assert sample("relayq_ingest_outbox_dropped_total", reason="max_age") == old + 5
        ids = [s.job_id for s in specs]
        waiting = "SELECT count(*) FROM relayq_jobs WHERE job_id = ANY($1::text[])"
        waiting += " AND state = 'queued' AND enqueued_at IS NULL"
        assert await pool.fetchval(waiting, ids) == 8  # every one still accepted

        async def republished() -> bool:
            await reconciler.cycle()
            sent = {m["headers"]["id"] for m in broker_messages(private_redis.url, "default")}
            return sent >= set(ids)

        await wait_for("the reconciler to publish all 8", republished, timeout=15)
        assert await pool.fetchval(waiting, ids) == 0
    finally:
        await jobs.close()
        await dead.close()
        await live.close()
        await client.aclose()
        await pool.close()


async def _true(value: bool) -> bool:
    return value
