"""relayq's own message encoding against what Celery's producer writes, in a real Redis."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from relayq_core.broker import celery_config
from relayq_core.envelope import decode
from relayq_core.jobs import JobSpec
from relayq_core.publish import Publisher, job_message
from relayq_devstack.redis import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Differ per message or per publisher by design (ids, the publisher's name), or by choice
#: (kwargsrepr leaves the payload out).
PER_MESSAGE = {"delivery_tag", "reply_to", "origin", "kwargsrepr"}


def _shape(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by its path, except the per-message ones."""
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            if key not in PER_MESSAGE:
                leaves.update(_shape(item, f"{path}.{key}"))
        return leaves
    return {path: value}


@pytest.fixture
def broker(redis_server: RedisServer) -> Any:
    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


def _celery_message(url: str, client: redis.Redis, spec: JobSpec) -> bytes:
    app = Celery("envelope-test", set_as_current=False)
    app.conf.update(celery_config(url, spec.queue))
    with app.producer_or_acquire() as producer:
        app.send_task(
            spec.task,
            kwargs=job_message(spec, 2),
            task_id=spec.job_id,
            queue=spec.queue,
            producer=producer,
        )
    app.close()
    raw = client.lpop(spec.queue)
    assert isinstance(raw, bytes)
    return raw


async def test_a_message_is_what_celery_would_have_written(broker: Any) -> None:
    url, client = broker
    spec = JobSpec(str(uuid.uuid4()), "key-1", "demo.echo", "envelopes", {"n": 1, "é": [True]})
    theirs = json.loads(_celery_message(url, client, spec))
    publisher = Publisher(url)
    try:
        await publisher.publish([spec], {spec.job_id: 2})
    finally:
        await publisher.close()
    assert client.llen("envelopes") == 1  # the list a worker's BRPOP reads
    ours = json.loads(client.lpop("envelopes"))

    assert _shape(ours) == _shape(theirs)  # the body too, byte for byte
    headers, kwargs = decode(json.dumps(ours))
    assert kwargs == job_message(spec, 2)
    assert headers["kwargsrepr"] == repr(
        {
            "job_id": spec.job_id,
            "idempotency_key": "key-1",
            "queue": "envelopes",
            "failures": 2,
            "payload": "…",
        }
    )
    assert ours["properties"]["delivery_tag"] != theirs["properties"]["delivery_tag"]
    assert "traceparent" not in headers  # no span: no context to continue


async def test_a_batch_is_one_pipeline_and_carries_the_trace(broker: Any) -> None:
    url, client = broker
    specs = [
        JobSpec(f"batch-{n}", f"batch-key-{n}", "demo.echo", "q1" if n % 2 else "q2", {"n": n})
        for n in range(10)
    ]
    tracer = TracerProvider().get_tracer(__name__)
    publisher = Publisher(url)
    try:
        with tracer.start_as_current_span("submit") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            with trace.use_span(span):
                await publisher.publish(specs)
    finally:
        await publisher.close()
    assert client.llen("q1") == 5 and client.llen("q2") == 5
    messages = [decode(raw) for q in ("q1", "q2") for raw in client.lrange(q, 0, -1)]
    assert sorted(kw["job_id"] for _, kw in messages) == sorted(s.job_id for s in specs)
    for headers, kwargs in messages:
        assert headers["id"] == headers["root_id"] == kwargs["job_id"]
        assert headers["traceparent"].split("-")[1] == trace_id
