"""Property: ``demo.transfer`` is applied once under N random retries, duplicates and crashes.

Each example records one job, then replays a random history of deliveries against the real
ledger in PostgreSQL with the real delivery protocol (``worker_svc.runner``): plain deliveries,
handler failures before the commit, a worker "killed" mid-transaction (its connection cut),
acknowledgements lost after the commit (so the message comes back), and two deliveries racing.
Delivery is at-least-once, so the history ends with deliveries until one is acknowledged. However
the history goes, the transfer is in the journal once, the two balances moved by its amount
once, and the job succeeded once.

``demo.transfer`` does not deduplicate by itself (no unique key on the journal, balances that
add up), so a double application shows here; ``test_the_property_fails_without_the_claim`` runs
the same histories with the claim skipped (the worker's test-only switch) and expects it to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayq_core.db.ledger import UNAVAILABLE_ERRORS, JobLedger, connect
from relayq_core.jobs import JobSpec, JobState
from relayq_core.retry import RetryPolicy
from worker_svc.context import JobContext, JsonObject
from worker_svc.handlers import demo
from worker_svc.runner import Decision, Deferred, Delivery, Done, Interrupted, handle
from worker_svc.runtime import DeliveryLimits, Runtime

pytestmark = pytest.mark.integration

STEPS = ["deliver", "fail_before_commit", "killed_mid_transaction", "ack_lost", "race"]
ledger = JobLedger()


class InjectedFailure(Exception):
    """A handler failure the test injects."""


def failing_after_effect(kind: str) -> Any:
    async def handler(ctx: JobContext, payload: JsonObject) -> Any:
        await demo.transfer(ctx, payload)  # the effect is written, but not yet committed
        if kind == "killed":
            (await ctx.db()).terminate()  # as if the worker process were SIGKILLed here
        raise InjectedFailure("injected after the effect, before the commit")

    return handler


#: What a delivery raises when its connection is cut (as when its worker is SIGKILLed).
DIED: tuple[type[BaseException], ...] = (Interrupted, *UNAVAILABLE_ERRORS)

# Retries never run out in these histories: the property is about repeats, not the DLQ; and
# they come due at once (a retry's message arriving before its time would only wait).
POLICY = RetryPolicy(
    base_delay_seconds=0.001, max_delay_seconds=0.001, max_retries=100, max_worker_losses=100
)
#: A cut connection ends its lease at once in these histories (a real worker's lease outlives
#: its handler; here the "worker" is known to be dead).
LIMITS = DeliveryLimits(lease_seconds=3)


async def deliver(
    runtime: Runtime, delivery: Delivery, handler: Any = demo.transfer
) -> Decision | None:
    """One delivery as a worker makes it; None when the "worker" died mid-way (or the job may
    not run yet: the message would come back later, as it does here)."""
    try:
        decision, _ = await handle(runtime, ledger, delivery, handler, POLICY)
        return decision
    except DIED:
        await runtime.discard_connection()  # the "worker" died; its message will come back
        return None
    except Deferred:
        return None


async def expire_leases(conn: asyncpg.Connection, job_id: str) -> None:
    """The lease of a dead "worker" runs out (as it would after ``lease_seconds``)."""
    await conn.execute(
        "UPDATE relayq_jobs SET lease_until = now() - interval '1 second' WHERE job_id = $1",
        job_id,
    )


async def balances(conn: asyncpg.Connection, accounts: list[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT account, balance_cents FROM demo_accounts WHERE account = ANY($1::text[])",
        accounts,
    )
    return {r["account"]: int(r["balance_cents"]) for r in rows}


async def play(dsn: str, steps: list[str], amount: int, *, unsafe: bool = False) -> None:
    key = f"transfer-{uuid.uuid4()}"
    # Accounts of this example alone: their balances are exactly what this job moved.
    source, target = f"from-{key}", f"to-{key}"
    spec = JobSpec(
        job_id=str(uuid.uuid4()),
        idempotency_key=key,
        task="demo.transfer",
        queue="default",
        payload={"from": source, "to": target, "amount_cents": amount},
    )
    setup = await connect(dsn)
    limits = DeliveryLimits(lease_seconds=3, unsafe_skip_claim=unsafe)
    runtimes = [Runtime(dsn, limits), Runtime(dsn, limits)]
    try:
        assert await ledger.insert_jobs(setup, [spec]) == {spec.job_id}
        delivery = Delivery("demo.transfer", spec.job_id, key, spec.payload, "prop-worker")
        racing = Delivery(
            "demo.transfer", spec.job_id, key, {**spec.payload, "hold_ms": 5}, "prop-worker"
        )
        for step in steps:
            if step == "deliver" or step == "ack_lost":
                # ack_lost: the run commits, the broker never hears of it and delivers again
                await deliver(runtimes[0], delivery)
            elif step == "fail_before_commit":
                await deliver(runtimes[0], delivery, failing_after_effect("raise"))
            elif step == "killed_mid_transaction":
                await deliver(runtimes[0], delivery, failing_after_effect("killed"))
                await expire_leases(setup, spec.job_id)
            elif step == "race":
                await asyncio.gather(deliver(runtimes[0], racing), deliver(runtimes[1], delivery))
        # At-least-once: the message keeps coming back until a delivery is acknowledged.
        for _ in range(5):
            decision = await deliver(runtimes[0], delivery)
            if isinstance(decision, Done):
                break
            await asyncio.sleep(0.002)  # a retry comes due
        journal = await setup.fetchval(
            "SELECT count(*) FROM demo_transfers WHERE idempotency_key = $1", key
        )
        moved = await balances(setup, [source, target])
        job = await ledger.get_job(setup, spec.job_id)
        assert job is not None
        assert journal == 1, (steps, journal)
        assert moved == {source: -amount, target: amount}, (steps, moved)
        assert job.state is JobState.SUCCEEDED, steps
        assert [a.outcome for a in job.attempts].count("succeeded") == 1, steps
        assert job.result == {"from": source, "to": target, "amount_cents": amount}
    finally:
        for runtime in runtimes:
            await runtime.close()
        await setup.close()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(st.sampled_from(STEPS), min_size=0, max_size=8),
    amount=st.integers(min_value=1, max_value=10**9),
)
def test_transfer_is_applied_once_under_random_retries(
    database_url: str, steps: list[str], amount: int
) -> None:
    asyncio.run(play(database_url, steps, amount))


def test_the_property_fails_without_the_claim(database_url: str) -> None:
    """The same property against a deliberately broken worker (the claim skipped): a lost
    acknowledgement, so the message comes back after the transfer committed, must show as a
    second journal row and balances moved twice. If it did not, the property proves nothing."""
    with pytest.raises(AssertionError) as broken:
        asyncio.run(play(database_url, ["ack_lost"], 5, unsafe=True))
    assert "(['ack_lost'], 2)" in str(broken.value)


def test_a_killed_transaction_leaves_no_effect(database_url: str) -> None:
    """The building block the property leans on: a cut connection rolls the effect back."""

    async def check() -> None:
        key = f"killed-{uuid.uuid4()}"
        payload = {"from": f"a-{key}", "to": f"b-{key}", "amount_cents": 5}
        spec = JobSpec(str(uuid.uuid4()), key, "demo.transfer", "default", payload)
        conn: asyncpg.Connection = await connect(database_url)
        runtime = Runtime(database_url, LIMITS)
        try:
            await ledger.insert_jobs(conn, [spec])
            delivery = Delivery("demo.transfer", spec.job_id, key, spec.payload, "w")
            await deliver(runtime, delivery, failing_after_effect("killed"))
            count = "SELECT count(*) FROM demo_transfers WHERE idempotency_key = $1"
            assert await conn.fetchval(count, key) == 0
            job = await ledger.get_job(conn, spec.job_id)
            assert job is not None and job.state is JobState.RUNNING and job.attempt_count == 1
            # The dead "worker"'s lease has not run out: the job waits for it.
            assert await deliver(runtime, delivery) is None
            await expire_leases(conn, spec.job_id)
            assert isinstance(await deliver(runtime, delivery), Done)
            assert await conn.fetchval(count, key) == 1
            job = await ledger.get_job(conn, spec.job_id)
            assert job is not None and job.worker_losses == 1
            assert [a.outcome for a in job.attempts] == ["worker_lost", "succeeded"]
        finally:
            await runtime.close()
            await conn.close()

    asyncio.run(check())


def test_an_attempt_cut_by_a_database_outage_is_not_a_worker_loss(database_url: str) -> None:
    """A Postgres restart cuts every running attempt's connection; the worker is fine. The
    delivery that takes over says which attempt it resumes, and no worker loss is counted (two
    outages would otherwise make a healthy job look like a poison job)."""

    async def check() -> None:
        key = f"outage-{uuid.uuid4()}"
        payload = {"from": f"a-{key}", "to": f"b-{key}", "amount_cents": 7}
        spec = JobSpec(str(uuid.uuid4()), key, "demo.transfer", "default", payload)
        conn: asyncpg.Connection = await connect(database_url)
        runtime = Runtime(database_url, LIMITS)
        try:
            await ledger.insert_jobs(conn, [spec])
            delivery = Delivery("demo.transfer", spec.job_id, key, spec.payload, "w")
            with pytest.raises(Interrupted) as cut:
                await handle(runtime, ledger, delivery, failing_after_effect("killed"), POLICY)
            assert cut.value.attempt == 1
            await runtime.discard_connection()
            resumed = dataclasses.replace(delivery, resuming=cut.value.attempt)
            assert isinstance(await deliver(runtime, resumed), Done)
            job = await ledger.get_job(conn, spec.job_id)
            assert job is not None and job.state is JobState.SUCCEEDED
            assert job.worker_losses == 0
            assert [a.outcome for a in job.attempts] == ["interrupted", "succeeded"]
            # A stale copy of the mark (the message came back after another delivery claimed
            # the job) does not excuse a real loss.
            again = JobSpec(str(uuid.uuid4()), f"{key}-2", "demo.transfer", "default", spec.payload)
            await ledger.insert_jobs(conn, [again])
            first = Delivery(
                "demo.transfer", again.job_id, again.idempotency_key, again.payload, "w"
            )
            await deliver(runtime, first, failing_after_effect("killed"))  # attempt 1, cut
            await expire_leases(conn, again.job_id)
            await deliver(runtime, first, failing_after_effect("killed"))  # attempt 2: a loss
            stale = dataclasses.replace(first, resuming=1)
            # A stale resuming mark does not pass a lease that is still running...
            assert await deliver(runtime, stale) is None
            await expire_leases(conn, again.job_id)
            assert isinstance(await deliver(runtime, stale), Done)
            job = await ledger.get_job(conn, again.job_id)
            assert job is not None and job.worker_losses == 2
        finally:
            await runtime.close()
            await conn.close()

    asyncio.run(check())
