"""POST /v1/jobs and GET /v1/jobs/{id}: the same rules as gRPC, as JSON."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.conftest import Ingest, broker_messages, outbox_drained

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(loop_scope="session")
async def http(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=ingest.http_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


async def test_submit_then_get(http: httpx.AsyncClient) -> None:
    created = await http.post("/v1/jobs", json={"task": "demo.echo", "payload": {"x": 1}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["state"] == "queued" and body["duplicate"] is False
    job = await http.get(f"/v1/jobs/{body['job_id']}")
    assert job.status_code == 200
    assert job.json()["payload"] == {"x": 1}
    assert job.json()["attempts"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": "demo.echo", "payload": [1]}, "payload must be a JSON object, not an array"),
        ({"task": "demo.echo", "payload": "hi"}, "payload must be a JSON object, not a string"),
        ({"task": "nope.nope", "payload": {}}, 'task "nope.nope" is not a registered task'),
        ({"task": "demo.echo", "payload": {"b": "x" * 70_000}}, "the limit is 65536"),
        ({"task": "demo.echo", "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"task": 5}, "task: Input should be a valid string"),
    ],
)
async def test_bad_input_is_422_and_enqueues_nothing(
    http: httpx.AsyncClient,
    ingest: Ingest,
    quiet_broker_url: str,
    body: dict[str, object],
    message: str,
) -> None:
    await outbox_drained(ingest)
    before = broker_messages(quiet_broker_url, "default")
    reply = await http.post("/v1/jobs", json=body)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert message in error["message"]
    await outbox_drained(ingest)
    assert broker_messages(quiet_broker_url, "default") == before


async def test_malformed_json_is_422(http: httpx.AsyncClient) -> None:
    reply = await http.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "INVALID_ARGUMENT"


async def test_unknown_job_is_404(http: httpx.AsyncClient) -> None:
    reply = await http.get("/v1/jobs/no-such-job")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "NOT_FOUND"


async def test_idempotency_key_header_dedups_and_conflicts(http: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": f"hook-{uuid.uuid4()}"}
    body = {"task": "demo.echo", "payload": {"event": "paid"}}
    first = await http.post("/v1/jobs", json=body, headers=key)
    again = await http.post("/v1/jobs", json=body, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate"] is True
    assert again.json()["job_id"] == first.json()["job_id"]
    other = await http.post(
        "/v1/jobs", json={"task": "demo.echo", "payload": {"event": "refunded"}}, headers=key
    )
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "ALREADY_EXISTS"
