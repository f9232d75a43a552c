"""Fixtures for the hostile-input suite: in-process ingest-svc and dlq-svc on a database and a
broker database of their own, so every count the suite takes is exact.

The servers are the real ones (``tests.conftest._ingest``, ``dlq_fixtures.dlq_server``): real
grpc.aio servers on free ports, real PostgreSQL, a real Redis database no worker reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
import pytest_asyncio
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relayq_core.catalog import Catalog
from relayq_devstack.postgres import PostgresServer
from relayq_devstack.redis import RedisServer
from tests.conftest import Ingest, _ingest, outbox_drained
from tests.integration.dlq_fixtures import Dlq, dlq_server, fresh_database

#: The statuses a hostile request may get: each a deliberate answer, none a server fault.
DELIBERATE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
DELIBERATE_NAMES = frozenset(code.name for code in DELIBERATE)
#: Below this a request is not "too large": RESOURCE_EXHAUSTED then means the server's own
#: reply overflowed (an error message quoting a huge value back, say).
SMALL_REQUEST_BYTES = 1024 * 1024


def check_refusal(err: grpc.aio.AioRpcError, request_bytes: int) -> None:
    """The refusal is deliberate, and RESOURCE_EXHAUSTED only for a large request."""
    assert err.code() in DELIBERATE, (err.code(), err.details())
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert request_bytes > SMALL_REQUEST_BYTES, (request_bytes, err.details())


@dataclass(frozen=True)
class Counts:
    """What a rejected request must not change: ledger rows, broker messages, DLQ rows."""

    jobs: int
    messages: int
    dlq_active: int
    dlq_audit: int


@dataclass
class Fuzz:
    """The servers under test and the stores they write to."""

    ingest: Ingest
    dlq: Dlq
    pool: asyncpg.Pool
    broker: redis.Redis
    queues: tuple[str, ...]

    def __repr__(self) -> str:  # hypothesis prints the fixture with every failing example
        return f"Fuzz(ingest={self.ingest.address}, dlq={self.dlq.address})"

    async def counts(self) -> Counts:
        """The stores' counts once ingest has published every job it accepted (the outbox
        publishes after the answer: counting before would race it)."""
        await outbox_drained(self.ingest)
        row = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM relayq_jobs) AS jobs,"
            " (SELECT count(*) FROM dlq_entries WHERE status = 'active') AS dlq_active,"
            " (SELECT count(*) FROM dlq_audit) AS dlq_audit"
        )
        assert row is not None
        messages = sum(int(self.broker.llen(q)) for q in self.queues)
        return Counts(row["jobs"], messages, row["dlq_active"], row["dlq_audit"])


@pytest.fixture(scope="session")
def fuzz_broker_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis database of the suite's own (flushed afterwards: thousands of messages)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    yield url
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fuzz(
    postgres: PostgresServer, fuzz_broker_url: str, catalog: Catalog
) -> AsyncIterator[Fuzz]:
    """ingest-svc and dlq-svc (admin token on) over one fresh database and broker database."""
    url = await fresh_database(postgres)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    broker = redis.Redis.from_url(fuzz_broker_url)
    try:
        async with dlq_server(url, fuzz_broker_url, catalog) as dlq:
            async for ingest in _ingest(url, fuzz_broker_url, catalog):
                yield Fuzz(ingest, dlq, pool, broker, tuple(catalog.queues()))
    finally:
        broker.close()
        await pool.close()


async def assert_serving(channel: grpc.aio.Channel) -> None:
    """The server still answers its health check (it survived what the test sent)."""
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
