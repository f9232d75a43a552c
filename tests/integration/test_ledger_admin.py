"""``relayq-ledger jobs``: the job ids an incident touches, from an operator's terminal.

The real console script against a database of the test's own, so every row it prints is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.jobs import JobSpec
from relayq_devstack.postgres import PostgresServer
from tests.integration.dlq_fixtures import fresh_database

pytestmark = pytest.mark.integration

LEDGER = JobLedger()
SCRIPT = str(Path(sys.executable).parent / "relayq-ledger")


def ledger_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYQ_")}
    env["RELAYQ_DATABASE_URL"] = database_url
    return subprocess.run(
        [SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def record(conn: asyncpg.Connection, task: str, *, published: bool) -> str:
    job_id = f"ledger-{uuid.uuid4()}"
    await LEDGER.insert_jobs(conn, [JobSpec(job_id, job_id, task, "default", {})])
    if published:
        await LEDGER.mark_enqueued(conn, [job_id])
    return job_id


@pytest.mark.asyncio(loop_scope="session")
async def test_jobs_lists_each_unfinished_job_oldest_first_with_why(
    postgres: PostgresServer,
) -> None:
    url = await fresh_database(postgres)
    conn = await connect(url)
    try:
        waiting = await record(conn, "demo.echo", published=True)
        unpublished = await record(conn, "demo.charge", published=False)
        done = await record(conn, "demo.echo", published=True)
        await conn.execute("UPDATE relayq_jobs SET state = 'succeeded' WHERE job_id = $1", done)
    finally:
        await conn.close()

    table = ledger_cli(url, "jobs")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [waiting, unpublished], table.stdout
    assert "waiting for a worker" in lines[1] and "never published" in lines[2], table.stdout

    only = ledger_cli(url, "jobs", "--task", "demo.charge", "--json")
    assert only.returncode == 0, only.stderr
    rows = json.loads(only.stdout)
    assert [(r["job_id"], r["state"], r["why"]) for r in rows] == [
        (unpublished, "queued", "never published")
    ]


def test_jobs_names_the_cause_when_the_database_is_unreachable() -> None:
    answer = ledger_cli("postgresql://nobody@127.0.0.1:1/none", "jobs")
    assert answer.returncode != 0
    assert answer.stderr.strip().startswith("relayq-ledger: cannot reach the database"), (
        answer.stderr
    )
    assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr


def test_jobs_refuses_a_bad_limit_in_one_line() -> None:
    answer = ledger_cli("postgresql://nobody@127.0.0.1:1/none", "jobs", "--limit", "0")
    assert answer.returncode == 2
    assert "--limit must be positive" in answer.stderr
