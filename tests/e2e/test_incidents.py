"""Incident rehearsals: six incidents, each injected into a real local stack, paged and resolved.

For each: the fault goes in; the test waits until the alert fires in the stack's real Prometheus
**and** its notification reaches the receiver Alertmanager posts to (the stack's alert sink);
then it runs the first commands of the alert's runbook section, as typed by an on-call engineer,
and checks that what they print names the cause and the affected job ids; then the fault goes
out and the resolution must reach the receiver too. The rule files are the committed ones,
their windows divided by ``TIME_SCALE`` (so a `for: 5m` is 5 s): the same expressions, sooner.

The figures (seconds from fault to firing, to notification, and from repair to resolution) go
to ``.relayq/rehearsals.json``, and docs/runbook.md quotes a run of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest
import redis

from relayq_devstack.envfile import read_env
from relayq_devstack.state import StackState, StatePaths
from tests.e2e.incidents import (
    BIN,
    REPO,
    Rehearsal,
    base_env,
    submit,
)

pytestmark = pytest.mark.e2e

#: Seconds an alert may take from fault to notification (scaled windows: 2 to 10 s of `for:`,
#: 1 s scrapes, Alertmanager's scaled group_wait), with room for a loaded CI machine.
PAGE_WITHIN = 120.0
RESOLVE_WITHIN = 120.0


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    state = tmp_path_factory.mktemp("incidents") / "stack"
    env = base_env(state)
    up = subprocess.run(
        [str(BIN / "relayq-stack"), "up", "--fast"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    r = Rehearsal(state, env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        r.stack = read_env(state / "stack.env")
        r.env.update(r.stack)
        # The stack's own start can fire a short ServiceDown at this scale: start quiet.
        deadline = time.time() + 90
        while any(a["labels"]["alertname"] != "Watchdog" for a in r.prometheus.firing()):
            assert time.time() < deadline, r.prometheus.firing()
            time.sleep(0.5)
        yield r
    finally:
        r.save_figures()
        subprocess.run(
            [str(BIN / "relayq-stack"), "down"],
            env=env,
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=False,
        )


def fixed(job_id: str) -> Callable[[int], str]:
    """The job id of a one-job submit."""
    return lambda _k: job_id


def ids(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def echo_jobs(r: Rehearsal, prefix: str, n: int) -> list[str]:
    accepted, refused = submit(
        r.stack["RELAYQ_INGEST_GRPC"],
        [("demo.echo", {"n": k}) for k in range(n)],
        lambda k: f"{prefix}-{k}",
    )
    assert not refused, refused
    return accepted


def test_all_workers_gone(rehearsal: Rehearsal) -> None:
    r = rehearsal
    fault = time.time()
    r.stop("worker")
    prefix = ids("nowork")
    waiting = echo_jobs(r, prefix, 5)
    timing = r.wait_paged("all workers gone", "NoWorkerConsuming", fault, PAGE_WITHIN)
    out = r.first_commands("NoWorkerConsuming")
    assert "worker" in out and ("dead" in out or "stopped" in out), out
    assert all(job_id in out for job_id in waiting), out
    cleared = time.time()
    r.start("worker")
    r.wait_resolved(timing, cleared, RESOLVE_WITHIN)


def test_dlq_flooding(rehearsal: Rehearsal) -> None:
    r = rehearsal
    prefix = ids("flood")
    fault = time.time()
    stop = threading.Event()
    sent: list[str] = []

    def flood() -> None:  # a producer whose payloads the handler refuses for good, 10 a second
        n = 0
        while not stop.is_set():
            accepted, _ = submit(
                r.stack["RELAYQ_INGEST_GRPC"],
                [("demo.fail", {"permanent": True, "message": f"bad order {n}"})],
                fixed(f"{prefix}-{n}"),
            )
            sent.extend(accepted)
            n += 1
            stop.wait(0.1)

    producer = threading.Thread(target=flood, daemon=True)
    producer.start()
    try:
        timing = r.wait_paged("DLQ flooding", "DLQFlooding", fault, PAGE_WITHIN)
        out = r.first_commands("DLQFlooding")
    finally:
        stop.set()
        producer.join(10)
    cleared = time.time()
    assert "demo.fail" in out and "permanent_error" in out, out
    shown = [job_id for job_id in sent if job_id in out]
    assert len(shown) >= 5, (len(sent), out)
    r.wait_resolved(timing, cleared, RESOLVE_WITHIN)


def test_redis_down(rehearsal: Rehearsal) -> None:
    r = rehearsal
    fault = time.time()
    r.stop("redis")
    prefix = ids("noredis")
    accepted = echo_jobs(r, prefix, 3)  # accepted into the ledger: ingest's outbox waits
    timing = r.wait_paged("Redis down", "RedisUnreachable", fault, PAGE_WITHIN)
    out = r.first_commands("RedisUnreachable")
    assert "redis" in out and ("dead" in out or "stopped" in out), out
    assert "Connection refused" in out or "Could not connect" in out or 'source="redis"} 0' in out
    assert all(job_id in out for job_id in accepted), out
    cleared = time.time()
    r.start("redis")
    r.wait_resolved(timing, cleared, RESOLVE_WITHIN)


def test_postgres_down(rehearsal: Rehearsal) -> None:
    r = rehearsal
    fault = time.time()
    r.stop("postgres")
    prefix = ids("nopg")
    accepted, refused = submit(
        r.stack["RELAYQ_INGEST_GRPC"],
        [("demo.echo", {"n": k}) for k in range(3)],
        lambda k: f"{prefix}-{k}",
    )
    assert not accepted and len(refused) == 3, (accepted, refused)
    timing = r.wait_paged("PostgreSQL down", "PostgresUnreachable", fault, PAGE_WITHIN)
    out = r.first_commands("PostgresUnreachable")
    assert "cannot reach the database" in out, out
    assert 'source="postgres"} 0' in out, out
    assert all(f"{prefix}-{k}" in out for k in range(3)), out  # the jobs turned away, by id
    cleared = time.time()
    r.start("postgres")
    r.wait_resolved(timing, cleared, RESOLVE_WITHIN)


def test_redis_data_loss(rehearsal: Rehearsal) -> None:
    r = rehearsal
    r.stop("worker")
    prefix = ids("lost")
    published = echo_jobs(r, prefix, 4)
    time.sleep(1.0)  # ingest's outbox hands them to Redis
    broker = redis.Redis.from_url(r.stack["RELAYQ_REDIS_URL"])
    try:
        fault = time.time()
        broker.flushall()  # Redis restarted without persistence: every message gone
    finally:
        broker.close()
    timing = r.wait_paged("Redis data loss", "BrokerDataLost", fault, PAGE_WITHIN)
    out = r.first_commands("BrokerDataLost")
    assert "broker_data_lost" in out, out
    assert all(job_id in out for job_id in published), out  # re-published, by id
    r.start("worker")
    cleared = time.time()
    r.wait_resolved(timing, cleared, RESOLVE_WITHIN + 60)  # its window is 15 m (15 s here)


def _ingest_backends(r: Rehearsal) -> set[int]:
    """The client ports of ingest's connections to PostgreSQL (its pool)."""
    state = StackState.load(StatePaths(r.state))
    assert state is not None
    ingest = next(c for c in state.components if c.name == "ingest")
    pg_port = urlsplit(r.stack["RELAYQ_DATABASE_URL"]).port
    process = psutil.Process(ingest.pid)
    procs = [process, *process.children(recursive=True)]
    return {
        c.laddr.port
        for p in procs
        for c in p.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == pg_port
    }


