"""Named queries and numbered migrations load as the code expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayq_core.db.migrate import LEDGER_MIGRATIONS, discover
from relayq_core.db.queries import SQL_DIR, load_queries, parse_queries


def test_parse_queries_splits_by_name() -> None:
    queries = parse_queries("-- name: one\nSELECT 1;\n\n-- name: two\nSELECT 2;\n")
    assert queries == {"one": "SELECT 1", "two": "SELECT 2"}


def test_a_query_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;\n")


def test_every_ledger_query_the_code_uses_exists() -> None:
    import re

    source = (SQL_DIR.parent / "ledger.py").read_text()
    used = set(re.findall(r'_Q\["([a-z_]+)"\]', source))
    assert used and used <= set(load_queries(SQL_DIR / "ledger.sql"))


def test_ledger_migrations_are_numbered_without_gaps() -> None:
    migrations = discover(LEDGER_MIGRATIONS)
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["0001_a.sql", "0003_c.sql"], "expected version 0002"),
        (["1_a.sql"], "NNNN_name.sql"),
        ([], "no NNNN_name.sql migrations"),
    ],
)
def test_discover_refuses_gaps_bad_names_and_an_empty_folder(
    tmp_path: Path, names: list[str], problem: str
) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(ValueError, match=problem):
        discover(tmp_path)
