"""dlq-svc's named queries and numbered migrations load as the code expects."""

from __future__ import annotations

import re
from pathlib import Path

from dlq_svc import main
from relayq_core.db.migrate import discover
from relayq_core.db.queries import load_queries

PACKAGE = Path(main.__file__).parent


def test_every_query_the_code_uses_exists() -> None:
    for module, sql in (("store.py", "store.sql"), ("replay.py", "replay.sql")):
        source = (PACKAGE / module).read_text()
        used = set(re.findall(r'_Q\["([a-z_]+)"\]', source))
        defined = set(load_queries(PACKAGE / "sql" / sql))
        assert used and used <= defined, (module, used - defined)
        assert defined <= used, f"{sql} holds unused queries: {defined - used}"


def test_migrations_are_numbered_without_gaps() -> None:
    migrations = discover(main.MIGRATIONS)
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
