"""Hostile input to ``POST /v1/jobs`` (and the rest of the HTTP door): every answer is a 2xx or a
4xx with the JSON error body, never a 5xx, and a refused submit stores and enqueues nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import DELIBERATE_NAMES, Fuzz, assert_serving
from tests.fuzz.strategies import (
    INVALID_UTF8,
    MARK,
    TASKS,
    corrupt_marker,
    hostile_text,
    ids,
    json_value,
    mutated,
    payload_dicts,
    surrogate_text,
    unique_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIELDS = ("task", "payload", "job_id", "idempotency_key", "queue")
CONTENT_TYPES = (
    "application/json",
    None,
    "text/plain",
    "application/json; charset=latin-1",
    "application/problem+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http(fuzz: Fuzz) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fuzz.ingest.http_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    """A submit body: each field absent, well-typed or of any JSON type; extra keys at times."""
    body: dict[str, Any] = {}
    good = {
        "task": st.sampled_from(TASKS) | hostile_text,
        "payload": st.none() | payload_dicts,
        "job_id": ids,
        "idempotency_key": st.builds(unique_key) | hostile_text,
        "queue": st.sampled_from(["", "default"]) | hostile_text,
    }
    for name in FIELDS:
        how = draw(st.sampled_from(["absent", "good", "good", "good", "any"]))
        if how == "good":
            body[name] = draw(good[name])
        elif how == "any":
            body[name] = draw(json_value)
    if draw(st.integers(0, 9)) == 0:
        body[draw(hostile_text)] = draw(json_value)
    return body


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Body bytes and headers for POST /v1/jobs."""
    kind = draw(
        st.sampled_from(
            ["object", "object", "object", "surrogate", "any", "utf8", "binary", "deep", "bigint"]
            + ["mutated"]
        )
    )
    if kind == "object":
        body = dumps(draw(objects()), ascii_only=draw(st.booleans()))
    elif kind == "surrogate":
        where = draw(st.sampled_from(["task", "idempotency_key", "queue", "value", "key", "extra"]))
        text = draw(surrogate_text)
        obj: dict[str, Any] = {"task": "demo.echo", "idempotency_key": unique_key()}
        if where == "value":
            obj["payload"] = {"note": [text]}
        elif where == "key":
            obj["payload"] = {text: 1}
        elif where == "extra":
            obj[text] = 1
        else:
            obj[where] = text
        body = dumps(obj)
    elif kind == "any":
        body = dumps(draw(json_value))
    elif kind == "utf8":
        obj = {"task": "demo.echo", "payload": {"k": MARK}, "idempotency_key": unique_key()}
        body = corrupt_marker(dumps(obj, ascii_only=False), draw(st.sampled_from(INVALID_UTF8)))
    elif kind == "binary":
        body = draw(st.binary(max_size=300))
    elif kind == "deep":
        n = draw(st.integers(min_value=10, max_value=200_000))
        if draw(st.booleans()):
            body = b"[" * n + b"]" * n
        else:
            body = b'{"task":"demo.echo","payload":' + b'{"a":' * n + b"1" + b"}" * n + b"}"
    elif kind == "bigint":
        digits = draw(st.integers(min_value=10, max_value=20_000))
        body = b'{"task":"demo.echo","payload":{"n":1' + b"0" * digits + b"}}"
    else:
        valid = dumps({"task": "demo.echo", "payload": {"n": 1}, "idempotency_key": unique_key()})
        body = draw(mutated(valid))
    headers: dict[str, str] = {}
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers["content-type"] = content_type
    if draw(st.integers(0, 4)) == 0:
        headers["idempotency-key"] = draw(
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
        )
    return body, headers


def check_answer(reply: httpx.Response) -> None:
    """A deliberate answer: 2xx, or 4xx with ``{"error": {"code", "message"}}``."""
    assert reply.status_code < 500, (reply.status_code, reply.text[:500])
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert error["code"] in DELIBERATE_NAMES | {"UNIMPLEMENTED"}, error
        assert isinstance(error["message"], str) and error["message"], error


