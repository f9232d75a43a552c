"""ReplayDeadLetters against real Postgres (store and job ledger) and a real Redis broker.

Replays here go to the session's quiet broker (no worker consumes it), so the test reads exactly
what was published. Entries use a queue of their own where the count of messages matters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from dlq_svc import replay as replay_module
from dlq_svc.config import DlqSettings
from dlq_svc.main import build_servicer, start
from relayq.v1 import dead_letter_pb2 as pb
from relayq.v1 import dead_letter_pb2_grpc
from relayq_core.catalog import Catalog
from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.jobs import AttemptRecord, JobSpec, JobState
from relayq_core.publish import Publisher
from relayq_devstack.redis import start_redis
from tests.conftest import broker_messages
from tests.integration.dlq_fixtures import Dlq, dlq, dlq_server, report_request, unique_task

__all__ = ["dlq"]  # the imported fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


def queue() -> str:
    """A broker queue no other test publishes to."""
    return f"dlqtest-{uuid.uuid4().hex[:8]}"


async def entry(d: Dlq, job_id: str) -> pb.DeadLetter:
    return (await d.stub.GetDeadLetter(pb.GetDeadLetterRequest(id=job_id))).dead_letter


async def report_many(d: Dlq, n: int, **fields: object) -> list[str]:
    ids = []
    for _ in range(n):
        request = report_request(**fields)  # type: ignore[arg-type]
        await d.stub.ReportDeadLetter(request)
        ids.append(request.job_id)
    return ids


async def test_replay_by_id_reenqueues_with_the_original_ids(dlq: Dlq) -> None:
    job_id, key = f"job-{uuid.uuid4()}", f"key-{uuid.uuid4()}"
    spec = JobSpec(job_id, key, "demo.echo", "default", {"to": "a@example.com", "n": 3})
    await LEDGER.insert_jobs(dlq.pool, [spec])
    await LEDGER.fail(dlq.pool, job_id, JobState.DEAD_LETTERED, "ValueError: boom")
    await dlq.stub.ReportDeadLetter(
        report_request(job_id, idempotency_key=key, payload={"to": "a@example.com", "n": 3})
    )

    messages = await dlq.replay(ids=[job_id], reason="smtp fixed")

    assert [(m.id, m.job_id, m.result, m.done, m.total) for m in messages] == [
        (job_id, job_id, "replayed", 1, 1)
    ]
    sent = [m for m in broker_messages(dlq.broker_url, "default") if m["headers"]["id"] == job_id]
    assert len(sent) == 1
    assert sent[0]["headers"]["task"] == "demo.echo"
    kwargs = sent[0]["kwargs"]
    assert (kwargs["job_id"], kwargs["idempotency_key"]) == (job_id, key)
    assert kwargs["payload"] == {"to": "a@example.com", "n": 3}
    job = await LEDGER.get_job(dlq.pool, job_id)
    assert job is not None and job.state is JobState.QUEUED and job.enqueued_at is not None
    stored = await entry(dlq, job_id)
    assert stored.status == "replayed"
    assert (stored.audit[-1].action, stored.audit[-1].actor) == ("replayed", "tester@test")
    assert (stored.audit[-1].reason, stored.audit[-1].result) == ("smtp fixed", "enqueued")


async def test_replay_recreates_a_job_the_ledger_purged(dlq: Dlq) -> None:
    q = queue()
    request = report_request(
        task="demo.charge", queue=q, payload={"account": "a", "amount_cents": 7}
    )
    await dlq.stub.ReportDeadLetter(request)
    assert await LEDGER.get_job(dlq.pool, request.job_id) is None

    (step,) = await dlq.replay(ids=[request.job_id])

    assert step.result == "replayed"
    job = await LEDGER.get_job(dlq.pool, request.job_id)
    assert job is not None and job.state is JobState.QUEUED
    assert (job.idempotency_key, job.task, job.queue) == (request.job_id, "demo.charge", q)
    assert job.payload == {"account": "a", "amount_cents": 7}
    (sent,) = broker_messages(dlq.broker_url, q)
    assert sent["kwargs"]["payload"] == {"account": "a", "amount_cents": 7}
    assert isinstance(sent["kwargs"]["payload"]["amount_cents"], int)


async def test_replay_by_filter_takes_active_entries_oldest_first(dlq: Dlq) -> None:
    task, q = unique_task("filter"), queue()
    ids = await report_many(dlq, 4, task=task, queue=q)  # each later than the one before
    await dlq.replay(ids=[ids[1]])
    await dlq.stub.DropDeadLetters(
        pb.DropDeadLettersRequest(ids=[ids[2]], reason="obsolete"), metadata=dlq.admin()
    )
    assert len(broker_messages(dlq.broker_url, q)) == 1

    messages = await dlq.replay(filter=pb.DeadLetterFilter(task=task))

    assert [(m.id, m.result, m.done, m.total) for m in messages] == [
        (ids[0], "replayed", 1, 2),
        (ids[3], "replayed", 2, 2),
    ]
    assert len(broker_messages(dlq.broker_url, q)) == 3
    assert [(await entry(dlq, i)).status for i in ids] == [
        "replayed",
        "replayed",
        "dropped",
        "replayed",
    ]
    assert await dlq.replay(filter=pb.DeadLetterFilter(task=task)) == [], "nothing left"


async def test_a_dry_run_changes_nothing_and_publishes_nothing(dlq: Dlq) -> None:
    task, q = unique_task("dry"), queue()
    ids = await report_many(dlq, 3, task=task, queue=q)
    await dlq.replay(ids=[ids[0]])
    before = [await entry(dlq, i) for i in ids]
    sent_before = broker_messages(dlq.broker_url, q)

    by_id = await dlq.replay(ids=[*ids, "no-such-entry"], dry_run=True, rate_per_second=1)
    by_filter = await dlq.replay(filter=pb.DeadLetterFilter(task=task), dry_run=True)

    assert [(m.id, m.result) for m in by_id] == [
        (ids[0], "skipped: not active (replayed)"),
        (ids[1], "would_replay"),
        (ids[2], "would_replay"),
        ("no-such-entry", "skipped: not found"),
    ]
    assert [m.done for m in by_id] == [1, 2, 3, 4] and {m.total for m in by_id} == {4}
    assert [(m.id, m.result) for m in by_filter] == [
        (ids[1], "would_replay"),
        (ids[2], "would_replay"),
    ]
    assert [await entry(dlq, i) for i in ids] == before
    assert broker_messages(dlq.broker_url, q) == sent_before
    assert await LEDGER.get_job(dlq.pool, ids[1]) is None, "the ledger is not touched either"


async def test_the_rate_limit_spaces_replays(dlq: Dlq) -> None:
    task, q = unique_task("rate"), queue()
    ids = await report_many(dlq, 10, task=task, queue=q)
    started = time.perf_counter()
    messages = await dlq.replay(filter=pb.DeadLetterFilter(task=task), rate_per_second=20)
    limited = time.perf_counter() - started
    assert [m.result for m in messages] == ["replayed"] * 10
    assert 0.45 <= limited < 3.0, limited

    more = await report_many(dlq, 50, task=unique_task("unlimited"), queue=q)
    started = time.perf_counter()
    messages = await dlq.replay(ids=more)
    unlimited = time.perf_counter() - started
    assert [m.result for m in messages] == ["replayed"] * 50
    assert len(broker_messages(dlq.broker_url, q)) == 60
    print(
        f"10 replays at 20/s took {limited:.3f}s; "
        f"50 unlimited took {unlimited:.3f}s ({50 / unlimited:.0f}/s)"
    )
    assert ids


async def test_concurrent_replays_of_one_entry_enqueue_it_once(dlq: Dlq) -> None:
    q = queue()
    request = report_request(queue=q)
    await dlq.stub.ReportDeadLetter(request)

    results = await asyncio.gather(*(dlq.replay(ids=[request.job_id]) for _ in range(6)))

    outcomes = [m.result for (m,) in results]
    assert outcomes.count("replayed") == 1
    # The losers either waited on the entry's lock or saw it replayed already.
    assert all(o == "replayed" or o.startswith("skipped: not active") for o in outcomes)
    assert len(broker_messages(dlq.broker_url, q)) == 1
    audit = (await entry(dlq, request.job_id)).audit
    assert [a.action for a in audit] == ["dead_lettered", "replayed"]


async def test_a_job_that_already_succeeded_is_skipped(dlq: Dlq) -> None:
    q = queue()
    job_id = f"job-{uuid.uuid4()}"
    await LEDGER.insert_jobs(dlq.pool, [JobSpec(job_id, job_id, "demo.echo", q, {})])
    async with dlq.pool.acquire() as conn:  # as a delivery does: claim, succeed, release
        await LEDGER.lock_and_claim(conn, job_id)
        await LEDGER.complete(
            conn,
            job_id,
            {"ok": True},
            AttemptRecord(1, "w", datetime.now(UTC), 0.01, "succeeded"),
            unlock=True,
        )
    await dlq.stub.ReportDeadLetter(report_request(job_id, queue=q))

    dry = await dlq.replay(ids=[job_id], dry_run=True)
    real = await dlq.replay(ids=[job_id])

    assert [m.result for m in dry + real] == ["skipped: job already succeeded"] * 2
    assert broker_messages(dlq.broker_url, q) == []
    stored = await entry(dlq, job_id)
    assert stored.status == "active", "left for an operator to drop"
    assert [a.action for a in stored.audit] == ["dead_lettered"]
    job = await LEDGER.get_job(dlq.pool, job_id)
    assert job is not None and job.state is JobState.SUCCEEDED


async def test_a_key_reused_after_a_ledger_purge_is_not_replayed_over(dlq: Dlq) -> None:
    q = queue()
    key = f"key-{uuid.uuid4()}"
    newer = f"job-{uuid.uuid4()}"
    await LEDGER.insert_jobs(dlq.pool, [JobSpec(newer, key, "demo.echo", q, {})])
    request = report_request(queue=q, idempotency_key=key)
    await dlq.stub.ReportDeadLetter(request)

    (step,) = await dlq.replay(ids=[request.job_id])

    assert step.result == f"skipped: the idempotency key now belongs to job {newer} in the ledger"
    assert broker_messages(dlq.broker_url, q) == []
    assert (await entry(dlq, request.job_id)).status == "active"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give ids or a filter to replay (an empty filter selects every active entry)"),
        (
            {"ids": ["a"], "filter": pb.DeadLetterFilter(task="demo.echo")},
            "give either ids or filter to replay, not both",
        ),
        ({"ids": [f"id-{i}" for i in range(100_000)]}, "at most 10000 ids per call, not 100000"),
        ({"ids": [f"id-{i}" for i in range(10_001)]}, "at most 10000 ids per call, not 10001"),
        ({"ids": ["ok", ""]}, "ids is required"),
        ({"ids": ["a"], "rate_per_second": -1}, "rate_per_second must be 0 (no limit)"),
        (
            {"filter": pb.DeadLetterFilter(status="dropped")},
            "a replay filter selects active entries only: leave filter.status empty or set it "
            'to "active", not "dropped"',
        ),
        ({"filter": pb.DeadLetterFilter(reason="nope")}, 'filter.reason "nope" is not one of'),
    ],
)
async def test_bad_replay_requests_are_invalid_argument(
    dlq: Dlq, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dlq.replay(**fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_broker_down_mid_replay_leaves_the_rest_active(
    database_url: str, catalog: Catalog, tmp_path: Path
) -> None:
    server = start_redis(tmp_path, persistence=False)
    try:
        async with dlq_server(database_url, server.url, catalog) as d:
            task = unique_task("outage")
            ids = await report_many(d, 3, task=task)
            call = d.stub.ReplayDeadLetters(
                pb.ReplayDeadLettersRequest(
                    filter=pb.DeadLetterFilter(task=task), rate_per_second=2
                ),
                metadata=d.admin(),
            )
            results = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for message in call:
                    results.append(message.result)
                    server.stop()  # Redis goes away after the first replay
            assert results == ["replayed"]
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = err.value.details() or ""
            assert details.startswith("the broker is unavailable (")
            assert f"1 of 3 entries were replayed before {ids[1]}" in details
            assert [(await entry(d, i)).status for i in ids] == ["replayed", "active", "active"]
            # Rolled back with the entry: the ledger never saw the failed replay.
            assert await LEDGER.get_job(d.pool, ids[1]) is None
    finally:
        server.stop()


class ProbingPublisher(Publisher):
    """A real publisher that first looks at the job from outside the replay's transaction."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        super().__init__(redis_url)
        self.database_url = database_url
        self.seen: list[tuple[bool, str | None]] = []

    async def publish(
        self, specs: Sequence[JobSpec], failures: Mapping[str, int] | None = None
    ) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            for spec in specs:
                # What a delivery would find at this moment: can it take the job's lock, and
                # which state does it see?
                free = await conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", spec.job_id
                )
                state = await conn.fetchval(
                    "SELECT state FROM relayq_jobs WHERE job_id = $1", spec.job_id
                )
                self.seen.append((free, state))
        finally:
            await conn.close()
        await super().publish(specs, failures)


