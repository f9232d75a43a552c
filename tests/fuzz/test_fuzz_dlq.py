"""Hostile input to ``DeadLetterService``'s filters: List, Get, and dry runs of Replay and Drop
(with the admin token). Every answer is deliberate, a listing matches its filter, and a dry run
(or a refusal) changes no entry, writes no audit record and publishes nothing."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayq.v1 import dead_letter_pb2 as pb
from tests.fuzz.conftest import Fuzz, assert_serving, check_refusal
from tests.fuzz.strategies import INVALID_UTF8, MARK, corrupt_marker, hostile_text, ids, mutated
from tests.integration.dlq_fixtures import report_request, ts

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REASONS = ("retries_exhausted", "permanent_error", "worker_lost")
STATUSES = ("active", "replayed", "dropped")
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SEEDED_TASKS = ("fz.alpha", "fz.beta", "demo.echo")
ERRORS = (
    ("ValueError", "boom 100% _done_"),
    ("KeyError", "it's 'quoted'"),
    ("TimeoutError", "upstream took longer than 5.0 s"),
    ("RuntimeError", "back\\slash and under_score"),
    ("UnicodeError", "naïve café"),
    ("SQLError", "'; DROP TABLE dlq_entries; --"),
)
LIST = "/relayq.v1.DeadLetterService/ListDeadLetters"
GET = "/relayq.v1.DeadLetterService/GetDeadLetter"
REPLAY = "/relayq.v1.DeadLetterService/ReplayDeadLetters"
DROP = "/relayq.v1.DeadLetterService/DropDeadLetters"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(fuzz: Fuzz) -> list[str]:
    """36 entries over three tasks, every reason and awkward error texts; two dropped."""
    job_ids = []
    for i in range(36):
        error_type, message = ERRORS[i % len(ERRORS)]
        request = report_request(
            task=SEEDED_TASKS[i % 3],
            reason=REASONS[i % 3],
            error_type=error_type,
            error_message=message,
            dead_lettered_at=T0 + timedelta(minutes=i),
            final_attempt=1,
        )
        await fuzz.dlq.stub.ReportDeadLetter(request)
        job_ids.append(request.job_id)
    await fuzz.dlq.stub.DropDeadLetters(
        pb.DropDeadLettersRequest(ids=job_ids[:2], reason="seeded as dropped"),
        metadata=fuzz.dlq.admin(),
    )
    return job_ids


timestamps = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ).map(ts),
    st.just(ts(T0 + timedelta(minutes=10))),
    # Outside what a Timestamp may hold: seconds past year 9999, negative or oversized nanos.
    st.builds(
        lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n),
        st.integers(min_value=-(2**62), max_value=2**62),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
    ),
)


@st.composite
def filters(draw: st.DrawFn) -> pb.DeadLetterFilter:
    f = pb.DeadLetterFilter(
        task=draw(st.sampled_from(("", *SEEDED_TASKS)) | hostile_text),
        reason=draw(st.sampled_from(("", *REASONS)) | hostile_text),
        status=draw(st.sampled_from(("", *STATUSES)) | hostile_text),
        error_contains=draw(
            st.sampled_from(["", "%", "_", "\\", "100%", "_done", "CAFÉ", "'quoted'"])
            | hostile_text
        ),
    )
    for name in ("since", "until"):
        value = draw(timestamps)
        if value is not None:
            getattr(f, name).CopyFrom(value)
    return f


def token_of(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


page_tokens = st.one_of(
    st.just(""),
    hostile_text,
    st.binary(max_size=64).map(token_of),
    st.builds(lambda v: token_of(v), st.dictionaries(st.sampled_from(["t", "id"]), hostile_text)),
    st.builds(
        lambda when, job_id: token_of({"t": when, "id": job_id}),
        st.sampled_from([T0.isoformat(), "2026-03-01T00:10:00", "9999-12-31T23:59:59+00:00"]),
        hostile_text | ids,
    ),
    st.integers(min_value=1, max_value=50_000).map(lambda n: token_of(b"[" * n + b"]" * n)),
)
page_sizes = st.one_of(
    st.integers(min_value=-2, max_value=1002), st.integers(min_value=-(2**31), max_value=2**31 - 1)
)


def matches(entry: pb.DeadLetter, f: pb.DeadLetterFilter) -> bool:
    """What the filter promises, checked on the answer (ASCII text only: ILIKE's case folding
    and Python's differ beyond it)."""
    if f.task and entry.task != f.task:
        return False
    if f.reason and entry.reason != f.reason:
        return False
    if f.status and entry.status != f.status:
        return False
    if f.error_contains.isascii():
        text = f"{entry.error_type}: {entry.error_message}".lower()
        if f.error_contains.lower() not in text:
            return False
    return True


async def call_raw(fuzz: Fuzz, path: str, data: bytes, reply: Any, stream: bool) -> grpc.StatusCode:
    channel = fuzz.dlq.channel
    try:
        if stream:
            call = channel.unary_stream(
                path, request_serializer=lambda b: b, response_deserializer=reply.FromString
            )
            async for _ in call(data, metadata=fuzz.dlq.admin(), timeout=10):
                pass
        else:
            unary = channel.unary_unary(
                path, request_serializer=lambda b: b, response_deserializer=reply.FromString
            )
            await unary(data, metadata=fuzz.dlq.admin(), timeout=10)
    except grpc.aio.AioRpcError as err:
        check_refusal(err, len(data))
        return err.code()
    return grpc.StatusCode.OK


@settings(FUZZ, max_examples=600)
@given(f=filters(), page_size=page_sizes, page_token=page_tokens)
async def test_list_answers_deliberately_and_keeps_to_its_filter(
    fuzz: Fuzz, seeded: list[str], f: pb.DeadLetterFilter, page_size: int, page_token: str
) -> None:
    request = pb.ListDeadLettersRequest(filter=f, page_size=page_size, page_token=page_token)
    try:
        reply = await fuzz.dlq.stub.ListDeadLetters(request, timeout=10)
    except grpc.aio.AioRpcError as err:
        check_refusal(err, request.ByteSize())
        return
    assert len(reply.dead_letters) <= (page_size or 50)
    for entry in reply.dead_letters:
        assert matches(entry, f), (entry.task, entry.reason, entry.status, entry.error_message)


@settings(FUZZ, max_examples=250)
@given(entry_id=hostile_text | ids)
async def test_get_answers_deliberately(fuzz: Fuzz, seeded: list[str], entry_id: str) -> None:
    try:
        reply = await fuzz.dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=entry_id), timeout=10)
    except grpc.aio.AioRpcError as err:
        assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), err
        return
    assert reply.dead_letter.id == entry_id


