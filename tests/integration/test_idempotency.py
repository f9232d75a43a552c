"""Idempotency end to end: duplicate submits (gRPC, HTTP, concurrent) and duplicate deliveries
to real worker processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, job_pb2
from relayq_core.jobs import JobSpec
from tests.conftest import Ingest, broker_messages, outbox_drained

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def request(task: str, payload: dict[str, Any], **fields: str) -> ingest_pb2.SubmitJobRequest:
    struct = struct_pb2.Struct()
    struct.update(payload)
    return ingest_pb2.SubmitJobRequest(task=task, payload=struct, **fields)


async def journal_rows(ingest: Ingest, keys: list[str]) -> dict[str, int]:
    """demo.transfer's journal rows per key (read directly: that is what must hold once; no
    constraint in the table would stop a second row)."""
    pool = ingest.jobs._pool
    rows = await pool.fetch(
        "SELECT idempotency_key, count(*) AS n FROM demo_transfers"
        " WHERE idempotency_key = ANY($1::text[]) GROUP BY idempotency_key",
        keys,
    )
    return {r["idempotency_key"]: int(r["n"]) for r in rows}


async def balances(ingest: Ingest, accounts: list[str]) -> dict[str, int]:
    rows = await ingest.jobs._pool.fetch(
        "SELECT account, balance_cents FROM demo_accounts WHERE account = ANY($1::text[])",
        accounts,
    )
    return {r["account"]: int(r["balance_cents"]) for r in rows}


async def wait_all_done(
    ingest: Ingest, job_ids: list[str], timeout: float = 90
) -> list[job_pb2.Job]:
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    done: dict[str, job_pb2.Job] = {}
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} jobs unfinished"
        replies = await asyncio.gather(
            *(ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=j)) for j in pending)
        )
        for r in replies:
            if r.job.state == job_pb2.JOB_STATE_SUCCEEDED:
                done[r.job.job_id] = r.job
        pending -= set(done)
        if pending:
            await asyncio.sleep(0.2)
    return [done[j] for j in job_ids]


async def test_concurrent_identical_submits_create_one_job(
    ingest: Ingest, quiet_broker_url: str
) -> None:
    key = f"race-{uuid.uuid4()}"
    await outbox_drained(ingest)
    before = len(broker_messages(quiet_broker_url, "default"))
    replies = await asyncio.gather(
        *(
            ingest.stub.SubmitJob(request("demo.echo", {"a": 1}, idempotency_key=key))
            for _ in range(20)
        )
    )
    assert len({r.job_id for r in replies}) == 1
    assert sorted(r.duplicate for r in replies) == [False] + [True] * 19
    await outbox_drained(ingest)
    assert len(broker_messages(quiet_broker_url, "default")) == before + 1


async def test_concurrent_conflicting_submits_one_wins(ingest: Ingest) -> None:
    key = f"race-{uuid.uuid4()}"
    results = await asyncio.gather(
        *(
            ingest.stub.SubmitJob(request("demo.echo", {"n": n}, idempotency_key=key))
            for n in range(10)
        ),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, ingest_pb2.SubmitJobResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(accepted) == 1 and len(refused) == 9
    assert all(e.code() == grpc.StatusCode.ALREADY_EXISTS for e in refused)


async def test_concurrent_http_submits_create_one_job(ingest: Ingest) -> None:
    transport = httpx.ASGITransport(app=ingest.http_app)  # type: ignore[arg-type]
    body = {"task": "demo.echo", "payload": {"hook": "x"}, "idempotency_key": f"h-{uuid.uuid4()}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
        replies = await asyncio.gather(*(http.post("/v1/jobs", json=body) for _ in range(10)))
    assert sorted(r.status_code for r in replies) == [200] * 9 + [201]
    assert len({r.json()["job_id"] for r in replies}) == 1


async def test_a_batch_repeating_a_key_returns_the_first(ingest: Ingest) -> None:
    key = f"batch-{uuid.uuid4()}"
    reply = await ingest.stub.SubmitJobs(
        ingest_pb2.SubmitJobsRequest(
            jobs=[request("demo.echo", {"a": 1}, idempotency_key=key)] * 3
            + [request("demo.echo", {"a": 2}, idempotency_key=key)]
        )
    )
    jobs = [r.job for r in reply.results[:3]]
    assert len({j.job_id for j in jobs}) == 1
    assert [j.duplicate for j in jobs] == [False, True, True]
    assert reply.results[3].error.code == "ALREADY_EXISTS"


async def test_a_batch_repeating_a_named_job_returns_the_first(
    ingest: Ingest, quiet_broker_url: str
) -> None:
    # The client names the job id too: the repeat is inserted by the same statement's conflict
    # rule, and must be answered as a duplicate, not as a clash with itself.
    key, job_id = f"named-{uuid.uuid4()}", f"named-job-{uuid.uuid4()}"
    await outbox_drained(ingest)
    before = len(broker_messages(quiet_broker_url, "default"))
    reply = await ingest.stub.SubmitJobs(
        ingest_pb2.SubmitJobsRequest(
            jobs=[request("demo.echo", {"a": 1}, idempotency_key=key, job_id=job_id)] * 3
        )
    )
    assert [r.WhichOneof("outcome") for r in reply.results] == ["job"] * 3
    assert [(r.job.job_id, r.job.duplicate) for r in reply.results] == [
        (job_id, False),
        (job_id, True),
        (job_id, True),
    ]
    await outbox_drained(ingest)
    assert len(broker_messages(quiet_broker_url, "default")) == before + 1


async def test_same_message_to_two_worker_processes_applies_once(live_ingest: Ingest) -> None:
    key = f"double-{uuid.uuid4()}"
    payload = {"from": f"a-{key}", "to": f"b-{key}", "amount_cents": 700, "hold_ms": 800}
    reply = await live_ingest.stub.SubmitJob(request("demo.transfer", payload, idempotency_key=key))
    # The same message again, at once: the test worker's second pool process takes it while the
    # first is still inside the transfer's transaction.
    spec = JobSpec(reply.job_id, key, "demo.transfer", "default", payload)
    await live_ingest.jobs._publisher.publish([spec])
    (job,) = await wait_all_done(live_ingest, [reply.job_id])
    deadline = time.monotonic() + 30
    while job.duplicate_deliveries < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        job = (await live_ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=reply.job_id))).job
    assert job.duplicate_deliveries == 1
    assert await journal_rows(live_ingest, [key]) == {key: 1}
    assert await balances(live_ingest, [f"a-{key}", f"b-{key}"]) == {
        f"a-{key}": -700,
        f"b-{key}": 700,
    }
    assert [a.outcome for a in job.attempts].count("succeeded") == 1
    workers = {a.worker for a in job.attempts}
    assert all(w.startswith("test-worker@") for w in workers)


async def test_1000_transfers_submitted_twice_and_delivered_twice(live_ingest: Ingest) -> None:
    run = uuid.uuid4().hex[:8]
    payloads: list[dict[str, Any]] = [
        {"from": f"{run}-acct-{i % 7}", "to": f"{run}-sink-{i % 5}", "amount_cents": 100 + i}
        for i in range(1000)
    ]
    batch = [
        request("demo.transfer", payload, idempotency_key=f"bulk-{run}-{i}")
        for i, payload in enumerate(payloads)
    ]
    first = await live_ingest.stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=batch))
    second = await live_ingest.stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=batch))
    assert not any(r.job.duplicate for r in first.results)
    assert all(r.job.duplicate for r in second.results)
    ids = [r.job.job_id for r in first.results]
    assert [r.job.job_id for r in second.results] == ids
    # Deliver every job a second time, on purpose.
    await live_ingest.jobs._publisher.publish(
        [
            JobSpec(r.job.job_id, f"bulk-{run}-{i}", "demo.transfer", "default", payloads[i])
            for i, r in enumerate(first.results)
        ]
    )
    jobs = await wait_all_done(live_ingest, ids, timeout=180)
    keys = [f"bulk-{run}-{i}" for i in range(1000)]
    assert await journal_rows(live_ingest, keys) == {k: 1 for k in keys}
    expected: dict[str, int] = {}
    for p in payloads:
        expected[p["from"]] = expected.get(p["from"], 0) - p["amount_cents"]
        expected[p["to"]] = expected.get(p["to"], 0) + p["amount_cents"]
    assert await balances(live_ingest, list(expected)) == expected
    deadline = time.monotonic() + 60
    while sum(j.duplicate_deliveries for j in jobs) < 1000 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        jobs = await wait_all_done(live_ingest, ids)
    assert sum(j.duplicate_deliveries for j in jobs) == 1000
    assert all([a.outcome for a in j.attempts].count("succeeded") == 1 for j in jobs)


async def test_a_resubmit_before_the_publish_answers_duplicate_and_publishes_nothing(
    ingest: Ingest, quiet_broker_url: str
) -> None:
    key = f"lost-{uuid.uuid4()}"
    spec = JobSpec(str(uuid.uuid4()), key, "demo.echo", "default", {"q": 1})
    pool = ingest.jobs._pool
    # As if an ingest recorded the job and died with it in its outbox, before the broker had it.
    await ingest.jobs._ledger.insert_jobs(pool, [spec])

    def copies() -> int:
        messages = broker_messages(quiet_broker_url, "default")
        return len([m for m in messages if m["headers"]["id"] == spec.job_id])

    for _ in range(2):
        again = await ingest.stub.SubmitJob(request("demo.echo", {"q": 1}, idempotency_key=key))
        assert again.duplicate and again.job_id == spec.job_id
    await outbox_drained(ingest)
    # Nothing published by the re-submits: the reconciler's never-published rule publishes it
    # (tests/integration/test_reconciler.py), once.
    assert copies() == 0
    row = await pool.fetchrow(
        "SELECT state, enqueued_at FROM relayq_jobs WHERE job_id = $1", spec.job_id
    )
    assert row is not None and row["state"] == "queued" and row["enqueued_at"] is None
