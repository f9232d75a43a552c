"""worker-svc's own tables (the demo handlers' effects), migrated at worker start-up."""

from __future__ import annotations

from pathlib import Path

from relayq_core.db.ledger import connect
from relayq_core.db.migrate import apply_migrations

MIGRATIONS = Path(__file__).with_name("migrations")


async def migrate(dsn: str) -> list[str]:
    """Applies worker-svc's migrations (idempotent; safe from many nodes at once)."""
    conn = await connect(dsn)
    try:
        return await apply_migrations(conn, "worker", MIGRATIONS)
    finally:
        await conn.close()
