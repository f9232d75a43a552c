"""Hostile input to ``IngestService`` over real gRPC: every answer is deliberate, and a refused
submit leaves no ledger row and no broker message."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relayq.v1 import ingest_pb2
from tests.fuzz.conftest import (
    DELIBERATE_NAMES,
    Counts,
    Fuzz,
    assert_serving,
    check_refusal,
)
from tests.fuzz.strategies import (
    INVALID_UTF8,
    MARK,
    TASKS,
    corrupt_marker,
    hostile_text,
    ids,
    mutated,
    payload_dicts,
    struct,
    unique_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SUBMIT = "/relayq.v1.IngestService/SubmitJob"
SUBMIT_MANY = "/relayq.v1.IngestService/SubmitJobs"


@st.composite
def submissions(draw: st.DrawFn) -> dict[str, Any]:
    """A SubmitJobRequest's fields: mostly known tasks (so payloads get judged), hostile rest."""
    return {
        "task": draw(st.sampled_from(TASKS) | hostile_text),
        "job_id": draw(ids),
        "idempotency_key": draw(st.builds(unique_key) | st.just("") | hostile_text),
        "queue": draw(st.sampled_from(["", "default"]) | hostile_text),
        "payload": draw(st.none() | payload_dicts),
    }


def fill(message: ingest_pb2.SubmitJobRequest, fields: dict[str, Any]) -> None:
    """Sets ``fields`` on ``message`` in place (copying a Struct would re-parse it, and a deep
    one fails to parse on the client already)."""
    for name in ("task", "job_id", "idempotency_key", "queue"):
        setattr(message, name, fields[name])
    if fields["payload"] is not None:
        try:
            message.payload.update(fields["payload"])
        except (ValueError, TypeError, OverflowError):
            assume(False)  # not expressible as a Struct: the client library refuses it


def submit_request(fields: dict[str, Any]) -> ingest_pb2.SubmitJobRequest:
    message = ingest_pb2.SubmitJobRequest()
    fill(message, fields)
    return message


def check_counts(before: Counts, after: Counts, accepted: int) -> None:
    """``accepted`` new jobs: that many rows and that many messages; nothing else changed."""
    assert after.jobs - before.jobs == accepted, (before, after)
    assert after.messages - before.messages == accepted, (before, after)


async def submit_raw(fuzz: Fuzz, path: str, data: bytes, reply: Any) -> grpc.StatusCode:
    call = fuzz.ingest.channel.unary_unary(
        path, request_serializer=lambda b: b, response_deserializer=reply.FromString
    )
    try:
        await call(data, timeout=10)
    except grpc.aio.AioRpcError as err:
        check_refusal(err, len(data))
        return err.code()
    return grpc.StatusCode.OK


@settings(FUZZ, max_examples=700)
@given(fields=submissions())
async def test_submit_job_answers_deliberately(fuzz: Fuzz, fields: dict[str, Any]) -> None:
    before = await fuzz.counts()
    request = submit_request(fields)
    try:
        reply = await fuzz.ingest.stub.SubmitJob(request, timeout=10)
    except grpc.aio.AioRpcError as err:
        check_refusal(err, request.ByteSize())
        check_counts(before, await fuzz.counts(), 0)
        return
    check_counts(before, await fuzz.counts(), 0 if reply.duplicate else 1)
    assert fields["task"] in TASKS


@settings(FUZZ, max_examples=150)
@given(batch=st.lists(submissions(), max_size=25))
async def test_submit_jobs_answers_each_item_deliberately(
    fuzz: Fuzz, batch: list[dict[str, Any]]
) -> None:
    before = await fuzz.counts()
    request = ingest_pb2.SubmitJobsRequest()
    for fields in batch:
        fill(request.jobs.add(), fields)
    try:
        reply = await fuzz.ingest.stub.SubmitJobs(request, timeout=30)
    except grpc.aio.AioRpcError as err:
        check_refusal(err, request.ByteSize())
        check_counts(before, await fuzz.counts(), 0)
        return
    assert [r.index for r in reply.results] == list(range(len(batch)))
    for result in reply.results:
        if result.HasField("error"):
            assert result.error.code in DELIBERATE_NAMES, result.error
    new = sum(1 for r in reply.results if r.HasField("job") and not r.job.duplicate)
    check_counts(before, await fuzz.counts(), new)


