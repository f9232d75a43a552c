"""The metrics gateway against the real broker, ledger and dlq-svc."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc, ingest_pb2
from relayq_devstack.health import http_ok
from relayq_devstack.ports import free_port
from relayq_devstack.process import ServiceProcess
from tests.conftest import BIN, DlqServer, Ingest, service_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def start_gateway(
    database_url: str, redis_url: str, dlq_address: str, logs: Path, **extra: str
) -> tuple[ServiceProcess, str]:
    """A healthy relayq-metrics-gateway and its URL."""
    port = free_port()
    proc = ServiceProcess(
        "gateway",
        [str(BIN / "relayq-metrics-gateway")],
        log_path=logs / "gateway.log",
        env=service_env(
            database_url,
            redis_url,
            RELAYQ_METRICS_PORT=str(port),
            RELAYQ_DLQ_GRPC=dlq_address,
            **extra,
        ),
        inherit_env=False,
    )
    url = f"http://127.0.0.1:{port}"
    proc.wait_healthy(lambda: http_ok(f"{url}/healthz"), timeout=30)
    return proc, url


@pytest.fixture(scope="module")
def gateway(
    database_url: str,
    quiet_broker_url: str,
    dlq_server: DlqServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """relayq-metrics-gateway over the broker database no worker consumes."""
    proc, url = start_gateway(
        database_url,
        quiet_broker_url,
        dlq_server.address,
        Path(tmp_path_factory.mktemp("gateway")),
        RELAYQ_EXPECTED_WORKERS="3",
    )
    try:
        yield url
    finally:
        proc.stop(timeout=10)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_queue_depth_oldest_age_and_dlq_depth(
    gateway: str, ingest: Ingest, dlq_server: DlqServer
) -> None:
    payload = struct_pb2.Struct()
    payload.update({"gateway": True})
    await ingest.stub.SubmitJob(ingest_pb2.SubmitJobRequest(task="demo.echo", payload=payload))
    await asyncio.sleep(1.1)
    task = f"demo.gw{uuid.uuid4().hex[:6]}"
    async with grpc.aio.insecure_channel(dlq_server.address) as ch:
        stub = dead_letter_pb2_grpc.DeadLetterServiceStub(ch)
        for n in range(3):
            await stub.ReportDeadLetter(
                dead_letter_pb2.ReportDeadLetterRequest(
                    job_id=f"gw-{uuid.uuid4()}",
                    idempotency_key=f"gw-key-{n}",
                    task=task,
                    queue="default",
                    reason="permanent_error",
                    error_type="E",
                    error_message="x",
                    final_attempt=1,
                )
            )
    t0 = time.monotonic()
    samples = await asyncio.to_thread(scrape, gateway)
    elapsed = time.monotonic() - t0
    depth = samples[("relayq_queue_depth", (("queue", "default"),))]
    assert depth >= 1  # nothing consumes this broker database
    assert samples[("relayq_queue_oldest_job_age_seconds", (("queue", "default"),))] >= 1.0
    assert samples[("relayq_dlq_depth", (("reason", "permanent_error"), ("task", task)))] == 3
    assert samples[("relayq_gateway_source_errors_total", (("source", "dlq"),))] == 0
    for source in ("redis", "postgres", "dlq"):
        assert samples[("relayq_gateway_source_up", (("source", source),))] == 1, source
    # The age of the oldest active entry dlq-svc knows (the session's store holds other tests'
    # entries, some stored long "ago"), in seconds, as the scrape saw it.
    async with grpc.aio.insecure_channel(dlq_server.address) as ch:
        stats = await dead_letter_pb2_grpc.DeadLetterServiceStub(ch).GetDeadLetterStats(
            dead_letter_pb2.GetDeadLetterStatsRequest()
        )
    since = stats.oldest_active_at.ToDatetime(tzinfo=UTC)
    expected_age = (datetime.now(UTC) - since).total_seconds()
    age = samples[("relayq_dlq_oldest_active_age_seconds", ())]
    assert expected_age - 30 <= age <= expected_age, (age, expected_age)
    assert samples[("relayq_workers_expected", ())] == 3  # RELAYQ_EXPECTED_WORKERS
    assert elapsed < 2.0


async def test_a_source_down_leaves_the_others_served(gateway: str, dlq_server: DlqServer) -> None:
    dlq_server.stop()
    try:
        samples = await asyncio.to_thread(scrape, gateway)
    finally:
        dlq_server.start()
    assert ("relayq_queue_depth", (("queue", "default"),)) in samples
    assert not any(name == "relayq_dlq_depth" for name, _ in samples)
    assert not any(name == "relayq_dlq_oldest_active_age_seconds" for name, _ in samples)
    assert samples[("relayq_gateway_source_errors_total", (("source", "dlq"),))] >= 1
    # Unreachable is a value (0), not a missing series: PostgresUnreachable and friends read it.
    assert samples[("relayq_gateway_source_up", (("source", "dlq"),))] == 0
    assert samples[("relayq_gateway_source_up", (("source", "redis"),))] == 1


async def test_redis_unreachable_is_source_up_zero(
    database_url: str, dlq_server: DlqServer, tmp_path: Path
) -> None:
    """A broker nobody listens on: the gateway still answers, saying Redis is down."""
    proc, url = start_gateway(
        database_url, f"redis://127.0.0.1:{free_port()}/0", dlq_server.address, tmp_path
    )
    try:
        samples = await asyncio.to_thread(scrape, url)
    finally:
        proc.stop(timeout=10)
    assert samples[("relayq_gateway_source_up", (("source", "redis"),))] == 0
    assert samples[("relayq_gateway_source_up", (("source", "postgres"),))] == 1
    assert samples[("relayq_gateway_source_errors_total", (("source", "redis"),))] >= 1
    assert samples[("relayq_workers_expected", ())] == 0  # not configured: no expectation


async def test_the_gateway_starts_and_reports_while_postgres_is_unreachable(
    quiet_broker_url: str, dlq_server: DlqServer, tmp_path: Path
) -> None:
    """Restarted during a PostgreSQL outage, the gateway still serves: PostgresUnreachable
    fires, not ServiceDown."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/relayq"
    proc, url = start_gateway(dead, quiet_broker_url, dlq_server.address, tmp_path)
    try:
        samples = await asyncio.to_thread(scrape, url)
    finally:
        proc.stop(timeout=10)
    assert samples[("relayq_gateway_source_up", (("source", "postgres"),))] == 0
    assert samples[("relayq_gateway_source_up", (("source", "redis"),))] == 1
    assert ("relayq_queue_depth", (("queue", "default"),)) in samples
