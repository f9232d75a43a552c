"""Ledger retention: finished jobs past the retention go, with their keys; nothing else does."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from relayq_core.db.ledger import JobLedger, connect
from relayq_core.db.retention import purge
from relayq_core.jobs import JobSpec

pytestmark = pytest.mark.integration


def test_purge_removes_only_old_finished_jobs(database_url: str) -> None:
    async def scenario() -> None:
        conn = await connect(database_url)
        ledger = JobLedger()
        specs = {
            name: JobSpec(
                f"ret-{name}-{uuid.uuid4()}",
                f"ret-{name}-{uuid.uuid4()}",
                "demo.echo",
                "default",
                {},
            )
            for name in ("old_done", "old_dead", "new_done", "old_queued")
        }
        try:
            await ledger.insert_jobs(conn, list(specs.values()))
            age = {
                "old_done": "40 days",
                "old_dead": "40 days",
                "new_done": "1 day",
                "old_queued": "40 days",
            }
            state = {
                "old_done": "succeeded",
                "old_dead": "dead_lettered",
                "new_done": "succeeded",
                "old_queued": "queued",
            }
            for name, spec in specs.items():
                finished = None if state[name] == "queued" else f"now() - interval '{age[name]}'"
                await conn.execute(
                    "UPDATE relayq_jobs SET state = $2,"
                    f" created_at = now() - interval '{age[name]}',"
                    f" finished_at = {finished or 'NULL'} WHERE job_id = $1",
                    spec.job_id,
                    state[name],
                )
            await purge(database_url, timedelta(days=30), batch=1)
            left = {
                r["job_id"]
                for r in await conn.fetch(
                    "SELECT job_id FROM relayq_jobs WHERE job_id = ANY($1::text[])",
                    [s.job_id for s in specs.values()],
                )
            }
            assert left == {specs["new_done"].job_id, specs["old_queued"].job_id}
            # The purged key is free again: a new job may use it.
            reused = JobSpec(
                str(uuid.uuid4()),
                specs["old_done"].idempotency_key,
                "demo.echo",
                "default",
                {"again": True},
            )
            assert await ledger.insert_jobs(conn, [reused]) == {reused.job_id}
        finally:
            await conn.close()

    asyncio.run(scenario())