@settings(FUZZ, max_examples=300)
@given(
    field=st.sampled_from(["task", "job_id", "idempotency_key", "queue", "payload_key", "payload"]),
    bad=st.sampled_from(INVALID_UTF8),
    batch=st.booleans(),
)
async def test_invalid_utf8_on_the_wire_is_invalid_argument(
    fuzz: Fuzz, field: str, bad: bytes, batch: bool
) -> None:
    """A string field whose bytes are not UTF-8 cannot be parsed: INVALID_ARGUMENT, not UNKNOWN."""
    fields: dict[str, Any] = {"task": "demo.echo", "idempotency_key": unique_key()}
    if field == "payload_key":
        fields["payload"] = struct({MARK: 1})
    elif field == "payload":
        fields["payload"] = struct({"note": {"deeper": [MARK]}})
    else:
        fields[field] = MARK
    item = ingest_pb2.SubmitJobRequest(**fields)
    message = ingest_pb2.SubmitJobsRequest(jobs=[item]) if batch else item
    data = corrupt_marker(message.SerializeToString(), bad)
    before = await fuzz.counts()
    if batch:
        code = await submit_raw(fuzz, SUBMIT_MANY, data, ingest_pb2.SubmitJobsResponse)
    else:
        code = await submit_raw(fuzz, SUBMIT, data, ingest_pb2.SubmitJobResponse)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    check_counts(before, await fuzz.counts(), 0)


@settings(FUZZ, max_examples=500)
@given(data=st.data(), batch=st.booleans())
async def test_damaged_request_bytes_answer_deliberately(
    fuzz: Fuzz, data: st.DataObject, batch: bool
) -> None:
    item = ingest_pb2.SubmitJobRequest(
        task="demo.echo", idempotency_key=unique_key(), payload=struct({"n": 1})
    )
    message = ingest_pb2.SubmitJobsRequest(jobs=[item]) if batch else item
    raw = data.draw(mutated(message.SerializeToString()))
    before = await fuzz.counts()
    if batch:
        code = await submit_raw(fuzz, SUBMIT_MANY, raw, ingest_pb2.SubmitJobsResponse)
    else:
        code = await submit_raw(fuzz, SUBMIT, raw, ingest_pb2.SubmitJobResponse)
    after = await fuzz.counts()
    if code != grpc.StatusCode.OK:
        check_counts(before, after, 0)
    else:  # the damage happened to leave a valid request (or a batch of refused items)
        assert after.jobs - before.jobs == after.messages - before.messages <= 1


@settings(FUZZ, max_examples=200)
@given(job_id=hostile_text | ids)
async def test_get_job_answers_deliberately(fuzz: Fuzz, job_id: str) -> None:
    try:
        reply = await fuzz.ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id), timeout=10)
    except grpc.aio.AioRpcError as err:
        assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), err
        return
    assert reply.job.job_id == job_id  # an earlier example submitted a job with this id


async def test_deeper_than_protobuf_parses_is_invalid_argument(fuzz: Fuzz) -> None:
    """A Struct nested past protobuf's recursion limit fails to parse on the server."""
    payload: dict[str, Any] = {"a": 1}
    for _ in range(120):
        payload = {"a": payload}
    request = ingest_pb2.SubmitJobRequest(task="demo.echo", idempotency_key=unique_key())
    request.payload.update(payload)
    data = request.SerializeToString()
    before = await fuzz.counts()
    code = await submit_raw(fuzz, SUBMIT, data, ingest_pb2.SubmitJobResponse)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    check_counts(before, await fuzz.counts(), 0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_numbers_are_invalid_argument(fuzz: Fuzz, value: float) -> None:
    before = await fuzz.counts()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fuzz.ingest.stub.SubmitJob(
            ingest_pb2.SubmitJobRequest(task="demo.echo", payload=struct({"x": [value]}))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "finite" in (err.value.details() or "")
    check_counts(before, await fuzz.counts(), 0)


async def test_a_batch_over_the_limit_is_refused_whole(fuzz: Fuzz) -> None:
    jobs = [ingest_pb2.SubmitJobRequest(task="demo.echo") for _ in range(1001)]
    before = await fuzz.counts()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fuzz.ingest.stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=jobs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000 jobs, not 1001" in (err.value.details() or "")
    check_counts(before, await fuzz.counts(), 0)


async def test_a_request_over_the_size_limit_is_resource_exhausted(fuzz: Fuzz) -> None:
    """Past the server's max message size (16 MiB by default), refused before parsing."""
    blob = "x" * (60 * 1024)
    jobs = [
        ingest_pb2.SubmitJobRequest(task="demo.echo", payload=struct({"b": blob}))
        for _ in range(300)
    ]
    before = await fuzz.counts()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fuzz.ingest.stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=jobs))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.value.details() or "")
    check_counts(before, await fuzz.counts(), 0)
    await assert_serving(fuzz.ingest.channel)


async def test_ingest_still_serves(fuzz: Fuzz) -> None:
    await assert_serving(fuzz.ingest.channel)
    reply = await fuzz.ingest.stub.SubmitJob(
        ingest_pb2.SubmitJobRequest(task="demo.echo", payload=struct({"after": "fuzz"}))
    )
    assert reply.job_id
