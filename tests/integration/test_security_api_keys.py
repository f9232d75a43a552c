"""Ingest's per-client API keys at both doors: the real servicer on a real grpc.aio server and
the real HTTP app, over the session's ledger and quiet broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import LogCapture

from ingest_svc.auth import ApiKeyInterceptor, ApiKeys, hash_key
from ingest_svc.grpc_api import IngestServicer, registration
from ingest_svc.http_api import create_app
from ingest_svc.validation import Limits
from relayq.v1 import ingest_pb2, ingest_pb2_grpc
from relayq_core.catalog import Catalog
from relayq_core.grpc_server import start_server
from tests.conftest import Ingest, broker_messages, outbox_drained

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

BILLING_KEY = "rq_live_billing_5f0c2a9e7d"
KEYS = ApiKeys.parse([f"billing:{hash_key(BILLING_KEY)}"], "test")


@dataclass
class Keyed:
    channel: grpc.aio.Channel
    stub: ingest_pb2_grpc.IngestServiceAsyncStub
    http: httpx.AsyncClient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def keyed(ingest: Ingest, catalog: Catalog) -> AsyncIterator[Keyed]:
    """ingest's servicer and HTTP app with API keys required."""
    limits = Limits(max_payload_bytes=64 * 1024, max_payload_depth=32)
    servicer = IngestServicer(ingest.jobs, catalog, limits, max_batch=1000)
    running = await start_server(
        [registration(servicer)], "127.0.0.1:0", interceptors=[ApiKeyInterceptor(KEYS)]
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    app = create_app(ingest.jobs, catalog, limits, api_keys=KEYS)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
        yield Keyed(channel, ingest_pb2_grpc.IngestServiceStub(channel), http)
    await channel.close(None)
    await running.stop(0)


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    old = structlog.get_config()
    cap = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, cap], cache_logger_on_first_use=False
    )
    try:
        yield cap
    finally:
        structlog.configure(**old)


def submit(key: str = "") -> ingest_pb2.SubmitJobRequest:
    request = ingest_pb2.SubmitJobRequest(task="demo.echo", idempotency_key=key)
    request.payload.update({"n": 1})
    return request


def metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (metadata(""), grpc.StatusCode.UNAUTHENTICATED),
        (metadata("rq_live_guess"), grpc.StatusCode.PERMISSION_DENIED),
        (metadata(hash_key(BILLING_KEY)), grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["none", "empty", "wrong", "the hash itself"],
)
async def test_grpc_refuses_without_a_valid_key_and_enqueues_nothing(
    keyed: Keyed,
    ingest: Ingest,
    quiet_broker_url: str,
    sent: tuple[tuple[str, str], ...],
    code: grpc.StatusCode,
) -> None:
    await outbox_drained(ingest)  # what earlier tests accepted is in the broker
    before = len(broker_messages(quiet_broker_url, "default"))
    for call in (
        keyed.stub.SubmitJob(submit(), metadata=sent),
        keyed.stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=[submit()]), metadata=sent),
        keyed.stub.GetJob(ingest_pb2.GetJobRequest(job_id="anything"), metadata=sent),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code
    await outbox_drained(ingest)
    assert len(broker_messages(quiet_broker_url, "default")) == before


async def test_grpc_with_a_key_submits_and_logs_the_client(
    keyed: Keyed, captured: LogCapture
) -> None:
    reply = await keyed.stub.SubmitJob(submit("apikey-grpc"), metadata=metadata(BILLING_KEY))
    job = await keyed.stub.GetJob(
        ingest_pb2.GetJobRequest(job_id=reply.job_id), metadata=metadata(BILLING_KEY)
    )
    assert job.job.idempotency_key == "apikey-grpc"
    submitted = [e for e in captured.entries if e["event"] == "job_submitted"]
    assert submitted and all(e["client"] == "billing" for e in submitted)
    assert BILLING_KEY not in repr(captured.entries)


async def test_auth_is_judged_before_the_request_bytes(keyed: Keyed) -> None:
    """An unauthenticated caller learns nothing about its request's validity."""
    call = keyed.channel.unary_unary(
        "/relayq.v1.IngestService/SubmitJob",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.SubmitJobResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\x0a\x02\xff\xfe")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\x0a\x02\xff\xfe", metadata=metadata(BILLING_KEY))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection_stay_open(keyed: Keyed) -> None:
    health = health_pb2_grpc.HealthStub(keyed.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="relayq.v1.IngestService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(keyed.channel)
    names: list[str] = []
    async for answer in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    ):
        names += [s.name for s in answer.list_services_response.service]
    assert "relayq.v1.IngestService" in names


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "UNAUTHENTICATED"),
        ({"X-API-Key": "rq_live_guess"}, 403, "PERMISSION_DENIED"),
    ],
)
async def test_http_refuses_without_a_valid_key(
    keyed: Keyed,
    ingest: Ingest,
    quiet_broker_url: str,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    await outbox_drained(ingest)
    before = len(broker_messages(quiet_broker_url, "default"))
    for reply in (
        await keyed.http.post("/v1/jobs", json={"task": "demo.echo"}, headers=headers),
        await keyed.http.get("/v1/jobs/anything", headers=headers),
        await keyed.http.get("/v1/elsewhere", headers=headers),
    ):
        assert reply.status_code == status, reply.text
        error: dict[str, Any] = reply.json()["error"]
        assert error["code"] == code and error["message"]
    await outbox_drained(ingest)
    assert len(broker_messages(quiet_broker_url, "default")) == before


async def test_http_with_a_key_submits_and_logs_the_client(
    keyed: Keyed, captured: LogCapture
) -> None:
    headers = {"X-API-Key": BILLING_KEY}
    reply = await keyed.http.post(
        "/v1/jobs",
        json={"task": "demo.echo", "payload": {}, "idempotency_key": "apikey-http"},
        headers=headers,
    )
    assert reply.status_code in (200, 201), reply.text
    job = await keyed.http.get(f"/v1/jobs/{reply.json()['job_id']}", headers=headers)
    assert job.status_code == 200
    submitted = [e for e in captured.entries if e["event"] == "job_submitted"]
    assert submitted and all(e["client"] == "billing" for e in submitted)
    assert BILLING_KEY not in repr(captured.entries)
    assert "client" not in structlog.contextvars.get_contextvars(), "unbound after the request"


async def test_probes_stay_open_over_http(keyed: Keyed) -> None:
    assert (await keyed.http.get("/healthz")).status_code == 200
    assert (await keyed.http.get("/metrics")).status_code == 200
