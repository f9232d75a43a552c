"""``demo.webhook`` against a real HTTP receiver that counts requests per key and injects faults.

The worker under test (conftest: retry-fast.toml, a 1 s HTTP timeout, a 3 s lease) POSTs to
``tests/support/http_receiver.Receiver``, whose answers each job's body scripts. Every test
checks what the receiver saw: the job's key on every request, the policy's backoff between
requests, the failure in the DLQ entry, and never two requests of one job in flight at once.

The last two tests cut the worker off mid-request on a stack of their own: PostgreSQL restarted
(the job's lock vanishes with the connection while the HTTP call goes on; a second message of
the job then arrives: finding 5), and the pool process SIGKILLed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from google.protobuf import struct_pb2

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc, ingest_pb2, job_pb2
from relayq_core.db.ledger import JobLedger, connect
from relayq_core.db.migrate import migrate_ledger
from relayq_core.jobs import JobSpec
from relayq_core.publish import Publisher
from relayq_core.retry import load_policies
from relayq_core.settings import repo_root
from relayq_devstack.postgres import PostgresServer, start_postgres
from relayq_devstack.redis import RedisServer
from tests.conftest import DlqServer, Ingest
from tests.integration.jobs import finish
from tests.integration.test_worker_lifecycle import db_url, start_node
from tests.support.http_receiver import Receiver, closed_port_url
from worker_svc.schema import migrate as migrate_worker

# Async tests run on the session's loop (asyncio_default_test_loop_scope); the last two are
# synchronous: they drive processes.
pytestmark = pytest.mark.integration

POLICY = load_policies(repo_root() / "tests" / "data" / "retry-fast.toml").default
#: What a request-to-request gap may add to the countdown: the worker's claim, the Celery ETA
#: timer, the HTTP connection (a loaded CI machine: generous).
SLACK = 1.5


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


async def submit_hook(ingest: Ingest, url: str, faults: list[str]) -> tuple[str, str]:
    """A webhook job whose receiver answers its first requests with ``faults``; (job, key)."""
    key = f"hook-{uuid.uuid4()}"
    payload = struct_pb2.Struct()
    payload.update({"url": url, "body": {"key": key, "faults": faults}})
    reply = await ingest.stub.SubmitJob(
        ingest_pb2.SubmitJobRequest(task="demo.webhook", payload=payload, idempotency_key=key)
    )
    return reply.job_id, key


def gaps(rx: Receiver, key: str) -> list[float]:
    """Seconds from each request's end to the next one's start."""
    requests = rx.requests(key)
    return [
        b.started - (a.ended if a.ended is not None else a.started)
        for a, b in zip(requests, requests[1:], strict=False)
    ]


async def test_retries_follow_the_backoff_then_succeed_with_one_key(
    live_ingest: Ingest, receiver: Receiver
) -> None:
    job_id, key = await submit_hook(live_ingest, receiver.url(), ["500", "503", "408"])
    job = await finish(live_ingest, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    requests = receiver.requests(key)
    assert [r.status for r in requests] == [500, 503, 408, 200]
    assert all(r.headers["idempotency-key"] == key for r in requests)
    assert all(r.body == {"key": key, "faults": ["500", "503", "408"]} for r in requests)
    assert [a.outcome for a in job.attempts] == ["failed"] * 3 + ["succeeded"]
    for n, (attempt, gap) in enumerate(zip(job.attempts, gaps(receiver, key), strict=False), 1):
        low, high = POLICY.bounds(n)
        assert low <= attempt.countdown_seconds <= high, (n, attempt.countdown_seconds)
        assert attempt.error_type == "WebhookRejected"
        assert attempt.error_message.startswith(f"POST {receiver.url()} answered ")
        assert low - 0.05 <= gap <= high + SLACK, (n, gap, low, high)
    assert receiver.overlaps() == []


async def test_retry_after_is_honoured_up_to_the_policys_longest_delay(
    live_ingest: Ingest, receiver: Receiver
) -> None:
    job_id, key = await submit_hook(live_ingest, receiver.url(), ["429:1", "429:30"])
    job = await finish(live_ingest, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    first, second = gaps(receiver, key)
    assert 1.0 - 0.05 <= first <= 1.0 + SLACK  # Retry-After: 1, above the 0.2 s backoff
    cap = POLICY.max_delay_seconds  # Retry-After: 30, capped at the policy's longest delay
    assert cap - 0.05 <= second <= cap + SLACK, second
    assert [round(a.countdown_seconds, 1) for a in job.attempts[:2]] == [1.0, cap]


async def test_timeouts_and_dropped_connections_end_in_the_dlq_with_the_last_error(
    live_ingest: Ingest,
    receiver: Receiver,
    dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub,
) -> None:
    attempts = POLICY.max_retries + 1
    faults = ["delay:3", "hang", "close", "delay:3", "hang"]
    job_id, key = await submit_hook(live_ingest, receiver.url(), faults)
    job = await finish(live_ingest, job_id, timeout=90)
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED
    requests = receiver.requests(key)
    assert [r.fault for r in requests] == faults[:attempts]
    # The worker gave up on each after its 1 s HTTP timeout, not after the receiver's delay.
    for r in requests:
        assert r.outcome in ("client_gone", "closed"), r
        assert r.ended is not None and r.ended - r.started < 2.5, r
    assert [a.error_type for a in job.attempts] == [
        "ReadTimeout",
        "ReadTimeout",
        "RemoteProtocolError",
        "ReadTimeout",
        "ReadTimeout",
    ]
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job_id))
    ).dead_letter
    assert entry.reason == "retries_exhausted" and entry.error_type == "ReadTimeout"
    assert entry.idempotency_key == key and len(entry.attempts) == attempts
    assert receiver.overlaps() == []


async def test_a_refused_connection_is_retried_then_dead_lettered(
    live_ingest: Ingest, dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub
) -> None:
    job_id, _ = await submit_hook(live_ingest, closed_port_url(), [])
    job = await finish(live_ingest, job_id)
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED
    assert [a.error_type for a in job.attempts] == ["ConnectError"] * (POLICY.max_retries + 1)
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job_id))
    ).dead_letter
    assert entry.reason == "retries_exhausted" and entry.error_type == "ConnectError"


async def test_a_4xx_is_permanent(
    live_ingest: Ingest,
    receiver: Receiver,
    dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub,
) -> None:
    job_id, key = await submit_hook(live_ingest, receiver.url(), ["422"])
    job = await finish(live_ingest, job_id)
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED and job.attempt_count == 1
    assert receiver.counts()[key] == 1
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job_id))
    ).dead_letter
    assert entry.reason == "permanent_error" and entry.error_type == "WebhookRejected"
    assert " answered 422 " in entry.error_message


# --- cut off mid-request, on a stack of its own ----------------------------------------------


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL this test may restart, with every owner's migrations."""
    server = start_postgres(tmp_path / "pg", fast=True)
    try:
        asyncio.run(migrate_ledger(server.url))
        asyncio.run(migrate_worker(server.url))
        yield server
    finally:
        server.stop()


