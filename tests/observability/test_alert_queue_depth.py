"""The queue-depth alert, end to end in a real Prometheus: it fires when the workers stop while
jobs keep arriving, and resolves when a worker comes back and drains the queue.

The committed rules run time-scaled (every duration / 60: `for: 15m` -> 15 s, `deriv[10m]` ->
10 s) with the depth threshold lowered from 1000 to 20, so the scenario takes about a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2
from relayq_core.catalog import Catalog
from relayq_devstack.health import celery_workers_ready, http_ok
from relayq_devstack.ports import free_port
from relayq_devstack.process import ServiceProcess
from relayq_devstack.prometheus import PrometheusServer, ScrapeJob, start_prometheus
from relayq_devstack.redis import RedisServer
from tests.conftest import BIN, Ingest, _ingest, service_env
from tests.observability.prometheus_fixture import RULE_FILES, require_tool, scaled_rules

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ALERT = "QueueDepthGrowing"


@pytest_asyncio.fixture(loop_scope="session")
async def alert_ingest(
    database_url: str, redis_server: RedisServer, catalog: Catalog
) -> AsyncIterator[tuple[Ingest, str]]:
    """An ingest publishing to a broker database of this test's own."""
    broker = redis_server.url.rsplit("/", 1)[0] + "/6"
    async for handle in _ingest(database_url, broker, catalog):
        yield handle, broker


def start_worker(env: dict[str, str], logs: Path, metrics_port: int) -> ServiceProcess:
    return ServiceProcess(
        "worker",
        [str(BIN / "relayq-worker")],
        log_path=logs / "worker.log",
        env={
            **env,
            "RELAYQ_WORKER_CONCURRENCY": "2",
            "RELAYQ_WORKER_NODE_NAME": "alert@%h",
            "RELAYQ_WORKER_METRICS_PORT": str(metrics_port),
        },
        inherit_env=False,
    )


async def test_queue_depth_alert_fires_while_workers_are_down_and_resolves(
    alert_ingest: tuple[Ingest, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    ingest, broker = alert_ingest
    env = service_env(database_url, broker)
    gateway_port, worker_port = free_port(), free_port()
    gateway = ServiceProcess(
        "gateway",
        [str(BIN / "relayq-metrics-gateway")],
        log_path=tmp_path / "gateway.log",
        env={**env, "RELAYQ_METRICS_PORT": str(gateway_port)},
        inherit_env=False,
    )
    rules = scaled_rules(
        RULE_FILES,
        tmp_path / "rules",
        factor=1 / 60,
        min_range=4.0,
        substitute={"queue:relayq_queue_depth:max > 1000": "queue:relayq_queue_depth:max > 20"},
    )
    prometheus: PrometheusServer | None = None
    worker: ServiceProcess | None = None
    payload = struct_pb2.Struct()
    payload.update({"alert": "test"})
    try:
        gateway.wait_healthy(lambda: http_ok(f"http://127.0.0.1:{gateway_port}/healthz"), 30)
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            [
                ScrapeJob("relayq-metrics-gateway", (f"127.0.0.1:{gateway_port}",)),
                ScrapeJob("relayq-worker", (f"127.0.0.1:{worker_port}",)),
            ],
            rules=rules,
            interval=1.0,
            binary=require_tool("prometheus"),
        )
        client = prometheus.client

        # No worker consumes: jobs keep arriving and the queue grows.
        deadline = time.monotonic() + 120
        fired: list[dict[str, Any]] = []
        while not fired:
            assert time.monotonic() < deadline, f"{ALERT} never fired: {client.alerts()}"
            await ingest.stub.SubmitJobs(
                ingest_pb2.SubmitJobsRequest(
                    jobs=[ingest_pb2.SubmitJobRequest(task="demo.echo", payload=payload)] * 3
                )
            )
            await asyncio.sleep(0.5)
            fired = await asyncio.to_thread(client.firing, ALERT)
        assert fired[0]["labels"]["queue"] == "default"
        assert fired[0]["annotations"]["runbook_url"].endswith("#queue-depth-growing")

        # A worker returns and drains the queue: the alert resolves.
        worker = start_worker(env, tmp_path, worker_port)
        await asyncio.to_thread(
            worker.wait_healthy, lambda: celery_workers_ready(broker, 1, name_prefix="alert@"), 60
        )
        await asyncio.to_thread(
            client.wait_for,
            lambda c: not c.firing(ALERT) and (c.value("sum(relayq_queue_depth)") == 0),
            timeout=90,
            what=f"{ALERT} resolved and the queue drained",
        )
    finally:
        for proc in (worker, gateway):
            if proc is not None:
                proc.stop(timeout=10)
        if prometheus is not None:
            prometheus.stop()
