"""Replays that reach the real Celery worker: a replayed demo.charge never charges twice.

The session's worker reports its own dead letters to the session's dlq-svc (a subprocess on the
same database), so a job that fails again after a replay comes back to the same entry.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from relayq.v1 import dead_letter_pb2 as pb
from relayq.v1 import ingest_pb2, job_pb2
from tests.conftest import Ingest
from tests.integration.dlq_fixtures import Dlq, live_dlq, report_request

__all__ = ["live_dlq"]  # the imported fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def job_state(ingest: Ingest, job_id: str) -> int:
    reply = await ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))
    return reply.job.state


async def charges(d: Dlq, key: str) -> int:
    return int(
        await d.pool.fetchval("SELECT count(*) FROM demo_charges WHERE idempotency_key = $1", key)
    )


async def test_a_replayed_charge_that_already_happened_adds_no_row(
    live_ingest: Ingest, live_dlq: Dlq
) -> None:
    key = f"charge-{uuid.uuid4()}"
    payload: dict[str, Any] = {"account": "acct-replay", "amount_cents": 500}
    struct = struct_pb2.Struct()
    struct.update(payload)
    submitted = await live_ingest.stub.SubmitJob(
        ingest_pb2.SubmitJobRequest(task="demo.charge", payload=struct, idempotency_key=key)
    )
    job_id = submitted.job_id

    async def succeeded() -> bool:
        return await job_state(live_ingest, job_id) == job_pb2.JOB_STATE_SUCCEEDED

    await wait_for(succeeded, "the charge to succeed")
    assert await charges(live_dlq, key) == 1

    # Report it as a dead letter anyway (as a confused worker might), then replay it: the
    # ledger knows it succeeded, so nothing is re-enqueued.
    await live_dlq.stub.ReportDeadLetter(
        report_request(
            job_id, idempotency_key=key, task="demo.charge", payload=payload, final_attempt=1
        )
    )
    (step,) = await live_dlq.replay(ids=[job_id])
    assert step.result == "skipped: job already succeeded"

    # The ledger's retention purged the job: the replay re-creates it and the worker runs it
    # again under the same key. demo.charge finds its charge already recorded under the key,
    # writes nothing, and the job succeeds; the entry is marked replayed.
    await live_dlq.pool.execute("DELETE FROM relayq_jobs WHERE job_id = $1", job_id)
    (step,) = await live_dlq.replay(ids=[job_id])
    assert step.result == "replayed"

    await wait_for(succeeded, "the replayed charge to succeed")
    assert await charges(live_dlq, key) == 1
    job = (await live_ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))).job
    assert json_format.MessageToDict(job.result)["already_charged"] is True
    assert job.attempts[0].number > 1, "the new run's attempts continue the old numbering"
    entry = (await live_dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=job_id))).dead_letter
    assert entry.status == "replayed"
    assert [a.action for a in entry.audit] == ["dead_lettered", "replayed"]
