"""``relayq-metrics-gateway``: FastAPI serving fleet gauges on ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis import Redis

from metrics_gateway.config import GatewaySettings
from metrics_gateway.gauges import QueueDepthCollector
from relayq_core.catalog import load_catalog
from relayq_core.logging import configure_logging


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway app with its own registry (no process metrics of the gateway itself)."""
    catalog = load_catalog(settings.catalog_path)
    redis = Redis.from_url(settings.redis_url, socket_timeout=2.0)
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(redis, catalog.queues()))
    app = FastAPI(title="relayq metrics gateway", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main() -> None:
    """Console entry point."""
    settings = GatewaySettings()
    configure_logging("metrics-gateway", level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
    )
