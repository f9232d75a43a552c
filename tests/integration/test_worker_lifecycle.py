"""A worker node's life: graceful shutdown on SIGTERM, and the watchdog that ends a node that is
connected but no longer consuming.

Each test runs its own node on its own Redis database (so the session worker never takes its
messages) against the session's ledger.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.db.migrate import migrate_ledger
from relayq_core.jobs import JobSpec
from relayq_core.publish import Publisher
from relayq_devstack.health import celery_workers_ready
from relayq_devstack.postgres import PostgresServer
from relayq_devstack.process import ServiceProcess
from relayq_devstack.redis import RedisServer, start_redis
from tests.conftest import BIN, REPO, WORKER_TEST_LIMITS, DlqServer, service_env
from worker_svc.watchdog import EXIT_STALLED

pytestmark = pytest.mark.integration


def db_url(redis_server: RedisServer, db: int) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{db}"


def start_node(
    name: str, database_url: str, broker_url: str, dlq: DlqServer, log_dir: Path, **env: str
) -> ServiceProcess:
    proc = ServiceProcess(
        name,
        [str(BIN / "relayq-worker")],
        log_path=log_dir / f"{name}.log",
        env=service_env(
            database_url,
            broker_url,
            RELAYQ_WORKER_NODE_NAME=f"{name}@%h",
            RELAYQ_RETRY_POLICY=str(REPO / "tests" / "data" / "retry-fast.toml"),
            RELAYQ_DLQ_GRPC=dlq.address,
            **{**WORKER_TEST_LIMITS, **env},
        ),
        inherit_env=False,
    )
    proc.wait_healthy(
        lambda: celery_workers_ready(broker_url, 1, name_prefix=f"{name}@"), timeout=60
    )
    return proc


def submit(database_url: str, broker_url: str, task: str, payload: dict[str, object]) -> str:
    """Records and publishes one job, as ingest does; its job id."""
    spec = JobSpec(f"life-{uuid.uuid4()}", f"life-{uuid.uuid4()}", task, "default", payload)

    async def go() -> None:
        conn = await connect(database_url)
        publisher = Publisher(broker_url)
        try:
            await JobLedger().insert_jobs(conn, [spec])
            await publisher.publish([spec])
            await JobLedger().mark_enqueued(conn, [spec.job_id])
        finally:
            await publisher.close()
            await conn.close()

    asyncio.run(go())
    return spec.job_id


def job_row(database_url: str, job_id: str) -> dict[str, object]:
    async def go() -> dict[str, object]:
        conn = await connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT state, attempt_count, duplicate_deliveries FROM relayq_jobs"
                " WHERE job_id = $1",
                job_id,
            )
            attempts = await conn.fetch(
                "SELECT outcome, worker FROM relayq_job_attempts WHERE job_id = $1 ORDER BY number",
                job_id,
            )
        finally:
            await conn.close()
        assert row is not None
        return {**dict(row), "attempts": [(a["outcome"], a["worker"]) for a in attempts]}

    return asyncio.run(go())


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("lifecycle")


def test_sigterm_lets_the_running_job_finish_once(
    database_url: str, redis_server: RedisServer, dlq_server: DlqServer, log_dir: Path
) -> None:
    broker = db_url(redis_server, 6)
    node = start_node("graceful", database_url, broker, dlq_server, log_dir)
    try:
        job_id = submit(database_url, broker, "demo.slow", {"ms": 3000})
        wait_until(lambda: job_row(database_url, job_id)["state"] == "running", 30, "the run")
        started = time.monotonic()
        node.request_stop()  # SIGTERM to the node's main process, as compose and k8s send it
        wait_until(lambda: not node.is_running(), 30, "the warm shutdown")
    finally:
        node.stop(timeout=5)
    assert node.returncode == 0
    assert time.monotonic() - started < 20
    row = job_row(database_url, job_id)
    assert row["state"] == "succeeded"
    assert row["attempt_count"] == 1 and row["duplicate_deliveries"] == 0
    attempts = cast(list[tuple[str, str]], row["attempts"])
    assert len(attempts) == 1
    assert attempts[0][0] == "succeeded" and attempts[0][1].startswith("graceful@")
    client = redis.Redis.from_url(broker)
    try:  # acknowledged, and no copy kept (no ack emulation): nothing left to redeliver
        assert client.llen("default") == 0 and client.exists("unacked", "unacked_index") == 0
    finally:
        client.close()


def test_the_watchdog_ends_a_node_that_stopped_consuming(
    database_url: str, redis_server: RedisServer, dlq_server: DlqServer, log_dir: Path
) -> None:
    broker = db_url(redis_server, 5)
    redis.Redis.from_url(broker).flushdb()
    node = start_node(
        "stall",
        database_url,
        broker,
        dlq_server,
        log_dir,
        RELAYQ_WORKER_CONCURRENCY="1",
        RELAYQ_WORKER_STALL_SECONDS="2",
        RELAYQ_WORKER_WATCHDOG_INTERVAL_SECONDS="0.25",
    )
    try:
        time.sleep(3)
        assert node.is_running(), "idle with an empty queue is not a stall"

        # Its only slot busy for 3 s while another job waits: not a stall either.
        slow = submit(database_url, broker, "demo.slow", {"ms": 3000})
        echo = submit(database_url, broker, "demo.echo", {"after": "slow"})
        for job_id in (slow, echo):
            wait_until(
                lambda j=job_id: job_row(database_url, j)["state"] == "succeeded",  # type: ignore[misc]
                30,
                "the jobs",
            )
        assert node.is_running()

        # Connected, answering pings, but no longer consuming: Celery's reconnect bug, made
        # on purpose by cancelling the node's consumer.
        from celery import Celery

        control = Celery("stall-test", broker=broker, set_as_current=False)
        try:
            replies = control.control.cancel_consumer(
                "default",
                destination=[n for n in _nodes(broker) if n.startswith("stall@")],
                reply=True,
            )
        finally:
            control.close()
        assert replies, "the node acknowledged the cancel"
        stuck = submit(database_url, broker, "demo.echo", {"stuck": True})
        wait_until(lambda: not node.is_running(), 20, "the watchdog")
    finally:
        node.stop(timeout=5)
    assert node.returncode == EXIT_STALLED
    events = [
        json.loads(line) for line in node.log_path.read_text().splitlines() if line.startswith("{")
    ]
    stalled = [e for e in events if e["event"] == "worker_stalled"]
    assert len(stalled) == 1 and stalled[0]["depth"] == 1, stalled
    assert job_row(database_url, stuck)["state"] == "queued"  # left for a healthy node


def _nodes(broker: str) -> list[str]:
    from relayq_devstack.health import celery_nodes

    return sorted(celery_nodes(broker))


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of its own, to restart."""
    server = start_redis(tmp_path_factory.mktemp("restart-redis"), persistence=True)
    yield server
    server.stop()


