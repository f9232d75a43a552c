"""dlq-svc in process: the real servicer on a real grpc.aio server (port 0), real PostgreSQL and
a real Redis broker. Import the fixtures into a test module to use them::

    from tests.integration.dlq_fixtures import Dlq, dlq  # noqa: F401  (pytest fixture)

A fixture imported into several modules is instantiated once per module. ``dlq`` and
``live_dlq`` share the session's database (where the session's worker also reports its dead
letters), so their tests filter on a task name of their own (:func:`unique_task`);
``fresh_dlq`` (per module) and ``empty_dlq`` (per test) run on a database of their own, for
tests that count rows globally (stats, purge).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest_asyncio
from google.protobuf import struct_pb2, timestamp_pb2

from dlq_svc.config import DlqSettings
from dlq_svc.main import build_servicer, migrate, start
from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc, job_pb2
from relayq_core.catalog import Catalog
from relayq_core.db.ledger import create_pool
from relayq_core.db.migrate import migrate_ledger
from relayq_core.grpc_server import RunningServer
from relayq_core.publish import Publisher
from relayq_devstack.postgres import PostgresServer
from relayq_devstack.process import ServiceProcess

ADMIN_TOKEN = "dlq-test-admin-token"
TRACE_URL_TEMPLATE = "http://localhost:16686/trace/{trace_id}"

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Dlq:
    """An in-process dlq-svc and a client of it."""

    address: str
    token: str
    database_url: str
    broker_url: str
    pool: asyncpg.Pool
    running: RunningServer
    channel: grpc.aio.Channel
    stub: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub

    def admin(self, actor: str = "tester@test") -> Metadata:
        """Metadata of an operator's mutating call: the admin token and who acts."""
        return (("authorization", f"Bearer {self.token}"), ("x-relayq-actor", actor))

    async def replay(
        self, metadata: Metadata | None = None, **fields: Any
    ) -> list[dead_letter_pb2.ReplayDeadLettersResponse]:
        """Runs a replay to its end; every streamed message."""
        call = self.stub.ReplayDeadLetters(
            dead_letter_pb2.ReplayDeadLettersRequest(**fields),
            metadata=metadata if metadata is not None else self.admin(),
        )
        return [m async for m in call]


@asynccontextmanager
async def dlq_server(
    database_url: str,
    broker_url: str,
    catalog: Catalog,
    *,
    admin_token: str = ADMIN_TOKEN,
    trace_url_template: str = TRACE_URL_TEMPLATE,
    max_ids: int = 10_000,
    redact_fields: str = "",
) -> AsyncIterator[Dlq]:
    """Starts dlq-svc's servicer on a free port; ``admin_token=""`` turns auth off."""
    settings = DlqSettings.model_validate(
        {
            "admin_token": admin_token or None,
            "trace_url_template": trace_url_template,
            "max_ids": max_ids,
            "RELAYQ_REDACT_FIELDS": redact_fields,
        }
    )
    pool = await create_pool(database_url, max_size=10)
    publisher = Publisher(broker_url)
    running = await start(build_servicer(pool, publisher, settings), settings, "127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Dlq(
            address=address,
            token=admin_token,
            database_url=database_url,
            broker_url=broker_url,
            pool=pool,
            running=running,
            channel=channel,
            stub=dead_letter_pb2_grpc.DeadLetterServiceStub(channel),
        )
    finally:
        await channel.close(None)
        await running.stop(0)
        await pool.close()
        await publisher.close()


async def fresh_database(postgres: PostgresServer) -> str:
    """A new, empty database on the session's server with the ledger's and dlq-svc's tables."""
    name = f"dlq_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = postgres.url_for(name)
    await migrate_ledger(url)
    await migrate(url)
    return url


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dlq(database_url: str, quiet_broker_url: str, catalog: Catalog) -> AsyncIterator[Dlq]:
    """dlq-svc with an admin token, on the session database; replays go to the quiet broker."""
    async with dlq_server(database_url, quiet_broker_url, catalog) as handle:
        yield handle


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live_dlq(
    database_url: str, redis_url: str, catalog: Catalog, worker: ServiceProcess
) -> AsyncIterator[Dlq]:
    """dlq-svc whose replays go to the broker the session's worker consumes."""
    async with dlq_server(database_url, redis_url, catalog) as handle:
        yield handle


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fresh_dlq(
    postgres: PostgresServer, quiet_broker_url: str, catalog: Catalog
) -> AsyncIterator[Dlq]:
    """dlq-svc on a database of this module's own, with an admin token."""
    async with dlq_server(await fresh_database(postgres), quiet_broker_url, catalog) as handle:
        yield handle


@pytest_asyncio.fixture(loop_scope="session")
async def empty_dlq(
    postgres: PostgresServer, quiet_broker_url: str, catalog: Catalog
) -> AsyncIterator[Dlq]:
    """dlq-svc on a new database for this test alone (exact global counts: stats, purge)."""
    async with dlq_server(await fresh_database(postgres), quiet_broker_url, catalog) as handle:
        yield handle


# Building requests ------------------------------------------------------------------------------


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp."""
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def unique_task(label: str = "case") -> str:
    """A task name no other test uses (a valid catalogue-style name), to filter on."""
    return f"t{uuid.uuid4().hex[:10]}.{label}"


def report_request(
    job_id: str | None = None,
    *,
    task: str = "demo.echo",
    queue: str = "default",
    payload: dict[str, Any] | None = None,
    reason: str = "retries_exhausted",
    error_type: str = "ValueError",
    error_message: str = "boom",
    final_attempt: int = 6,
    dead_lettered_at: datetime | None = None,
    idempotency_key: str = "",
    attempts: Sequence[job_pb2.Attempt] | None = None,
    trace_id: str = "",
    worker: str = "test-worker@host",
) -> dead_letter_pb2.ReportDeadLetterRequest:
    """A worker's report of one dead-lettering, with sensible defaults."""
    job_id = job_id or f"dlq-{uuid.uuid4()}"
    when = dead_lettered_at or datetime.now(UTC)
    struct = struct_pb2.Struct()
    struct.update(payload if payload is not None else {"n": 1})
    if attempts is None:
        attempts = [
            job_pb2.Attempt(
                number=n,
                worker=worker,
                started_at=ts(when - timedelta(seconds=final_attempt - n + 1)),
                duration_seconds=0.01,
                outcome="failed",
                error_type=error_type,
                error_message=error_message,
                countdown_seconds=0.0 if n == final_attempt else 2.0**n,
            )
            for n in range(1, final_attempt + 1)
        ]
    return dead_letter_pb2.ReportDeadLetterRequest(
        job_id=job_id,
        idempotency_key=idempotency_key,
        task=task,
        queue=queue,
        payload=struct,
        reason=reason,
        error_type=error_type,
        error_message=error_message,
        traceback=f"Traceback (most recent call last):\n  ...\n{error_type}: {error_message}",
        attempts=list(attempts),
        trace_id=trace_id,
        dead_lettered_at=ts(when),
        final_attempt=final_attempt,
        worker=worker,
    )
