"""Named SQL queries, kept in ``.sql`` files and loaded by name.

A file holds several queries, each introduced by a ``-- name: <query_name>`` line.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
SQL_DIR = Path(__file__).with_name("sql")


def parse_queries(text: str) -> dict[str, str]:
    """Splits a ``.sql`` file into its named queries."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


@cache
def load_queries(path: Path) -> dict[str, str]:
    """The named queries of one file, read once per process."""
    return parse_queries(path.read_text(encoding="utf-8"))