@pytest.fixture
def own_database(postgres: PostgresServer) -> str:
    """A ledger of its own: the reconciler acts on every job it finds."""
    postgres.psql("DROP DATABASE IF EXISTS lifecycle_tests", database="postgres")
    postgres.psql("CREATE DATABASE lifecycle_tests", database="postgres")
    url = postgres.url_for("lifecycle_tests")
    asyncio.run(migrate_ledger(url))
    return url


def test_a_node_keeps_consuming_across_redis_restarts(
    own_database: str, own_redis: RedisServer, dlq_server: DlqServer, log_dir: Path
) -> None:
    """Celery closes its channel after a connection loss; with messages unacknowledged (a job
    running, a retry waiting) kombu's restore and the late ack crashed the node
    (worker_svc/transport.py). The node must keep consuming; the job that was running
    finishes once; the retry it held in memory (dropped on reconnect) is brought back by the
    reconciler."""
    broker = own_redis.url
    reconciler = ServiceProcess(
        "reconciler",
        [str(BIN / "relayq-reconciler")],
        log_path=log_dir / "reconciler.log",
        env=service_env(
            own_database,
            broker,
            RELAYQ_RECONCILER_INTERVAL_SECONDS="0.5",
            RELAYQ_RECONCILER_SCAN_INTERVAL_SECONDS="1",
            RELAYQ_RECONCILER_DEADLINE_SECONDS="2",
        ),
        inherit_env=False,
    )
    node = start_node("restart", own_database, broker, dlq_server, log_dir)
    try:
        for round_ in range(2):
            running = submit(own_database, broker, "demo.slow", {"ms": 2000})
            waiting = submit(own_database, broker, "demo.flaky", {"fail_times": 1})
            wait_until(
                lambda j=running: job_row(own_database, j)["state"] == "running",  # type: ignore[misc]
                30,
                "the slow job",
            )
            own_redis.restart(persistence=True)
            after = submit(own_database, broker, "demo.echo", {"round": round_})
            for job_id in (running, waiting, after):
                wait_until(
                    lambda j=job_id: job_row(own_database, j)["state"] == "succeeded",  # type: ignore[misc]
                    60,
                    f"job {job_id} after the restart",
                )
            assert node.is_running(), node.log_tail()
            row = job_row(own_database, running)
            assert row["attempt_count"] == 1, row
    finally:
        node.stop(timeout=10)
        reconciler.stop(timeout=10)
    assert "Unrecoverable error" not in node.log_path.read_text()
