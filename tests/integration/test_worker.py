"""A real Celery worker (subprocess, prefork) runs jobs submitted through the real ingest."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from relayq.v1 import ingest_pb2, job_pb2
from relayq_devstack.process import ServiceProcess
from tests.conftest import Ingest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def request(task: str, payload: dict[str, Any], **fields: str) -> ingest_pb2.SubmitJobRequest:
    struct = struct_pb2.Struct()
    struct.update(payload)
    return ingest_pb2.SubmitJobRequest(task=task, payload=struct, **fields)


async def wait_for_state(
    ingest: Ingest, job_id: str, state: int, timeout: float = 30.0
) -> job_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = (await ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))).job
        if job.state == state:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job_pb2.JobState.Name(job.state)}")
        await asyncio.sleep(0.05)


async def test_echo_runs_and_records_outcome(live_ingest: Ingest) -> None:
    reply = await live_ingest.stub.SubmitJob(request("demo.echo", {"to": "x@example.com", "n": 3}))
    job = await wait_for_state(live_ingest, reply.job_id, job_pb2.JOB_STATE_SUCCEEDED)
    assert json_format.MessageToDict(job.result) == {"to": "x@example.com", "n": 3}
    assert job.attempt_count == 1
    (attempt,) = job.attempts
    assert attempt.number == 1 and attempt.outcome == "succeeded"
    assert attempt.worker.startswith("test-worker@")
    assert job.started_at.seconds > 0 and job.finished_at.seconds > 0


async def test_slow_takes_its_time(live_ingest: Ingest) -> None:
    reply = await live_ingest.stub.SubmitJob(request("demo.slow", {"ms": 300}))
    job = await wait_for_state(live_ingest, reply.job_id, job_pb2.JOB_STATE_SUCCEEDED)
    assert job.attempts[0].duration_seconds >= 0.3
    assert json_format.MessageToDict(job.result) == {"slept_ms": 300}


async def test_a_batch_all_succeeds(live_ingest: Ingest) -> None:
    reply = await live_ingest.stub.SubmitJobs(
        ingest_pb2.SubmitJobsRequest(jobs=[request("demo.echo", {"i": i}) for i in range(50)])
    )
    ids = [r.job.job_id for r in reply.results]
    assert len(ids) == 50
    for job_id in ids:
        await wait_for_state(live_ingest, job_id, job_pb2.JOB_STATE_SUCCEEDED)


async def test_every_worker_log_line_of_a_job_carries_its_ids(
    live_ingest: Ingest, worker: ServiceProcess
) -> None:
    key = "log-check-key"
    reply = await live_ingest.stub.SubmitJob(
        request("demo.echo", {"check": "logs"}, idempotency_key=key)
    )
    await wait_for_state(live_ingest, reply.job_id, job_pb2.JOB_STATE_SUCCEEDED)
    deadline = time.monotonic() + 10
    while True:  # the success line is written just after the ledger commit GetJob saw
        lines = [ln for ln in worker.log_path.read_text().splitlines() if ln.startswith("{")]
        records = [json.loads(line) for line in lines]
        about_job = [r for r in records if reply.job_id in json.dumps(r)]
        if "job_succeeded" in {r["event"] for r in about_job} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert {r["event"] for r in about_job} >= {"job_started", "job_succeeded"}
    for record in about_job:
        assert record["job_id"] == reply.job_id, record
        assert record["idempotency_key"] == key, record
    # No line anywhere names a job without naming its key too.
    assert all("idempotency_key" in r for r in records if "job_id" in r)
