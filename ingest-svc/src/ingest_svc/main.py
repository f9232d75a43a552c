"""``relayq-ingest``: the gRPC server and the HTTP server in one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from ingest_svc.config import IngestSettings
from ingest_svc.grpc_api import IngestServicer, registration
from ingest_svc.http_api import create_app
from ingest_svc.submit import JobService
from ingest_svc.validation import Limits
from relayq_core.catalog import load_catalog
from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.grpc_server import run_until_signalled, start_server
from relayq_core.logging import configure_logging, get_logger
from relayq_core.publish import Publisher
from relayq_core.telemetry import configure_tracing

log = get_logger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gRPC side owns SIGTERM and stops both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: IngestSettings) -> None:
    """Runs until SIGTERM/SIGINT."""
    catalog = load_catalog(settings.catalog_path)
    limits = Limits(settings.max_payload_bytes, settings.max_payload_depth)
    pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
    publisher = Publisher(settings.redis_url, catalog.default_queue)
    jobs = JobService(
        pool, publisher, JobLedger(), republish_after_seconds=settings.republish_after_seconds
    )
    servicer = IngestServicer(jobs, catalog, limits, settings.max_batch)
    running = await start_server(
        [registration(servicer)],
        f"{settings.host}:{settings.grpc_port}",
        max_message_bytes=settings.max_message_bytes,
    )
    http = _EmbeddedServer(
        uvicorn.Config(
            create_app(jobs, catalog, limits, max_body_bytes=settings.max_message_bytes),
            host=settings.host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    http_task = asyncio.create_task(http.serve())
    log.info(
        "ingest_started",
        grpc_port=running.port,
        http_port=settings.http_port,
        tasks=sorted(catalog.tasks),
    )

    async def on_stop() -> None:
        http.should_exit = True
        await http_task
        await pool.close()
        publisher.close()

    await run_until_signalled(running, grace=settings.grace_seconds, on_stop=on_stop)


def main() -> None:
    """Console entry point."""
    settings = IngestSettings()
    configure_logging("ingest-svc", level=settings.log_level, json=settings.log_json)
    configure_tracing(
        "ingest-svc", export=settings.otlp_endpoint is not None, grpc_server=True, celery=True
    )
    asyncio.run(serve(settings))
