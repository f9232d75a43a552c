"""Per-job costs from the servers' own counters: PostgreSQL statements and Redis commands.

Each is reset just before a run and read just after, then divided by the jobs the run did.
PostgreSQL counts come from ``pg_stat_statements`` (every statement a client sent, ``BEGIN`` and
``COMMIT`` included, so one call is one round trip) and ``pg_stat_database`` (transactions);
Redis counts from ``INFO commandstats``. The bench's own queries carry a marker and are left out.

One exception to "a statement is a round trip": asyncpg resets a connection released to its pool
with one simple query of four statements (``SELECT pg_advisory_unlock_all(); CLOSE ALL;
UNLISTEN *; RESET ALL``), so round trips are statements minus three per ``RESET ALL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

MARK = "/* relayq-bench */"


@dataclass
class PgSnapshot:
    """``pg_stat_database`` counters at one moment."""

    commits: int
    rollbacks: int


@dataclass
class Costs:
    """What a run cost the servers, in all."""

    statements: dict[str, int] = field(default_factory=dict)
    transactions: int = 0
    redis_commands: dict[str, int] = field(default_factory=dict)

    def per_job(self, jobs: int) -> dict[str, Any]:
        """The same per job, with the busiest statements and commands first."""
        n = max(jobs, 1)
        top = sorted(self.statements.items(), key=lambda kv: -kv[1])
        cmds = sorted(self.redis_commands.items(), key=lambda kv: -kv[1])
        statements = sum(self.statements.values())
        resets = sum(c for q, c in self.statements.items() if q.strip().upper() == "RESET ALL")
        # Foreign-key checks run inside the server (RI triggers), not as client round trips;
        # they show up only where pg_stat_statements.track is 'all'.
        nested = sum(c for q, c in self.statements.items() if q.startswith("SELECT 1 FROM ONLY"))
        return {
            "pg_statements_per_job": statements / n,
            "pg_round_trips_per_job": (statements - nested - 3 * resets) / n,
            "pg_pool_resets_per_job": resets / n,
            "pg_transactions_per_job": self.transactions / n,
            "pg_top_statements": [
                {"query": " ".join(q.split())[:160], "per_job": c / n} for q, c in top[:12]
            ],
            "redis_commands_per_job": sum(self.redis_commands.values()) / n,
            "redis_top_commands": [{"command": k, "per_job": c / n} for k, c in cmds[:12]],
        }


async def _pg_snapshot(conn: asyncpg.Connection) -> PgSnapshot:
    row = await conn.fetchrow(
        f"{MARK} SELECT sum(xact_commit)::bigint AS c, sum(xact_rollback)::bigint AS r "
        "FROM pg_stat_database"
    )
    assert row is not None
    return PgSnapshot(int(row["c"]), int(row["r"]))


class CostMeter:
    """Resets the counters, then reads what a run cost."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self._before: PgSnapshot | None = None

    async def reset(self) -> None:
        """Zeroes the statement and command counters; remembers the transaction count."""
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(f"{MARK} SELECT pg_stat_statements_reset()")
            self._before = await _pg_snapshot(conn)
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            await client.config_resetstat()
        finally:
            await client.aclose()

    async def read(self) -> Costs:
        """What was spent since :meth:`reset`."""
        costs = Costs()
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                f"{MARK} SELECT query, sum(calls)::bigint AS calls FROM pg_stat_statements "
                "GROUP BY query"
            )
            after = await _pg_snapshot(conn)
        finally:
            await conn.close()
        for row in rows:
            query = str(row["query"])
            if MARK in query or "pg_stat_statements" in query:
                continue
            costs.statements[query] = costs.statements.get(query, 0) + int(row["calls"])
        if self._before is not None:
            costs.transactions = (after.commits - self._before.commits) + (
                after.rollbacks - self._before.rollbacks
            )
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            stats: dict[str, Any] = await client.info("commandstats")
        finally:
            await client.aclose()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name in {"config", "info"}:
                continue
            calls = value.get("calls", 0) if isinstance(value, dict) else 0
            costs.redis_commands[name] = int(calls)
        return costs
