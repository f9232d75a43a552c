"""Session fixtures: real PostgreSQL, Redis, gRPC servers and Celery workers on free ports.

Nothing here uses the machine's own Postgres or Redis: each test session starts its own from the
project's wheels. A fixture that cannot start its server fails the tests that need it (never
skips them), so CI cannot go green on a missing service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio

from dlq_svc.main import migrate as migrate_dlq
from ingest_svc.grpc_api import IngestServicer, registration
from ingest_svc.http_api import create_app
from ingest_svc.submit import JobService
from ingest_svc.validation import Limits
from relayq.v1 import dead_letter_pb2_grpc, ingest_pb2_grpc
from relayq_core.catalog import Catalog, load_catalog
from relayq_core.db.ledger import JobLedger, connect, create_pool
from relayq_core.db.migrate import migrate_ledger
from relayq_core.grpc_server import RunningServer, start_server
from relayq_core.publish import Publisher
from relayq_core.settings import packaged_default, repo_root
from relayq_devstack.health import celery_workers_ready, grpc_healthy
from relayq_devstack.ports import free_port
from relayq_devstack.postgres import PostgresServer, start_postgres
from relayq_devstack.process import ServiceProcess
from relayq_devstack.redis import RedisServer, start_redis
from worker_svc.schema import migrate as migrate_worker

REPO = repo_root()
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(packaged_default("tasks.toml"))


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("pg") / "data", fast=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"), persistence=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres: PostgresServer) -> str:
    """The session's database with every owner's migrations applied."""
    url = postgres.url
    asyncio.run(migrate_ledger(url))
    asyncio.run(migrate_dlq(url))
    asyncio.run(migrate_worker(url))
    return url


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


#: A worker under test stops hung handlers and takes over dead workers' jobs in seconds.
WORKER_TEST_LIMITS = {
    "RELAYQ_WORKER_LEASE_SECONDS": "3",
    "RELAYQ_WORKER_KILL_GRACE_SECONDS": "1",
    "RELAYQ_WORKER_HTTP_TIMEOUT_SECONDS": "1",
}


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment a relayq process gets in tests (no OTLP export, JSON logs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYQ_", "OTEL_"))}
    env.update(
        RELAYQ_DATABASE_URL=database_url,
        RELAYQ_REDIS_URL=redis_url,
        RELAYQ_LOG_JSON="true",
        RELAYQ_CATALOG=str(packaged_default("tasks.toml")),
        # Metrics are on by default on fixed ports (9200, 9101, 9102): off in tests unless a
        # test asks for them, so that many processes can run side by side.
        RELAYQ_WORKER_METRICS_PORT="0",
        RELAYQ_DLQ_METRICS_PORT="0",
        RELAYQ_RECONCILER_PORT="0",
    )
    env.update(extra)
    return env


@dataclass
class Ingest:
    """An in-process ingest-svc: the real gRPC server on a free port, and its HTTP app."""

    address: str
    jobs: JobService
    running: RunningServer
    channel: grpc.aio.Channel
    stub: ingest_pb2_grpc.IngestServiceAsyncStub
    http_app: object


@pytest.fixture(scope="session")
def quiet_broker_url(redis_server: RedisServer) -> str:
    """A Redis database on the session's server that no worker consumes."""
    return redis_server.url.rsplit("/", 1)[0] + "/9"


@contextlib.asynccontextmanager
async def ingest_server(
    database_url: str, broker_url: str, catalog: Catalog, **options: Any
) -> AsyncIterator[Ingest]:
    """An in-process ingest on ``broker_url``; ``options`` go to :class:`JobService`."""
    pool = await create_pool(database_url, max_size=10, session_state=False)  # as ingest's
    publisher = Publisher(broker_url)
    jobs = JobService(pool, publisher, JobLedger(), **options)
    limits = Limits(max_payload_bytes=64 * 1024, max_payload_depth=32)
    servicer = IngestServicer(jobs, catalog, limits, max_batch=1000)
    running = await start_server([registration(servicer)], "127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Ingest(
            address=address,
            jobs=jobs,
            running=running,
            channel=channel,
            stub=ingest_pb2_grpc.IngestServiceStub(channel),
            http_app=create_app(jobs, catalog, limits),
        )
    finally:
        await channel.close(None)
        await running.stop(0)
        await jobs.close()
        await pool.close()
        await publisher.close()