@settings(FUZZ, max_examples=900)
@given(request=requests())
async def test_post_jobs_answers_deliberately(
    fuzz: Fuzz, http: httpx.AsyncClient, request: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = request
    before = await fuzz.counts()
    reply = await http.post("/v1/jobs", content=body, headers=headers)
    check_answer(reply)
    after = await fuzz.counts()
    accepted = 1 if reply.status_code == 201 else 0
    assert after.jobs - before.jobs == accepted, (reply.status_code, reply.text[:300])
    assert after.messages - before.messages == accepted
    if reply.status_code in (200, 201):
        assert set(reply.json()) >= {"job_id", "idempotency_key", "queue", "state", "duplicate"}


@settings(FUZZ, max_examples=300)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.one_of(
        st.sampled_from(["/v1/jobs", "/v1/jobs/", "/v1", "/", "/v2/jobs", "/healthz"]),
        (hostile_text | ids).map(lambda s: "/v1/jobs/" + s),
    ),
)
async def test_other_requests_answer_deliberately(
    fuzz: Fuzz, http: httpx.AsyncClient, method: str, path: str
) -> None:
    before = await fuzz.counts()
    try:
        reply = await http.request(method, path, content=b"{}" if method != "GET" else None)
    except httpx.InvalidURL:
        return  # httpx will not send it
    if method != "HEAD":
        check_answer(reply)
    else:
        assert reply.status_code < 500
    after = await fuzz.counts()
    assert after.jobs - before.jobs == (1 if reply.status_code == 201 else 0)


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message"),
    [
        (
            "POST",
            "/v1/jobs",
            b'{"task":"demo.echo","payload":{"k":"\xff"}}',
            400,
            "INVALID_ARGUMENT",
            "not valid JSON",
        ),
        (
            "POST",
            "/v1/jobs",
            b"[" * 100_000 + b"]" * 100_000,
            400,
            "INVALID_ARGUMENT",
            "not valid JSON",
        ),
        ("POST", "/v1/jobs", b'{"task":"\\ud800"}', 422, "INVALID_ARGUMENT", "valid Unicode"),
        (
            "POST",
            "/v1/jobs",
            b'{"task":"demo.echo","payload":{"k":"a\\u0000"}}',
            422,
            "INVALID_ARGUMENT",
            "NUL",
        ),
        (
            "POST",
            "/v1/jobs",
            b'{"task":"demo.echo","payload":{"k":NaN}}',
            422,
            "INVALID_ARGUMENT",
            "finite",
        ),
        ("GET", "/v1/jobs", None, 405, "UNIMPLEMENTED", "Method Not Allowed"),
        ("GET", "/v1/nope", None, 404, "NOT_FOUND", "Not Found"),
    ],
    ids=[
        "not utf-8",
        "too deep to parse",
        "lone surrogate",
        "NUL",
        "NaN",
        "wrong method",
        "no route",
    ],
)
async def test_refusals_found_by_the_fuzzer(
    fuzz: Fuzz,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: str,
    message: str,
) -> None:
    before = await fuzz.counts()
    reply = await http.request(method, path, content=body, headers=JSON)
    assert reply.status_code == status, reply.text[:300]
    assert reply.json()["error"]["code"] == code
    assert message in reply.json()["error"]["message"]
    assert await fuzz.counts() == before


async def test_a_body_over_the_size_limit_is_413(fuzz: Fuzz, http: httpx.AsyncClient) -> None:
    before = await fuzz.counts()
    body = b'{"task":"demo.echo","payload":{"b":"' + b"x" * (17 * 1024 * 1024) + b'"}}'
    reply = await http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 413, reply.text[:300]
    assert reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert await fuzz.counts() == before


async def test_a_streamed_body_over_the_size_limit_is_413(
    fuzz: Fuzz, http: httpx.AsyncClient
) -> None:
    """No Content-Length (chunked): the limit is counted as the body arrives."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"task":"demo.echo","payload":{"b":"'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}}'

    before = await fuzz.counts()
    reply = await http.post("/v1/jobs", content=chunks())
    assert reply.status_code == 413, reply.text[:300]
    assert reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert await fuzz.counts() == before


async def test_http_still_serves(fuzz: Fuzz, http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    reply = await http.post("/v1/jobs", json={"task": "demo.echo", "payload": {"after": "fuzz"}})
    assert reply.status_code == 201, reply.text
    await assert_serving(fuzz.ingest.channel)