async def _read_only(r: Rehearsal, on: bool) -> None:
    """The ledger takes no writes for ingest's new sessions (a failover onto a replica): set
    for the database, and ingest's sessions ended so its pool opens new ones."""
    url = r.stack["RELAYQ_DATABASE_URL"]
    database = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET default_transaction_read_only = off")  # this session writes
        setting = (
            "SET default_transaction_read_only = on"
            if on
            else "RESET default_transaction_read_only"
        )
        await conn.execute(f'ALTER DATABASE "{database}" {setting}')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE client_port = ANY($1::int[])",
            list(_ingest_backends(r)),
        )
    finally:
        await conn.close()


def test_ingest_refusing(rehearsal: Rehearsal) -> None:
    r = rehearsal
    prefix = ids("refused")
    stop = threading.Event()
    refused_ids: list[str] = []

    def producer() -> None:  # a steady client, 10 submits a second
        n = 0
        while not stop.is_set():
            job_id = f"{prefix}-{n}"
            accepted, refused = submit(
                r.stack["RELAYQ_INGEST_GRPC"], [("demo.echo", {"n": n})], fixed(job_id)
            )
            if refused:
                refused_ids.append(job_id)
            n += 1
            stop.wait(0.1)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        time.sleep(2)  # some accepted first: the alert is about a share of the calls
        fault = time.time()
        asyncio.run(_read_only(r, True))
        timing = r.wait_paged("ingest refusing", "IngestRefusing", fault, PAGE_WITHIN)
        out = r.first_commands("IngestRefusing")
        cleared = time.time()
        asyncio.run(_read_only(r, False))
        assert "UNAVAILABLE" in out and "ReadOnlySQLTransactionError" in out, out
        assert refused_ids and sum(job_id in out for job_id in refused_ids) >= 5, out
        r.wait_resolved(timing, cleared, RESOLVE_WITHIN)
    finally:
        stop.set()
        thread.join(10)
        with contextlib.suppress(Exception):
            asyncio.run(_read_only(r, False))


def test_every_incident_was_rehearsed(rehearsal: Rehearsal) -> None:
    """The figures the closing notes quote: one row per incident, each paged and resolved."""
    rows = {t.incident: t for t in rehearsal.timings}
    assert set(rows) == {
        "all workers gone",
        "DLQ flooding",
        "Redis down",
        "PostgreSQL down",
        "Redis data loss",
        "ingest refusing",
    }, rows
    for t in rows.values():
        assert 0 < t.firing <= t.notified and t.resolved > 0, t
        print(  # noqa: T201 - the figures, in the test's output
            f"{t.incident:<18} {t.alert:<20} firing {t.firing:6.1f} s  notified {t.notified:6.1f} s"
            f"  resolved {t.resolved:6.1f} s after the repair"
        )
