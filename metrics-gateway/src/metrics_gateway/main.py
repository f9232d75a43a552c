"""``relayq-metrics-gateway``: FastAPI serving fleet gauges on ``/metrics`` and ``/healthz``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from metrics_gateway.config import GatewaySettings
from metrics_gateway.gauges import FleetGauges, Snapshot, channel
from relayq.v1 import dead_letter_pb2_grpc
from relayq_core.catalog import load_catalog
from relayq_core.db.ledger import create_pool
from relayq_core.logging import configure_logging
from relayq_core.tls import client_tls


class _Rendered(Collector):
    """A registry view of one snapshot (scrapes are computed in the async route)."""

    def __init__(self, gauges: FleetGauges, snap: Snapshot) -> None:
        self._gauges = gauges
        self._snap = snap

    def collect(self) -> Iterable[Metric]:
        return self._gauges.families(self._snap)


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway app; its sources open on start-up and close on shutdown."""
    catalog = load_catalog(settings.catalog_path)
    state: dict[str, FleetGauges] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.redis_url, socket_timeout=settings.source_timeout_seconds)
        # min_size=0: no connection at start-up, so a gateway (re)started while PostgreSQL is
        # down serves and says so (relayq_gateway_source_up{source="postgres"} 0) instead of
        # failing to start: PostgresUnreachable, not ServiceDown.
        pool = await create_pool(settings.database_url, min_size=0, max_size=2)
        dlq_channel = channel(settings.dlq_grpc, client_tls(settings))
        state["gauges"] = FleetGauges(
            redis,
            pool,
            dead_letter_pb2_grpc.DeadLetterServiceStub(dlq_channel),
            catalog.queues(),
            settings.source_timeout_seconds,
            settings.expected_workers,
        )
        try:
            yield
        finally:
            await dlq_channel.close(None)
            await pool.close()
            await redis.aclose()

    app = FastAPI(title="relayq metrics gateway", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        gauges = state["gauges"]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Rendered(gauges, await gauges.snapshot()))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main() -> None:
    """Console entry point."""
    settings = GatewaySettings()
    configure_logging(
        "metrics-gateway",
        level=settings.log_level,
        json=settings.log_json,
        redact_fields=settings.redact_field_names,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
    )
