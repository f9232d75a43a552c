"""``relayq-ledger waiting``: the runbook's way from an incident to the ids of the jobs it
delays, against a real PostgreSQL (a database of its own, so the list is exactly what the test
put there)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from relayq_core.db.ledger import JobLedger, create_pool
from relayq_core.db.migrate import migrate_ledger
from relayq_core.jobs import JobSpec
from relayq_devstack.ports import free_port
from relayq_devstack.postgres import PostgresServer
from tests.conftest import BIN, service_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def ledger_url(postgres: PostgresServer) -> str:
    postgres.psql("DROP DATABASE IF EXISTS ledger_cli_tests", database="postgres")
    postgres.psql("CREATE DATABASE ledger_cli_tests", database="postgres")
    url = postgres.url_for("ledger_cli_tests")
    asyncio.run(migrate_ledger(url))
    return url


def ledger(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "relayq-ledger"), *args],
        env=service_env(url, "redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_waiting_lists_unfinished_jobs_longest_waiting_first(ledger_url: str) -> None:
    pool = await create_pool(ledger_url, max_size=2)
    try:
        specs = [JobSpec(f"wait-{n}", f"key-{n}", "demo.echo", "default", {}) for n in range(4)]
        await JobLedger().insert_jobs(pool, specs)
        # wait-0: published 1 min ago; wait-1: never published, 5 min; wait-2: a retry due
        # 3 min ago; wait-3: done (not listed).
        await pool.execute(
            "UPDATE relayq_jobs SET created_at = now() - interval '1 min', enqueued_at = now()"
            " WHERE job_id = 'wait-0'"
        )
        await pool.execute(
            "UPDATE relayq_jobs SET created_at = now() - interval '5 min' WHERE job_id = 'wait-1'"
        )
        await pool.execute(
            "UPDATE relayq_jobs SET state = 'retrying', enqueued_at = now(),"
            " next_attempt_at = now() - interval '3 min' WHERE job_id = 'wait-2'"
        )
        await pool.execute("UPDATE relayq_jobs SET state = 'succeeded' WHERE job_id = 'wait-3'")
    finally:
        await pool.close()

    done = await asyncio.to_thread(ledger, ledger_url, "waiting", "--json")
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)
    assert [(j["job_id"], j["state"], j["published"]) for j in jobs] == [
        ("wait-1", "queued", False),
        ("wait-2", "retrying", True),
        ("wait-0", "queued", True),
    ]
    assert 300 <= jobs[0]["waited_seconds"] < 360 and 180 <= jobs[1]["waited_seconds"] < 240
    assert jobs[0]["idempotency_key"] == "key-1"

    table = await asyncio.to_thread(ledger, ledger_url, "waiting", "--limit", "2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("JOB_ID") and lines[1].startswith("wait-1 ")
    assert lines[2].startswith("wait-2 ") and lines[-1] == "(2 unfinished jobs shown)"


async def test_an_unreachable_database_is_said_and_fails() -> None:
    """The PostgreSQL-down runbook reads this line: the cause, and a failing exit."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/relayq"
    for command in ("waiting", "stats"):
        done = await asyncio.to_thread(ledger, dead, command)
        assert done.returncode == 1, done.stdout
        assert "relayq-ledger: cannot reach the database" in done.stderr