@st.composite
def selections(draw: st.DrawFn) -> dict[str, Any]:
    """ids (hostile, a few real, or too many) or a filter; at times both, at times neither."""
    how = draw(st.sampled_from(["ids", "ids", "filter", "filter", "both", "neither", "many"]))
    fields: dict[str, Any] = {}
    if how in ("ids", "both"):
        fields["ids"] = draw(st.lists(hostile_text | ids, max_size=30))
    if how == "many":
        fields["ids"] = [f"fz-{i}" for i in range(draw(st.integers(10_001, 12_000)))]
    if how in ("filter", "both"):
        fields["filter"] = draw(filters())
    return fields


@settings(FUZZ, max_examples=350)
@given(
    selection=selections(),
    rate=st.floats() | st.just(0.0),
    reason=hostile_text,
    real_ids=st.integers(min_value=0, max_value=3),
)
async def test_replay_dry_run_answers_deliberately_and_changes_nothing(
    fuzz: Fuzz,
    seeded: list[str],
    selection: dict[str, Any],
    rate: float,
    reason: str,
    real_ids: int,
) -> None:
    if "ids" in selection and len(selection["ids"]) < 100:
        selection["ids"] = [*selection["ids"], *seeded[:real_ids]]
    request = pb.ReplayDeadLettersRequest(
        dry_run=True, rate_per_second=rate if rate == rate else 0.0, reason=reason, **selection
    )
    before = await fuzz.counts()
    try:
        async for step in fuzz.dlq.stub.ReplayDeadLetters(
            request, metadata=fuzz.dlq.admin(), timeout=20
        ):
            assert step.result == "would_replay" or step.result.startswith("skipped: "), step
    except grpc.aio.AioRpcError as err:
        check_refusal(err, request.ByteSize())
    assert await fuzz.counts() == before