async def test_a_delivery_cannot_see_the_job_before_the_replay_commits(
    database_url: str, quiet_broker_url: str, catalog: Catalog
) -> None:
    settings = DlqSettings()
    publisher = ProbingPublisher(quiet_broker_url, database_url)
    pool = await create_pool(database_url, max_size=4)
    running = await start(build_servicer(pool, publisher, settings), settings, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        stub = dead_letter_pb2_grpc.DeadLetterServiceStub(channel)
        job_id = f"job-{uuid.uuid4()}"
        await LEDGER.insert_jobs(pool, [JobSpec(job_id, job_id, "demo.echo", queue(), {})])
        await LEDGER.fail(pool, job_id, JobState.DEAD_LETTERED, "boom")
        await stub.ReportDeadLetter(report_request(job_id))
        results = [
            m.result
            async for m in stub.ReplayDeadLetters(pb.ReplayDeadLettersRequest(ids=[job_id]))
        ]
        assert results == ["replayed"]
        # While the message went out, the job's lock was held and the re-open not yet visible:
        # a delivery waits for the commit instead of finding the job dead-lettered.
        assert publisher.seen == [(False, "dead_lettered")]
        job = await LEDGER.get_job(pool, job_id)
        assert job is not None and job.state is JobState.QUEUED
    finally:
        await channel.close(None)
        await running.stop(0)
        await pool.close()
        await publisher.close()


async def test_a_job_held_by_a_worker_is_skipped_and_left_alone(
    dlq: Dlq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_module, "LOCK_TIMEOUT", "200ms")
    q = queue()
    job_id = f"job-{uuid.uuid4()}"
    await LEDGER.insert_jobs(dlq.pool, [JobSpec(job_id, job_id, "demo.echo", q, {})])
    await LEDGER.fail(dlq.pool, job_id, JobState.DEAD_LETTERED, "boom")
    await dlq.stub.ReportDeadLetter(report_request(job_id, queue=q))
    holder = await asyncpg.connect(dlq.database_url)
    try:
        await LEDGER.lock_job(holder, job_id)  # as a delivery of the job does
        (step,) = await dlq.replay(ids=[job_id])
        assert step.result == "skipped: a worker holds the job; replay again shortly"
        assert (await entry(dlq, job_id)).status == "active"
        assert broker_messages(dlq.broker_url, q) == []
        job = await LEDGER.get_job(dlq.pool, job_id)
        assert job is not None and job.state is JobState.DEAD_LETTERED
    finally:
        await holder.close()
    (step,) = await dlq.replay(ids=[job_id])
    assert step.result == "replayed"
