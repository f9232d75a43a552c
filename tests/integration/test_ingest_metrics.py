"""ingest's submit metrics: refusals by gRPC code and HTTP status (IngestRefusing), the submit
latency histogram with trace exemplars served as OpenMetrics (IngestSlow)."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from ingest_svc.http_api import create_app
from ingest_svc.metrics import SubmitMetricsInterceptor
from ingest_svc.submit import JobService
from ingest_svc.validation import Limits
from relayq.v1 import ingest_pb2, ingest_pb2_grpc
from relayq_core.catalog import Catalog
from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.grpc_server import start_server
from relayq_core.publish import Publisher
from relayq_devstack.health import http_ok
from relayq_devstack.ports import free_port
from relayq_devstack.process import ServiceProcess
from tests.conftest import BIN, service_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def refusals(transport: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "relayq_ingest_refusals_total", {"transport": transport, "code": code}
    )
    return value or 0.0


def submits(transport: str) -> float:
    value = REGISTRY.get_sample_value(
        "relayq_ingest_submit_seconds_count", {"transport": transport}
    )
    return value or 0.0


async def test_unavailable_ledger_is_counted_by_grpc_code_and_http_status(
    database_url: str, quiet_broker_url: str, catalog: Catalog
) -> None:
    """The server-side refusal IngestRefusing pages on: the ledger unreachable (here its pool
    closed under ingest) answers UNAVAILABLE / 503, counted under that code."""
    from ingest_svc.grpc_api import IngestServicer, registration

    pool = await create_pool(database_url, max_size=2, session_state=False)
    publisher = Publisher(quiet_broker_url)
    jobs = JobService(pool, publisher, JobLedger())
    limits = Limits(max_payload_bytes=64 * 1024, max_payload_depth=32)
    running = await start_server(
        [registration(IngestServicer(jobs, catalog, limits, max_batch=10))],
        "127.0.0.1:0",
        interceptors=[SubmitMetricsInterceptor()],
    )
    await pool.close()  # the ledger is gone
    grpc_before, http_before = refusals("grpc", "UNAVAILABLE"), refusals("http", "503")
    timed_before = submits("grpc"), submits("http")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err, capture_logs() as logs:
                await stub.SubmitJob(
                    ingest_pb2.SubmitJobRequest(task="demo.echo", idempotency_key="refused-1")
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # Each job turned away is logged: the runbook's first command greps these.
            assert [(e["event"], e["code"]) for e in logs if e["log_level"] == "warning"] == [
                ("job_refused", "UNAVAILABLE")
            ]
            # Not a submit: not counted.
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetJob(ingest_pb2.GetJobRequest(job_id="nope"))
        transport = httpx.ASGITransport(app=create_app(jobs, catalog, limits))
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            reply = await client.post("/v1/jobs", json={"task": "demo.echo", "payload": {}})
            assert reply.status_code == 503
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await running.stop(0)
        await jobs.close()
        await publisher.close()
    assert refusals("grpc", "UNAVAILABLE") - grpc_before == 1
    assert refusals("http", "503") - http_before == 1
    assert (submits("grpc"), submits("http")) == (timed_before[0] + 1, timed_before[1] + 1)


@pytest.fixture(scope="module")
def ingest_process(
    database_url: str, quiet_broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """relayq-ingest as deployed (tracing on, exporting nowhere): its gRPC address and HTTP URL."""
    grpc_port, http_port = free_port(), free_port()
    proc = ServiceProcess(
        "ingest",
        [str(BIN / "relayq-ingest")],
        log_path=Path(tmp_path_factory.mktemp("ingest-metrics")) / "ingest.log",
        env=service_env(
            database_url,
            quiet_broker_url,
            RELAYQ_INGEST_GRPC_PORT=str(grpc_port),
            RELAYQ_INGEST_HTTP_PORT=str(http_port),
        ),
        inherit_env=False,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        proc.wait_healthy(lambda: http_ok(f"{url}/healthz"), timeout=30)
        yield f"127.0.0.1:{grpc_port}", url
    finally:
        proc.stop(timeout=10)


def scrape(url: str, accept: str) -> tuple[str, str]:
    request = urllib.request.Request(f"{url}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


async def test_submits_are_timed_with_trace_exemplars_and_refusals_counted(
    ingest_process: tuple[str, str],
) -> None:
    address, url = ingest_process
    key = f"metrics-{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        reply = await stub.SubmitJob(
            ingest_pb2.SubmitJobRequest(task="demo.echo", idempotency_key=key)
        )
        assert reply.job_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(ingest_pb2.SubmitJobRequest(task="no.such.task"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/v1/jobs", json={"task": "no.such.task"})).status_code == 422
        assert (await client.post("/v1/jobs", json={"task": "demo.echo"})).status_code == 201

    content_type, text = await asyncio.to_thread(scrape, url, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text"), content_type
    families = text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    samples = [s for f in families for s in f.samples]

    def value(name: str, **labels: str) -> float:
        return float(next(s.value for s in samples if s.name == name and s.labels == labels))

    assert value("relayq_ingest_submit_seconds_count", transport="grpc") == 2
    assert value("relayq_ingest_submit_seconds_count", transport="http") == 2
    assert value("relayq_ingest_refusals_total", transport="grpc", code="INVALID_ARGUMENT") == 1
    assert value("relayq_ingest_refusals_total", transport="http", code="422") == 1
    # The server-side codes are there at 0 before any refusal, so the first one is an increase.
    assert value("relayq_ingest_refusals_total", transport="grpc", code="UNAVAILABLE") == 0
    assert value("relayq_ingest_refusals_total", transport="http", code="503") == 0
    exemplars = [
        s.exemplar
        for s in samples
        if s.name == "relayq_ingest_submit_seconds_bucket"
        and s.labels["transport"] == "grpc"
        and s.exemplar is not None
    ]
    assert exemplars, "no exemplar on the gRPC submit histogram"
    assert all(len(e.labels["trace_id"]) == 32 for e in exemplars), exemplars
    assert all(int(e.labels["trace_id"], 16) for e in exemplars)

    # The classic text format still works for scrapers that do not ask for OpenMetrics.
    content_type, text = await asyncio.to_thread(scrape, url, "text/plain")
    assert content_type.startswith("text/plain") and "relayq_ingest_submit_seconds_bucket" in text