@settings(FUZZ, max_examples=350)
@given(selection=selections(), reason=hostile_text, real_ids=st.integers(min_value=0, max_value=3))
async def test_drop_dry_run_answers_deliberately_and_changes_nothing(
    fuzz: Fuzz, seeded: list[str], selection: dict[str, Any], reason: str, real_ids: int
) -> None:
    if "ids" in selection and len(selection["ids"]) < 100:
        selection["ids"] = [*selection["ids"], *seeded[:real_ids]]
    request = pb.DropDeadLettersRequest(dry_run=True, reason=reason, **selection)
    before = await fuzz.counts()
    try:
        reply = await fuzz.dlq.stub.DropDeadLetters(request, metadata=fuzz.dlq.admin(), timeout=20)
        assert reply.dry_run and reply.count == len(reply.ids)
    except grpc.aio.AioRpcError as err:
        check_refusal(err, request.ByteSize())
    assert await fuzz.counts() == before


def nothing_matches() -> pb.DeadLetterFilter:
    """A filter no entry matches (a damaged request that still parses acts on nothing)."""
    return pb.DeadLetterFilter(task=f"fz.none-{uuid.uuid4().hex}", error_contains=MARK)


@settings(FUZZ, max_examples=400)
@given(
    rpc=st.sampled_from(["list", "get", "replay", "drop"]),
    damage=st.sampled_from(["utf8", "bytes"]),
    bad=st.sampled_from(INVALID_UTF8),
    data=st.data(),
)
async def test_damaged_request_bytes_answer_deliberately(
    fuzz: Fuzz, seeded: list[str], rpc: str, damage: str, bad: bytes, data: st.DataObject
) -> None:
    request: Any
    reply: Any
    if rpc == "list":
        request = pb.ListDeadLettersRequest(filter=nothing_matches())
        reply, path = pb.ListDeadLettersResponse, LIST
    elif rpc == "get":
        request, reply, path = pb.GetDeadLetterRequest(id=MARK), pb.GetDeadLetterResponse, GET
    elif rpc == "replay":
        request = pb.ReplayDeadLettersRequest(filter=nothing_matches(), dry_run=True)
        reply, path = pb.ReplayDeadLettersResponse, REPLAY
    else:
        request = pb.DropDeadLettersRequest(ids=[MARK], reason="fuzz", dry_run=True)
        reply, path = pb.DropDeadLettersResponse, DROP
    raw = request.SerializeToString()
    raw = corrupt_marker(raw, bad) if damage == "utf8" else data.draw(mutated(raw))
    before = await fuzz.counts()
    code = await call_raw(fuzz, path, raw, reply, stream=rpc == "replay")
    if damage == "utf8":
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert await fuzz.counts() == before


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong"),), (("authorization", "Basic d3Jvbmc="),)],
    ids=["no token", "wrong token", "another scheme"],
)
async def test_admin_calls_without_the_token_are_refused(
    fuzz: Fuzz, seeded: list[str], metadata: tuple[tuple[str, str], ...]
) -> None:
    before = await fuzz.counts()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fuzz.dlq.stub.DropDeadLetters(
            pb.DropDeadLettersRequest(ids=seeded[2:4], reason="nope"), metadata=metadata
        )
    assert err.value.code() in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert await fuzz.counts() == before


async def test_an_id_list_over_the_size_limit_is_resource_exhausted(
    fuzz: Fuzz, seeded: list[str]
) -> None:
    """Past the server's max message size (16 MiB): refused before parsing."""
    request = pb.DropDeadLettersRequest(ids=["x" * 200] * 90_000, reason="too many", dry_run=True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fuzz.dlq.stub.DropDeadLetters(request, metadata=fuzz.dlq.admin())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_dlq_still_serves(fuzz: Fuzz, seeded: list[str]) -> None:
    await assert_serving(fuzz.dlq.channel)
    reply = await fuzz.dlq.stub.ListDeadLetters(
        pb.ListDeadLettersRequest(filter=pb.DeadLetterFilter(task="fz.alpha"), page_size=1000)
    )
    assert len(reply.dead_letters) == 12
