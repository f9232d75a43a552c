"""IngestService over a real grpc.aio server, real Postgres and a real Redis broker."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, job_pb2
from tests.conftest import Ingest, broker_messages, outbox_drained

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def request(
    task: str = "demo.echo", payload: dict[str, Any] | None = None, **fields: str
) -> ingest_pb2.SubmitJobRequest:
    struct = struct_pb2.Struct()
    struct.update(payload if payload is not None else {"x": 1})
    return ingest_pb2.SubmitJobRequest(task=task, payload=struct, **fields)


async def ledger_row_count(ingest: Ingest, job_id: str) -> int:
    pool = ingest.jobs._pool  # the test reads the ledger directly to prove what was stored
    return int(await pool.fetchval("SELECT count(*) FROM relayq_jobs WHERE job_id = $1", job_id))


async def test_submit_records_and_enqueues_once(ingest: Ingest, quiet_broker_url: str) -> None:
    await outbox_drained(ingest)
    before = len(broker_messages(quiet_broker_url, "default"))
    reply = await ingest.stub.SubmitJob(request(payload={"to": "a@example.com"}))
    assert uuid.UUID(reply.job_id)
    assert reply.idempotency_key == reply.job_id
    assert reply.state == job_pb2.JOB_STATE_QUEUED and not reply.duplicate
    await outbox_drained(ingest)  # published after the answer
    messages = broker_messages(quiet_broker_url, "default")
    assert len(messages) == before + 1
    sent = messages[0]  # LPUSH: newest first
    assert sent["headers"]["task"] == "demo.echo"
    assert sent["headers"]["id"] == reply.job_id
    assert sent["kwargs"] == {
        "job_id": reply.job_id,
        "idempotency_key": reply.job_id,
        "payload": {"to": "a@example.com"},
        "queue": "default",
    }
    job = (await ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=reply.job_id))).job
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.task == "demo.echo" and dict(job.payload) == {"to": "a@example.com"}
    assert job.created_at.seconds > 0


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(task="demo.unknown"), 'task "demo.unknown" is not a registered task'),
        (request(task=""), "task is required"),
        (request(payload={"blob": "x" * 70_000}), "the limit is 65536"),
        (request(job_id="not valid!"), "job_id must be"),
        (request(queue="nowhere"), 'queue "nowhere" is not served'),
    ],
)
async def test_bad_input_is_invalid_argument_and_enqueues_nothing(
    ingest: Ingest, quiet_broker_url: str, req: ingest_pb2.SubmitJobRequest, message: str
) -> None:
    await outbox_drained(ingest)
    before = broker_messages(quiet_broker_url, "default")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest.stub.SubmitJob(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    await outbox_drained(ingest)
    assert broker_messages(quiet_broker_url, "default") == before
    if req.job_id:
        assert await ledger_row_count(ingest, req.job_id) == 0


async def test_get_unknown_job_is_not_found(ingest: Ingest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id="no-such-job"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert 'no job with job_id "no-such-job"' in (err.value.details() or "")


async def test_batch_answers_each_item_in_order(ingest: Ingest, quiet_broker_url: str) -> None:
    await outbox_drained(ingest)
    before = len(broker_messages(quiet_broker_url, "default"))
    reply = await ingest.stub.SubmitJobs(
        ingest_pb2.SubmitJobsRequest(
            jobs=[
                request(payload={"n": 1}),
                request(task="demo.nope"),
                request(task="demo.slow", payload={"ms": 5}),
            ]
        )
    )
    assert [r.index for r in reply.results] == [0, 1, 2]
    assert [r.WhichOneof("outcome") for r in reply.results] == ["job", "error", "job"]
    assert reply.results[1].error.code == "INVALID_ARGUMENT"
    assert "demo.nope" in reply.results[1].error.message
    await outbox_drained(ingest)
    assert len(broker_messages(quiet_broker_url, "default")) == before + 2


async def test_batch_limits(ingest: Ingest) -> None:
    for jobs, message in [([], "at least one job"), ([request()] * 1001, "at most 1000 jobs")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ingest.stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=jobs))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")


async def test_same_key_same_payload_returns_the_first_job(
    ingest: Ingest, quiet_broker_url: str
) -> None:
    key = f"order-{uuid.uuid4()}"
    first = await ingest.stub.SubmitJob(request(payload={"a": 1}, idempotency_key=key))
    await outbox_drained(ingest)
    count = len(broker_messages(quiet_broker_url, "default"))
    again = await ingest.stub.SubmitJob(request(payload={"a": 1}, idempotency_key=key))
    assert again.duplicate and again.job_id == first.job_id
    await outbox_drained(ingest)
    assert len(broker_messages(quiet_broker_url, "default")) == count


async def test_same_key_other_payload_is_already_exists(
    ingest: Ingest, quiet_broker_url: str
) -> None:
    key = f"order-{uuid.uuid4()}"
    first = await ingest.stub.SubmitJob(request(payload={"a": 1}, idempotency_key=key))
    await outbox_drained(ingest)
    count = len(broker_messages(quiet_broker_url, "default"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest.stub.SubmitJob(request(payload={"a": 2}, idempotency_key=key))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f'"{key}" was already used for job "{first.job_id}"' in (err.value.details() or "")
    await outbox_drained(ingest)
    assert len(broker_messages(quiet_broker_url, "default")) == count
