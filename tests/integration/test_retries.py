"""Retries, permanent errors, poison jobs and the DLQ hand-off, with real worker processes.

The test worker runs tests/data/retry-fast.toml: the default policy's shape with a 0.2 s base,
4 retries, ±20 % jitter and 2 worker losses, so the real retry path runs in seconds.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf import json_format

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc, ingest_pb2, job_pb2
from relayq_core.retry import load_policies
from relayq_core.settings import repo_root
from tests.conftest import DlqServer, Ingest
from tests.integration.jobs import finish, request

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLICY = load_policies(repo_root() / "tests" / "data" / "retry-fast.toml").default


async def test_flaky_succeeds_on_attempt_4_after_three_jittered_retries(
    live_ingest: Ingest,
) -> None:
    reply = await live_ingest.stub.SubmitJob(request("demo.flaky", {"fail_times": 3}))
    job = await finish(live_ingest, reply.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert json_format.MessageToDict(job.result) == {"succeeded_on_attempt": 4}
    assert [a.outcome for a in job.attempts] == ["failed", "failed", "failed", "succeeded"]
    for n, attempt in enumerate(job.attempts[:3], start=1):
        low, high = POLICY.bounds(n)
        assert low <= attempt.countdown_seconds <= high, (n, attempt.countdown_seconds)
        assert attempt.error_type == "JobError"
        # Celery honoured the countdown: the next attempt started no earlier than it allowed.
        ended = attempt.started_at.ToDatetime().timestamp() + attempt.duration_seconds
        next_start = job.attempts[n].started_at.ToDatetime().timestamp()
        assert next_start - ended >= attempt.countdown_seconds - 0.05


async def test_retryable_failure_dead_letters_after_max_retries_plus_one(
    live_ingest: Ingest, dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub
) -> None:
    reply = await live_ingest.stub.SubmitJob(
        request("demo.fail", {"permanent": False, "message": "smtp timeout"})
    )
    job = await finish(live_ingest, reply.job_id)
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED
    attempts = POLICY.max_retries + 1
    assert job.attempt_count == attempts == 5
    assert [a.outcome for a in job.attempts] == ["failed"] * attempts
    assert [a.countdown_seconds > 0 for a in job.attempts] == [True] * (attempts - 1) + [False]
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job.job_id))
    ).dead_letter
    assert entry.reason == "retries_exhausted" and entry.status == "active"
    assert entry.error_type == "JobError" and entry.error_message == "smtp timeout"
    assert "JobError" in entry.traceback and "demo.py" in entry.traceback
    assert len(entry.attempts) == attempts
    assert entry.idempotency_key == job.idempotency_key
    assert json_format.MessageToDict(entry.payload) == {
        "permanent": False,
        "message": "smtp timeout",
    }


async def test_permanent_failure_dead_letters_after_one_attempt(
    live_ingest: Ingest, dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub
) -> None:
    reply = await live_ingest.stub.SubmitJob(
        request("demo.fail", {"permanent": True, "message": "card declined"})
    )
    job = await finish(live_ingest, reply.job_id)
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED and job.attempt_count == 1
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job.job_id))
    ).dead_letter
    assert entry.reason == "permanent_error" and entry.error_message == "card declined"


async def test_poison_job_dead_letters_as_worker_lost(
    live_ingest: Ingest, dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub
) -> None:
    reply = await live_ingest.stub.SubmitJob(request("demo.crash", {}))
    job = await finish(live_ingest, reply.job_id, timeout=90)
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED
    assert job.worker_losses == POLICY.max_worker_losses == 2
    assert [a.outcome for a in job.attempts] == ["worker_lost", "worker_lost", "dead_lettered"]
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job.job_id))
    ).dead_letter
    assert entry.reason == "worker_lost" and entry.error_type == "WorkerLost"
    # The worker survived its children's deaths and still runs jobs.
    ok = await live_ingest.stub.SubmitJob(request("demo.echo", {"after": "crash"}))
    assert (await finish(live_ingest, ok.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_dlq_down_for_a_while_still_stores_the_dead_letter(
    live_ingest: Ingest,
    dlq_server: DlqServer,
    dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub,
) -> None:
    dlq_server.stop()
    try:
        reply = await live_ingest.stub.SubmitJob(
            request("demo.fail", {"permanent": True, "message": "while dlq is down"})
        )
        deadline = time.monotonic() + 30
        while True:  # the worker decided to dead-letter and is waiting for dlq-svc
            job = (await live_ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=reply.job_id))).job
            if job.last_error.startswith("dead-lettering"):
                break
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # several failed report attempts
        job = (await live_ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=reply.job_id))).job
        assert job.state == job_pb2.JOB_STATE_RETRYING  # not dead-lettered until the DLQ has it
    finally:
        dlq_server.start()
    job = await finish(live_ingest, reply.job_id, timeout=60)
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job.job_id))
    ).dead_letter
    assert entry.error_message == "while dlq is down" and entry.dead_letter_count == 1