async def _ingest(database_url: str, broker_url: str, catalog: Catalog) -> AsyncIterator[Ingest]:
    async with ingest_server(database_url, broker_url, catalog) as handle:
        yield handle


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def ingest(
    database_url: str, quiet_broker_url: str, catalog: Catalog
) -> AsyncIterator[Ingest]:
    """In-process ingest whose messages stay in the broker (no worker reads them)."""
    async for handle in _ingest(database_url, quiet_broker_url, catalog):
        yield handle


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def live_ingest(
    database_url: str, redis_url: str, catalog: Catalog, worker: ServiceProcess
) -> AsyncIterator[Ingest]:
    """In-process ingest publishing to the broker the test worker consumes."""
    async for handle in _ingest(database_url, redis_url, catalog):
        yield handle


class DlqServer:
    """dlq-svc as a real subprocess on a fixed port, so tests can take it down and back."""

    TOKEN = "test-admin-token"

    def __init__(self, database_url: str, redis_url: str, log_dir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._env = service_env(
            database_url,
            redis_url,
            RELAYQ_DLQ_GRPC_PORT=str(self.port),
            RELAYQ_DLQ_ADMIN_TOKEN=self.TOKEN,
        )
        self._log = log_dir / "dlq.log"
        self.proc: ServiceProcess | None = None

    def start(self) -> None:
        self.proc = ServiceProcess(
            "dlq",
            [str(BIN / "relayq-dlq")],
            log_path=self._log,
            env=self._env,
            inherit_env=False,
        )
        self.proc.wait_healthy(lambda: grpc_healthy(self.address), timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def dlq_server(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DlqServer]:
    """The dlq-svc the test worker reports dead letters to."""
    server = DlqServer(database_url, redis_url, tmp_path_factory.mktemp("dlq"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    """Where the test worker node serves its (multiprocess) metrics."""
    return free_port()


@pytest.fixture(scope="session")
def worker(
    database_url: str,
    redis_url: str,
    dlq_server: DlqServer,
    worker_metrics_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """One real Celery worker node (2 prefork processes) in a subprocess."""
    proc = ServiceProcess(
        "worker",
        [str(BIN / "relayq-worker")],
        log_path=tmp_path_factory.mktemp("worker") / "worker.log",
        env=service_env(
            database_url,
            redis_url,
            RELAYQ_WORKER_CONCURRENCY="2",
            RELAYQ_WORKER_NODE_NAME="test-worker@%h",
            RELAYQ_RETRY_POLICY=str(REPO / "tests" / "data" / "retry-fast.toml"),
            RELAYQ_DLQ_GRPC=dlq_server.address,
            RELAYQ_WORKER_DLQ_RETRY_MAX_SECONDS="1",
            RELAYQ_WORKER_METRICS_PORT=str(worker_metrics_port),
            **WORKER_TEST_LIMITS,
        ),
        inherit_env=False,
    )
    try:
        proc.wait_healthy(lambda: celery_workers_ready(redis_url, 1), timeout=60)
        yield proc
    finally:
        proc.stop(timeout=15)


async def outbox_drained(ingest: Ingest, timeout: float = 10.0) -> None:
    """Waits until ``ingest`` has handed every job it accepted to the broker (its outbox
    publishes after the answer)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while ingest.jobs.outbox.backlog:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{ingest.jobs.outbox.backlog} jobs still unpublished after {timeout} s"
        )
        await asyncio.sleep(0.005)


@pytest_asyncio.fixture(loop_scope="session")
async def observer(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the session's ledger, for reading what a test's deliveries did."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


@pytest_asyncio.fixture(loop_scope="session")
async def dlq_client(
    dlq_server: DlqServer,
) -> AsyncIterator[dead_letter_pb2_grpc.DeadLetterServiceAsyncStub]:
    """A gRPC client of the session's dlq-svc (the one the test worker reports to)."""
    async with grpc.aio.insecure_channel(dlq_server.address) as channel:
        yield dead_letter_pb2_grpc.DeadLetterServiceStub(channel)


def broker_messages(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in ``queue`` (kombu's Redis list), decoded."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    out = []
    for item in raw:
        envelope = json.loads(item)
        body = json.loads(base64.b64decode(envelope["body"]))
        out.append({"headers": envelope["headers"], "args": body[0], "kwargs": body[1]})
    return out
