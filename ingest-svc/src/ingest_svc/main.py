"""``relayq-ingest``: the gRPC server and the HTTP server in one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator

import uvicorn

from ingest_svc.auth import ApiKeyInterceptor, load_api_keys
from ingest_svc.config import IngestSettings
from ingest_svc.grpc_api import IngestServicer, registration
from ingest_svc.http_api import create_app
from ingest_svc.metrics import SubmitMetricsInterceptor
from ingest_svc.outbox import OutboxLimits
from ingest_svc.submit import JobService
from ingest_svc.validation import Limits
from relayq_core.catalog import load_catalog
from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.gctune import freeze_startup_heap
from relayq_core.grpc_server import run_until_signalled, start_server
from relayq_core.logging import configure_logging, get_logger
from relayq_core.publish import Publisher
from relayq_core.telemetry import configure_tracing
from relayq_core.tls import server_tls

log = get_logger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gRPC side owns SIGTERM and stops both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: IngestSettings) -> None:
    """Runs until SIGTERM/SIGINT."""
    catalog = load_catalog(settings.catalog_path)
    api_keys = load_api_keys(settings.api_keys_file, settings.api_keys)  # fails fast if malformed
    limits = Limits(settings.max_payload_bytes, settings.max_payload_depth)
    # Ingest keeps no session state on its connections: releasing one costs no round trip.
    pool = await create_pool(
        settings.database_url, max_size=settings.db_pool_size, session_state=False
    )
    publisher = Publisher(settings.redis_url)
    jobs = JobService(
        pool,
        publisher,
        JobLedger(),
        outbox=OutboxLimits(
            max_jobs=settings.outbox_max_jobs,
            max_bytes=settings.outbox_max_bytes,
            max_age=settings.outbox_max_age_seconds,
            batch=settings.publish_batch,
            publish_timeout=settings.publish_timeout_seconds,
            retry_max=settings.publish_retry_max_seconds,
            shutdown_flush=settings.shutdown_publish_seconds,
        ),
        mark_interval_seconds=settings.enqueue_mark_interval_seconds,
    )
    servicer = IngestServicer(jobs, catalog, limits, settings.max_batch)
    running = await start_server(
        [registration(servicer)],
        f"{settings.host}:{settings.grpc_port}",
        # Outermost: a call refused by the key check counts as a refused submit too.
        interceptors=[
            SubmitMetricsInterceptor(),
            *([ApiKeyInterceptor(api_keys)] if api_keys else []),
        ],
        max_message_bytes=settings.max_message_bytes,
        tls=server_tls(settings),
    )
    http = _EmbeddedServer(
        uvicorn.Config(
            create_app(
                jobs,
                catalog,
                limits,
                max_body_bytes=settings.max_message_bytes,
                api_keys=api_keys,
            ),
            host=settings.host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            # The same certificate as gRPC: with TLS configured, both doors are HTTPS/TLS.
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
            ssl_ca_certs=settings.tls_client_ca_file,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE,
        )
    )
    http_task = asyncio.create_task(http.serve())
    log.info(
        "ingest_started",
        grpc_port=running.port,
        http_port=settings.http_port,
        tasks=sorted(catalog.tasks),
        tls=running.tls,
        api_clients=len(api_keys.clients) if api_keys else 0,
    )

    async def on_stop() -> None:
        http.should_exit = True
        await http_task
        await jobs.close()  # publishes what the outbox holds (bounded), writes the marks
        await pool.close()
        await publisher.close()

    freeze_startup_heap()  # start-up is over: keep full collections short (relayq_core/gctune.py)
    await run_until_signalled(running, grace=settings.grace_seconds, on_stop=on_stop)


def main() -> None:
    """Console entry point."""
    settings = IngestSettings()
    configure_logging(
        "ingest-svc",
        level=settings.log_level,
        json=settings.log_json,
        redact_fields=settings.redact_field_names,
    )
    configure_tracing(
        "ingest-svc",
        export=settings.otlp_endpoint is not None,
        traces_dir=settings.traces_dir,
        traces_max_bytes=settings.traces_max_bytes,
        grpc_server=True,
        celery=True,
    )
    asyncio.run(serve(settings))
