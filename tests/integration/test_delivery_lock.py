"""The delivery protocol's two database calls (migration 0006), raced on purpose.

A second delivery waits for the job's lock while the first records its success in each of the
ways the runner can: by one autocommit statement that also releases the lock, or in the
handler's transaction followed by COMMIT and the unlock. In every case the waiting delivery must
find the job finished (a duplicate) and never count a worker loss or run it again; a delivery
cut off mid-run (its connection closed) must count one, but only once its lease has run out
(until then its worker may still be running the job, cut off from the database).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio

from relayq_core.db.ledger import Claim, JobLedger, NotYet, connect
from relayq_core.jobs import AttemptRecord, JobSpec

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEDGER = JobLedger()


@pytest_asyncio.fixture(loop_scope="session")
async def conns(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, ...]]:
    opened = [await connect(database_url) for _ in range(3)]
    yield tuple(opened)
    for conn in opened:
        if not conn.is_closed():
            await conn.close()


async def new_job(conn: asyncpg.Connection) -> str:
    job_id = f"lock-{uuid.uuid4()}"
    await LEDGER.insert_jobs(conn, [JobSpec(job_id, job_id, "demo.echo", "default", {})])
    return job_id


async def waiting_for_lock(observer: asyncpg.Connection, job_id: str) -> bool:
    """Whether some session waits for the job's advisory lock."""
    return bool(
        await observer.fetchval(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)",
            job_id,
        )
    )


async def second_delivery_while(
    conns: tuple[asyncpg.Connection, ...],
    finish: Callable[[asyncpg.Connection, str], Awaitable[None]],
    lease_seconds: float = 30.0,
) -> tuple[str, Claim | NotYet | None]:
    """Claims a job on conns[0], starts a second claim on conns[1], then runs ``finish`` on
    conns[0]; the second claim's outcome."""
    first, second, observer = conns
    job_id = await new_job(observer)
    claim = await LEDGER.lock_and_claim(first, job_id, lease_seconds=lease_seconds)
    assert isinstance(claim, Claim) and claim.attempt == 1 and not claim.abandoned
    waiter = asyncio.create_task(LEDGER.lock_and_claim(second, job_id))
    for _ in range(200):
        if await waiting_for_lock(observer, job_id):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the second delivery never waited for the lock")
    assert not waiter.done()
    await finish(first, job_id)
    result = await asyncio.wait_for(waiter, 10)
    await LEDGER.unlock_job(second, job_id)
    return job_id, result


def success(number: int = 1) -> AttemptRecord:
    return AttemptRecord(number, "w", datetime.now(UTC), 0.001, "succeeded")


async def state_of(conn: asyncpg.Connection, job_id: str) -> tuple[str, int, int]:
    row = await conn.fetchrow(
        "SELECT state, attempt_count, worker_losses FROM relayq_jobs WHERE job_id = $1", job_id
    )
    assert row is not None
    return row["state"], row["attempt_count"], row["worker_losses"]


async def test_a_success_that_releases_the_lock_itself(
    conns: tuple[asyncpg.Connection, ...],
) -> None:
    async def finish(conn: asyncpg.Connection, job_id: str) -> None:
        await LEDGER.complete(conn, job_id, {"ok": 1}, success(), unlock=True)

    job_id, second = await second_delivery_while(conns, finish)
    assert second is None  # a duplicate: the job had succeeded
    assert await state_of(conns[2], job_id) == ("succeeded", 1, 0)


async def test_a_success_in_the_handlers_transaction(
    conns: tuple[asyncpg.Connection, ...],
) -> None:
    async def finish(conn: asyncpg.Connection, job_id: str) -> None:
        async with conn.transaction():
            await LEDGER.complete(conn, job_id, {"ok": 1}, success(), unlock=False)
        await LEDGER.unlock_job(conn, job_id)

    job_id, second = await second_delivery_while(conns, finish)
    assert second is None
    assert await state_of(conns[2], job_id) == ("succeeded", 1, 0)


async def test_a_lock_released_before_the_commit_still_hides_nothing(
    conns: tuple[asyncpg.Connection, ...],
) -> None:
    # The lock goes before the success commits: the waiting claim gets the lock, then must wait
    # for the row (FOR UPDATE) and see the commit, not the 'running' it saw before.
    async def finish(conn: asyncpg.Connection, job_id: str) -> None:
        async with conn.transaction():
            await LEDGER.complete(conn, job_id, {"ok": 1}, success(), unlock=True)
            await asyncio.sleep(0.3)  # the waiter now holds the lock and waits for the row

    job_id, second = await second_delivery_while(conns, finish)
    assert second is None
    assert await state_of(conns[2], job_id) == ("succeeded", 1, 0)


async def test_a_delivery_whose_worker_died_is_a_worker_loss_once_its_lease_ran_out(
    conns: tuple[asyncpg.Connection, ...], database_url: str
) -> None:
    async def finish(conn: asyncpg.Connection, job_id: str) -> None:
        conn.terminate()  # as a SIGKILLed worker: no success, the session's lock goes with it

    job_id, second = await second_delivery_while(conns, finish, lease_seconds=1.0)
    # The lock is gone, the lease is not: the first worker may still be running the job.
    assert isinstance(second, NotYet) and second.why == "lease_held"
    assert 0 < second.seconds <= 1.0
    assert await state_of(conns[2], job_id) == ("running", 1, 0)
    await LEDGER.unlock_job(conns[1], job_id)
    await asyncio.sleep(second.seconds + 0.05)
    third = await LEDGER.lock_and_claim(conns[1], job_id)
    await LEDGER.unlock_job(conns[1], job_id)
    assert isinstance(third, Claim) and third.abandoned and third.attempt == 2
    assert third.worker_losses == 1
    assert await state_of(conns[2], job_id) == ("running", 2, 1)
