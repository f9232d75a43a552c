"""Numbered SQL migrations, applied in order, once, under an advisory lock.

Each owner (the shared job ledger, dlq-svc ...) keeps its migrations in its own folder of
``NNNN_name.sql`` files and applies them with :func:`apply_migrations`; the bookkeeping table
records ``(owner, version)`` so owners never step on each other's tables.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from relayq_core.logging import configure_logging, get_logger

log = get_logger(__name__)

LEDGER_MIGRATIONS = Path(__file__).with_name("migrations")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x72656C6179  # "relay": one lock for every owner's migrations

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS relayq_schema_migrations (
    owner      text NOT NULL,
    version    integer NOT NULL,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, version)
)
"""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    path: Path


def discover(directory: Path) -> list[Migration]:
    """The migrations in ``directory``, by version; refuses gaps, duplicates and stray files,
    and a folder with none (a package installed without its SQL must not "migrate" nothing)."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise ValueError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise ValueError(f"{mig.path}: expected version {expected:04d} (no gaps or repeats)")
    if not found:
        raise ValueError(f"{directory}: no NNNN_name.sql migrations here")
    return found


async def apply_migrations(conn: asyncpg.Connection, owner: str, directory: Path) -> list[str]:
    """Applies ``owner``'s pending migrations, each in its own transaction; returns their names."""
    migrations = discover(directory)
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(_BOOKKEEPING)
        done = {
            r["version"]
            for r in await conn.fetch(
                "SELECT version FROM relayq_schema_migrations WHERE owner = $1", owner
            )
        }
        for mig in migrations:
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(mig.path.read_text(encoding="utf-8"))
                await conn.execute(
                    "INSERT INTO relayq_schema_migrations (owner, version, name)"
                    " VALUES ($1, $2, $3)",
                    owner,
                    mig.version,
                    mig.name,
                )
            log.info("migration_applied", owner=owner, version=mig.version, migration=mig.name)
            applied.append(f"{owner}/{mig.version:04d}_{mig.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied


async def migrate_ledger(dsn: str) -> list[str]:
    """Applies the shared job ledger's migrations to the database at ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_migrations(conn, "ledger", LEDGER_MIGRATIONS)
    finally:
        await conn.close()


def main() -> None:
    """``relayq-migrate``: applies the job ledger's migrations (dlq-svc applies its own)."""
    from relayq_core.settings import CommonSettings

    settings = CommonSettings()
    parser = argparse.ArgumentParser(description="Apply relayq's job-ledger migrations.")
    parser.add_argument("--database-url", default=settings.database_url)
    args = parser.parse_args()
    configure_logging("migrate", level=settings.log_level, json=settings.log_json)
    applied = asyncio.run(migrate_ledger(args.database_url))
    log.info("migrations_done", applied=len(applied))
