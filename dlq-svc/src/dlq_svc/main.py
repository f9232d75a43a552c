"""``relayq-dlq``: the dead-letter service (gRPC).

It owns the DLQ store and applies its own migrations (``dlq_svc/migrations``) at start-up; no
other service touches its tables.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlq_svc.config import DlqSettings
from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc
from relayq_core.db.ledger import connect
from relayq_core.db.migrate import apply_migrations
from relayq_core.grpc_server import Registration, run_until_signalled, start_server
from relayq_core.logging import configure_logging, get_logger
from relayq_core.telemetry import configure_tracing

log = get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def registration(servicer: dead_letter_pb2_grpc.DeadLetterServiceServicer) -> Registration:
    """How :func:`relayq_core.grpc_server.start_server` mounts the servicer."""
    return Registration(
        full_name=dead_letter_pb2.DESCRIPTOR.services_by_name["DeadLetterService"].full_name,
        add=lambda server: dead_letter_pb2_grpc.add_DeadLetterServiceServicer_to_server(
            servicer, server
        ),
    )


async def migrate(dsn: str) -> list[str]:
    """Applies dlq-svc's own migrations."""
    conn = await connect(dsn)
    try:
        return await apply_migrations(conn, "dlq", MIGRATIONS)
    finally:
        await conn.close()


async def serve(settings: DlqSettings) -> None:
    """Migrates, then serves until SIGTERM/SIGINT."""
    await migrate(settings.database_url)
    running = await start_server(
        [registration(dead_letter_pb2_grpc.DeadLetterServiceServicer())],
        f"{settings.host}:{settings.grpc_port}",
    )
    log.info("dlq_started", grpc_port=running.port)
    await run_until_signalled(running, grace=settings.grace_seconds)


def main() -> None:
    """Console entry point."""
    settings = DlqSettings()
    configure_logging("dlq-svc", level=settings.log_level, json=settings.log_json)
    configure_tracing("dlq-svc", export=settings.otlp_endpoint is not None)
    asyncio.run(serve(settings))
