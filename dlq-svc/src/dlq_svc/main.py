"""``relayq-dlq``: the dead-letter service (gRPC).

It owns the DLQ store and applies its own migrations (``dlq_svc/migrations``) at start-up; no
other service touches its tables.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from dlq_svc.auth import AdminTokenInterceptor
from dlq_svc.config import DlqSettings
from dlq_svc.grpc_api import DeadLetterServicer, registration
from dlq_svc.metrics import serve as serve_metrics
from dlq_svc.replay import Replayer
from dlq_svc.service import DeadLetters
from dlq_svc.store import PostgresStore
from relayq_core.catalog import load_catalog
from relayq_core.db.ledger import JobLedger, connect, create_pool
from relayq_core.db.migrate import apply_migrations
from relayq_core.grpc_server import RunningServer, run_until_signalled, start_server
from relayq_core.logging import configure_logging, get_logger
from relayq_core.publish import Publisher
from relayq_core.telemetry import configure_tracing
from relayq_core.tls import server_tls

__all__ = ["build_servicer", "migrate", "registration", "start", "serve", "main"]

log = get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


async def migrate(dsn: str) -> list[str]:
    """Applies dlq-svc's own migrations."""
    conn = await connect(dsn)
    try:
        return await apply_migrations(conn, "dlq", MIGRATIONS)
    finally:
        await conn.close()


def build_servicer(
    pool: asyncpg.Pool, publisher: Publisher, settings: DlqSettings
) -> DeadLetterServicer:
    """The real servicer over ``pool`` (DLQ store and job ledger) and ``publisher``."""
    store = PostgresStore(pool)
    replayer = Replayer(store, JobLedger(), pool, publisher)
    return DeadLetterServicer(
        DeadLetters(store, replayer),
        trace_url_template=settings.trace_url_template,
        max_ids=settings.max_ids,
        redact_fields=settings.redact_field_names,
    )


def interceptors(settings: DlqSettings) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The admin-token check when a token is configured; nothing otherwise."""
    token = settings.admin_token_value
    return [AdminTokenInterceptor(token)] if token else []


async def start(
    servicer: DeadLetterServicer, settings: DlqSettings, address: str | None = None
) -> RunningServer:
    """Starts the gRPC server (health, reflection, admin-token check, TLS when configured) on
    ``address`` (default: the settings' host and port; port 0 picks a free one)."""
    if not settings.admin_token_value:
        log.warning("dlq_admin_token_unset", detail="Replay, Drop and Purge are open to anyone")
    return await start_server(
        [registration(servicer)],
        address or f"{settings.host}:{settings.grpc_port}",
        interceptors=interceptors(settings),
        max_message_bytes=settings.max_message_bytes,
        tls=server_tls(settings),
    )


async def serve(settings: DlqSettings) -> None:
    """Migrates, then serves until SIGTERM/SIGINT."""
    await migrate(settings.database_url)
    # A malformed catalogue stops dlq-svc at start-up, as it stops every service.
    load_catalog(settings.catalog_path)
    pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
    publisher = Publisher(settings.redis_url)
    running = await start(build_servicer(pool, publisher, settings), settings)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.metrics_host)
    log.info(
        "dlq_started",
        grpc_port=running.port,
        auth=bool(settings.admin_token_value),
        tls=running.tls,
        trace_urls=bool(settings.trace_url_template),
    )

    async def on_stop() -> None:
        await pool.close()
        await publisher.close()

    await run_until_signalled(running, grace=settings.grace_seconds, on_stop=on_stop)


def main() -> None:
    """Console entry point."""
    settings = DlqSettings()
    configure_logging(
        "dlq-svc",
        level=settings.log_level,
        json=settings.log_json,
        redact_fields=settings.redact_field_names,
    )
    configure_tracing(
        "dlq-svc",
        export=settings.otlp_endpoint is not None,
        traces_dir=settings.traces_dir,
        traces_max_bytes=settings.traces_max_bytes,
        grpc_server=True,
        celery=True,
    )
    asyncio.run(serve(settings))
