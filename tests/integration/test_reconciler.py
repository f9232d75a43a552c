"""The reconciler against a real Redis and PostgreSQL: lost messages come back, nothing else does.

Each test gets its own database and Redis (the reconciler sweeps whole queues), and plays the
worker itself where it needs one: popping messages off the list and recording outcomes, so
what the reconciler sees is exactly what the test arranged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.db.migrate import migrate_ledger
from relayq_core.jobs import JobSpec
from relayq_core.publish import Publisher
from relayq_core.reconcile import EPOCH_KEY, Deadlines, Reason, Reconciler
from relayq_core.settings import packaged_default
from relayq_devstack.ports import free_port
from relayq_devstack.postgres import PostgresServer
from relayq_devstack.process import ServiceProcess
from relayq_devstack.redis import RedisServer, start_redis
from tests.conftest import BIN, service_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

QUEUE = "default"
DEADLINE = 1.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("reconcile-redis"), persistence=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ledger_url(postgres: PostgresServer) -> str:
    """A database of its own: the reconciler acts on every job it finds."""
    postgres.psql("DROP DATABASE IF EXISTS reconcile_tests", database="postgres")
    postgres.psql("CREATE DATABASE reconcile_tests", database="postgres")
    url = postgres.url_for("reconcile_tests")
    asyncio.run(migrate_ledger(url))
    return url


@dataclass
class World:
    pool: asyncpg.Pool
    aredis: aioredis.Redis
    sync_redis: redis.Redis
    publisher: Publisher
    reconciler: Reconciler

    async def submit(self, n: int, task: str = "demo.echo") -> list[JobSpec]:
        """Records and publishes ``n`` jobs, as ingest does."""
        specs = [
            JobSpec(f"j-{uuid.uuid4()}", f"k-{uuid.uuid4()}", task, QUEUE, {"i": i})
            for i in range(n)
        ]
        ledger = JobLedger()
        await ledger.insert_jobs(self.pool, specs)
        await self.publisher.publish(specs)
        await ledger.mark_enqueued(self.pool, [s.job_id for s in specs])
        return specs

    def messages(self) -> list[dict[str, Any]]:
        """The queue's messages, oldest first: each job's kwargs."""
        out = []
        for raw in reversed(self.sync_redis.lrange(QUEUE, 0, -1)):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            out.append(body[1])
        return out

    async def consume(
        self, count: int, *, lose: frozenset[str] | set[str] = frozenset()
    ) -> list[str]:
        """Plays a worker: pops ``count`` messages and finishes their jobs (except ``lose``)."""
        done = []
        for _ in range(count):
            raw = cast(bytes | None, self.sync_redis.rpop(QUEUE))
            if raw is None:
                break
            job_id = json.loads(base64.b64decode(json.loads(raw)["body"]))[1]["job_id"]
            if job_id not in lose:
                await self.pool.execute(
                    "UPDATE relayq_jobs SET state = 'succeeded' WHERE job_id = $1", job_id
                )
                done.append(job_id)
        return done

    async def state(self, job_id: str) -> str:
        value: str = await self.pool.fetchval(
            "SELECT state FROM relayq_jobs WHERE job_id = $1", job_id
        )
        return value


@pytest_asyncio.fixture(loop_scope="session")
async def world(ledger_url: str, broker: RedisServer) -> AsyncIterator[World]:
    broker.flushall()
    pool = await create_pool(ledger_url, max_size=4)
    await pool.execute("TRUNCATE relayq_jobs CASCADE")
    client = aioredis.Redis.from_url(broker.url)
    publisher = Publisher(broker.url)
    reconciler = Reconciler(
        pool,
        client,
        publisher,
        [QUEUE],
        deadlines=Deadlines.all(DEADLINE),
        batch_size=50,
    )
    sync = broker.client()
    # The first cycle finds no epoch key (a new broker) and sweeps an empty ledger.
    assert await reconciler.cycle() == {}
    yield World(pool, client, sync, publisher, reconciler)
    sync.close()
    await publisher.close()
    await client.aclose()
    await pool.close()


async def test_flushall_mid_flight_republishes_every_queued_job(world: World) -> None:
    specs = await world.submit(120)
    assert await world.reconciler.cycle() == {}, "a healthy broker: nothing to do"
    done = await world.consume(20)  # 20 ran; 100 still waiting when Redis loses everything
    world.sync_redis.flushall()
    assert world.sync_redis.llen(QUEUE) == 0

    assert await world.reconciler.cycle() == {Reason.BROKER_DATA_LOST: 100}  # 2 batches of 50
    waiting = [s for s in specs if s.job_id not in done]
    back = {m["job_id"]: m for m in world.messages()}
    assert set(back) == {s.job_id for s in waiting}
    for spec in waiting:  # the original ids and key, payload and queue
        assert back[spec.job_id]["idempotency_key"] == spec.idempotency_key
        assert back[spec.job_id]["payload"] == spec.payload
    assert world.sync_redis.exists(EPOCH_KEY)
    assert await world.reconciler.cycle() == {}, "once per loss"
    assert world.sync_redis.llen(QUEUE) == 100


async def test_an_interrupted_sweep_resumes(world: World) -> None:
    await world.submit(30)
    world.sync_redis.flushall()
    # A reconciler that wrote the new epoch and died before sweeping: the key says so.
    world.sync_redis.set(
        EPOCH_KEY,
        json.dumps({"epoch": "e1", "since": "x", "sweep_before": "2999-01-01T00:00:00+00:00"}),
    )
    assert await world.reconciler.cycle() == {Reason.BROKER_DATA_LOST: 30}
    assert json.loads(world.sync_redis.get(EPOCH_KEY) or b"{}")["sweep_before"] is None


async def test_a_vanished_message_is_republished_once_the_queue_turned_over(
    world: World,
) -> None:
    specs = await world.submit(10)
    lost = specs[3]
    raw = next(
        r
        for r in world.sync_redis.lrange(QUEUE, 0, -1)
        if lost.job_id in base64.b64decode(json.loads(r)["body"]).decode()
    )
    assert world.sync_redis.lrem(QUEUE, 1, cast(str, raw)) == 1  # bytes work too

    assert await world.reconciler.cycle(scan=True) == {}  # notes the newest message
    await world.consume(5)
    assert await world.reconciler.cycle(scan=True) == {}  # not consumed past it yet
    await world.consume(10)  # the rest, up to the newest message noted
    assert await world.reconciler.cycle(scan=True) == {}  # turned over: the cutoff, next time
    assert await world.reconciler.cycle(scan=True) == {Reason.MESSAGE_MISSING: 1}
    assert [m["job_id"] for m in world.messages()] == [lost.job_id]
    assert await world.state(lost.job_id) == "queued"
    await world.consume(1)
    for _ in range(3):
        assert await world.reconciler.cycle(scan=True) == {}


async def test_a_healthy_backlog_is_never_touched(world: World) -> None:
    """Old jobs waiting behind a backlog, and retries queued behind it past their due time,
    are slow, not lost: re-publishing them would only add copies to the back of the queue."""
    specs = await world.submit(300)
    (retry,) = await world.submit(1, "demo.flaky")  # its retry message waits at the back
    await _set(
        world, retry.job_id, "state = 'retrying', next_attempt_at = now() - interval '1 min'"
    )
    before = world.sync_redis.lrange(QUEUE, 0, -1)
    for _ in range(4):  # a backlog nobody consumes: old, overdue, but nothing is missing
        assert await world.reconciler.cycle(scan=True) == {}
        await asyncio.sleep(DEADLINE / 2)
    assert world.sync_redis.lrange(QUEUE, 0, -1) == before
    consumed = 0
    while consumed < len(specs):  # a backlog draining slowly: still nothing to do
        consumed += len(await world.consume(40))
        assert await world.reconciler.cycle(scan=True) == {}
    assert world.sync_redis.llen(QUEUE) == 0


async def _set(world: World, job_id: str, sql: str, *args: Any) -> None:
    await world.pool.execute(f"UPDATE relayq_jobs SET {sql} WHERE job_id = $1", job_id, *args)


async def _attempt(world: World, job_id: str, n: int, outcome: str, countdown: float) -> None:
    await world.pool.execute(
        "INSERT INTO relayq_job_attempts (job_id, number, worker, started_at, duration_seconds,"
        " outcome, countdown_seconds) VALUES ($1, $2, 'w', now(), 0, $3, $4)",
        job_id,
        n,
        outcome,
        countdown,
    )


async def turnover(world: World) -> dict[Reason, int]:
    """Scans until a cutoff taken during this call has been applied (a scan notes the newest
    message, the next sees the list consumed past it, the one after acts on the cutoff; the
    first scan may still be finishing an earlier mark)."""
    done: dict[Reason, int] = {}
    for _ in range(4):
        for reason, n in (await world.reconciler.cycle(scan=True)).items():
            done[reason] = done.get(reason, 0) + n
    return done


async def test_a_lost_retry_is_republished_with_its_failures(world: World) -> None:
    """The worker holding the retry message reconnected (Celery drops held ETA messages) or
    died: the message left the list long ago and the retry is overdue."""
    (job,) = await world.submit(1, "demo.flaky")
    await world.consume(1, lose={job.job_id})
    # Two failures with countdowns after a replayed run that ended in a terminal failure: the
    # ledger counts the run's retry budget (failures = 2), and the republished message says so.
    for n, outcome, countdown in [(1, "failed", 0.5), (2, "failed", 0.0), (3, "failed", 1.0)]:
        await _attempt(world, job.job_id, n, outcome, countdown)
    await _attempt(world, job.job_id, 4, "failed", 2.0)
    await _set(
        world,
        job.job_id,
        "state = 'retrying', failures = 2, next_attempt_at = now() + interval '1 h'",
    )
    assert await turnover(world) == {}, "held by a worker until it is due"
    await _set(world, job.job_id, "next_attempt_at = now() - interval '5 s'")
    assert await turnover(world) == {Reason.RETRY_LOST: 1}
    (message,) = world.messages()
    assert message["job_id"] == job.job_id and message["failures"] == 2
    await world.consume(1, lose={job.job_id})
    assert await turnover(world) == {}, "its next attempt is due now, not overdue"


async def test_a_running_job_is_republished_only_when_nobody_holds_it(world: World) -> None:
    (job,) = await world.submit(1)
    await world.consume(1, lose={job.job_id})
    await _set(world, job.job_id, "state = 'running', updated_at = now() - interval '1 min'")
    holder = await world.pool.acquire()
    try:  # a live delivery holds the job's session lock, however long it runs
        await JobLedger().lock_job(holder, job.job_id)
        assert await turnover(world) == {}
        assert await turnover(world) == {}
        await JobLedger().unlock_job(holder, job.job_id)
    finally:
        await world.pool.release(holder)
    assert await turnover(world) == {Reason.WORKER_LOST: 1}
    assert [m["job_id"] for m in world.messages()] == [job.job_id]
    await world.consume(1, lose={job.job_id})
    assert await turnover(world) == {}, "its redelivery has not had time to run yet"


async def test_stalled_dead_letters_and_unpublished_submits(world: World) -> None:
    staged, unpublished = await world.submit(2)
    await world.consume(2, lose={staged.job_id, unpublished.job_id})
    await _set(
        world,
        staged.job_id,
        "state = 'retrying', pending_dead_letter = '{}'::jsonb, updated_at = now()",
    )
    await _set(world, unpublished.job_id, "enqueued_at = NULL, updated_at = now()")
    assert await turnover(world) == {}, "a worker touched it just now"
    await JobLedger().touch_staged_dead_letter(world.pool, staged.job_id)
    await asyncio.sleep(DEADLINE + 0.2)
    assert await world.reconciler.cycle() == {Reason.NEVER_PUBLISHED: 1}
    assert [m["job_id"] for m in world.messages()] == [unpublished.job_id]
    enqueued = await world.pool.fetchval(
        "SELECT enqueued_at FROM relayq_jobs WHERE job_id = $1", unpublished.job_id
    )
    assert enqueued is not None
    await world.consume(1)  # a worker runs it; the queue moves on
    assert await turnover(world) == {Reason.DEAD_LETTER_STALLED: 1}
    assert [m["job_id"] for m in world.messages()] == [staged.job_id]


async def test_a_failed_publish_leaves_the_claim_for_the_next_cycle(world: World) -> None:
    (job,) = await world.submit(1)
    await world.consume(1, lose={job.job_id})
    await _set(world, job.job_id, "enqueued_at = NULL, updated_at = now() - interval '1 min'")
    dead = Publisher(f"redis://127.0.0.1:{free_port()}/0")
    broken = Reconciler(world.pool, world.aredis, dead, [QUEUE], deadlines=Deadlines.all(DEADLINE))
    try:
        with pytest.raises(Exception):  # noqa: B017 (redis's ConnectionError and friends)
            await broken.cycle()
    finally:
        await dead.close()
    assert await world.reconciler.cycle() == {Reason.NEVER_PUBLISHED: 1}


def overdue(reason: Reason) -> tuple[float, float]:
    """The reconciler's overdue gauges for ``reason``: (jobs, oldest's wait in seconds)."""
    labels = {"reason": reason.value}
    jobs = REGISTRY.get_sample_value("relayq_reconciler_overdue_jobs", labels)
    oldest = REGISTRY.get_sample_value("relayq_reconciler_oldest_overdue_seconds", labels)
    assert jobs is not None and oldest is not None, reason
    return jobs, oldest


async def test_overdue_gauges_show_what_waits_for_repair_even_when_the_repair_fails(
    world: World,
) -> None:
    """JobsWaitingForRepair's signal: none of these jobs waits in the broker, so the queue's
    oldest-job age never sees them; the gauges do, measured before the cycle acts (a cycle
    whose publish fails, Redis down, still reports them)."""
    unpublished, retry, running = await world.submit(3)
    await world.consume(3, lose={unpublished.job_id, retry.job_id, running.job_id})
    await _set(
        world, unpublished.job_id, "enqueued_at = NULL, updated_at = now() - interval '5 min'"
    )
    await _set(
        world, retry.job_id, "state = 'retrying', next_attempt_at = now() - interval '7 min'"
    )
    await _set(world, running.job_id, "state = 'running', updated_at = now() - interval '9 min'")
    dead = Publisher(f"redis://127.0.0.1:{free_port()}/0")
    broken = Reconciler(world.pool, world.aredis, dead, [QUEUE], deadlines=Deadlines.all(DEADLINE))
    try:
        with pytest.raises(Exception):  # noqa: B017 (redis's ConnectionError and friends)
            await broken.cycle(scan=True)
    finally:
        await dead.close()
    jobs, oldest = overdue(Reason.NEVER_PUBLISHED)
    assert jobs == 1 and 300 <= oldest < 360
    jobs, oldest = overdue(Reason.RETRY_LOST)
    assert jobs == 1 and 420 <= oldest < 480
    await broken.scan_queues()  # abandoned deliveries are measured by the scan
    jobs, oldest = overdue(Reason.WORKER_LOST)
    assert jobs == 1 and 540 <= oldest < 600
    # Done (by workers, after a repair): the next measures find nothing left.
    await world.pool.execute(
        "UPDATE relayq_jobs SET state = 'succeeded', enqueued_at = now() WHERE job_id = ANY($1)",
        [unpublished.job_id, retry.job_id, running.job_id],
    )
    await world.reconciler.cycle(scan=True)
    for reason in (Reason.NEVER_PUBLISHED, Reason.RETRY_LOST, Reason.WORKER_LOST):
        assert overdue(reason) == (0, 0), reason


def reconciler_process(
    ledger_url: str, broker: RedisServer, log_dir: Path, port: int, **env: str
) -> ServiceProcess:
    """``relayq-reconciler`` serving /healthz and /metrics on ``port``, cycling every 0.2 s."""
    return ServiceProcess(
        "reconciler",
        [str(BIN / "relayq-reconciler")],
        log_path=log_dir / "reconciler.log",
        env=service_env(
            ledger_url,
            broker.url,
            RELAYQ_RECONCILER_PORT=str(port),
            RELAYQ_RECONCILER_INTERVAL_SECONDS="0.2",
            RELAYQ_CATALOG=str(packaged_default("tasks.toml")),
            **env,
        ),
        inherit_env=False,
    )


async def test_the_console_script_serves_health_and_metrics(
    ledger_url: str, broker: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    broker.flushall()
    proc = reconciler_process(ledger_url, broker, tmp_path, port)
    try:

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                    return r.status, r.read().decode()
            except OSError:
                return 0, ""

        proc.wait_healthy(lambda: get("/healthz")[0] == 200, timeout=20)
        assert json.loads(get("/healthz")[1])["status"] == "ok"

        def resets_reach(n: int) -> None:
            deadline = time.monotonic() + 10
            while f"relayq_reconciler_broker_resets_total {n}.0" not in get("/metrics")[1]:
                assert time.monotonic() < deadline, get("/metrics")[1]
                time.sleep(0.1)

        resets_reach(1)  # the broker was flushed before it started: a new epoch
        broker.flushall()
        resets_reach(2)
        assert "relayq_reconciler_requeued_total" in get("/metrics")[1]
        events = [json.loads(line)["event"] for line in proc.log_tail(200).splitlines()[1:]]
        assert "reconciler_started" in events and "broker_data_lost" in events
    finally:
        proc.stop(timeout=10)
    assert proc.returncode == 0


async def test_a_statement_stuck_behind_a_lock_fails_its_cycle_and_the_next_ones_run(
    ledger_url: str, broker: RedisServer, tmp_path: Path
) -> None:
    """Without a statement timeout a cycle waits as long as the lock is held, every rule with it,
    and nothing counts a failure: ReconcilerFailing could not fire."""
    port = free_port()
    proc = reconciler_process(
        ledger_url, broker, tmp_path, port, RELAYQ_RECONCILER_STATEMENT_TIMEOUT_SECONDS="0.5"
    )

    def metric(name: str) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                text = r.read().decode()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"{what}: {proc.log_tail(20)}"
            await asyncio.sleep(0.1)

    failures = 'relayq_reconciler_cycle_errors_total{source="postgres"}'
    cycles = "relayq_reconciler_cycle_seconds_count"
    locker = await asyncpg.connect(ledger_url)
    try:
        await until(lambda: metric(cycles) >= 2, "cycles before the lock")
        assert metric(failures) <= 0
        async with locker.transaction():
            await locker.execute("LOCK TABLE relayq_jobs IN ACCESS EXCLUSIVE MODE")
            await until(lambda: metric(failures) >= 2, "timed-out cycles under the lock")
        held_failures = metric(failures)
        after = metric(cycles)
        # The lock is gone: cycles succeed again and no more fail.
        await until(lambda: metric(cycles) >= after + 5, "cycles after the lock")
        assert metric(failures) <= held_failures + 1  # one may have been under way
        events = [json.loads(line) for line in proc.log_tail(400).splitlines()[1:]]
        timeouts = [
            e
            for e in events
            if e.get("event") == "reconcile_cycle_failed" and e["source"] == "postgres"
        ]
        assert timeouts and {e["error"] for e in timeouts} == {"TimeoutError"}
    finally:
        await locker.close()
        proc.stop(timeout=10)
    assert proc.returncode == 0