def record(database_url: str, broker_url: str, spec: JobSpec) -> None:
    """Records the job as ingest does and publishes its message."""

    async def go() -> None:
        conn = await connect(database_url)
        publisher = Publisher(broker_url)
        try:
            await JobLedger().insert_jobs(conn, [spec])
            await publisher.publish([spec])
        finally:
            await publisher.close()
            await conn.close()

    asyncio.run(go())


def state(database_url: str, job_id: str) -> tuple[str, list[str]]:
    async def go() -> tuple[str, list[str]]:
        conn = await connect(database_url)
        try:
            job = await JobLedger().get_job(conn, job_id)
        finally:
            await conn.close()
        assert job is not None
        return job.state.value, [a.outcome for a in job.attempts]

    return asyncio.run(go())


def hook(receiver: Receiver, faults: list[str]) -> JobSpec:
    key = f"cut-{uuid.uuid4()}"
    return JobSpec(
        key,
        key,
        "demo.webhook",
        "default",
        {"url": receiver.url(), "body": {"key": key, "faults": faults}},
    )


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_postgres_restarting_under_a_request_never_runs_the_job_twice_at_once(
    own_postgres: PostgresServer,
    redis_server: RedisServer,
    dlq_server: DlqServer,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """The request is in flight for 6 s when PostgreSQL restarts: the delivery's connection,
    and with it the job's lock, is gone. A second message of the job then arrives (an
    at-least-once broker may deliver one at any time). It must not start the job while the
    first request is still in flight; the job then succeeds, with one key throughout."""
    broker = db_url(redis_server, 12)
    node = start_node(
        "cut-pg",
        own_postgres.url,
        broker,
        dlq_server,
        tmp_path,
        RELAYQ_WORKER_HTTP_TIMEOUT_SECONDS="10",
        RELAYQ_WORKER_CONCURRENCY="2",
    )
    try:
        spec = hook(receiver, ["delay:6"])
        record(own_postgres.url, broker, spec)
        receiver.wait_for(lambda rx: rx.counts()[spec.idempotency_key] == 1, 30, "the request")
        own_postgres.restart()

        async def duplicate() -> None:
            publisher = Publisher(broker)
            try:
                await publisher.publish([spec])
            finally:
                await publisher.close()

        asyncio.run(duplicate())
        wait(lambda: state(own_postgres.url, spec.job_id)[0] == "succeeded", 60, "success")
    finally:
        node.stop(timeout=10)
    requests = receiver.requests(spec.idempotency_key)
    assert receiver.overlaps() == [], [(r.n, r.started, r.ended, r.outcome) for r in requests]
    assert requests[-1].status == 200
    assert all(r.headers["idempotency-key"] == spec.idempotency_key for r in requests)
    _, outcomes = state(own_postgres.url, spec.job_id)
    assert outcomes.count("succeeded") == 1


def test_a_pool_process_killed_mid_request_is_taken_over_after_its_lease(
    database_url: str,
    redis_server: RedisServer,
    dlq_server: DlqServer,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    broker = db_url(redis_server, 13)
    node = start_node(
        "cut-kill",
        database_url,
        broker,
        dlq_server,
        tmp_path,
        RELAYQ_WORKER_CONCURRENCY="1",
        RELAYQ_WORKER_HTTP_TIMEOUT_SECONDS="10",
    )
    try:
        spec = hook(receiver, ["hang"])
        record(database_url, broker, spec)
        receiver.wait_for(lambda rx: rx.counts()[spec.idempotency_key] == 1, 30, "the request")
        (child,) = psutil.Process(node.pid).children()
        child.kill()
        killed_at = time.time()
        wait(lambda: state(database_url, spec.job_id)[0] == "succeeded", 60, "success")
    finally:
        node.stop(timeout=10)
    first, second = receiver.requests(spec.idempotency_key)
    assert first.outcome == "client_gone" and first.ended is not None
    assert first.ended - killed_at < 1.0  # the dead process's socket closed at once
    assert second.status == 200 and second.started > first.ended
    _, outcomes = state(database_url, spec.job_id)
    assert outcomes == ["worker_lost", "succeeded"]
    assert receiver.overlaps() == []
