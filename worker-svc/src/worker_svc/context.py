"""What a handler gets besides its payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class JobContext:
    """The job's identity and the transaction its outcome is recorded in.

    ``conn`` is inside that transaction: an effect written through it commits together with the
    job's success, or not at all. For effects outside Postgres, pass ``idempotency_key`` to the
    downstream system (docs/idempotency.md).
    """

    job_id: str
    idempotency_key: str
    task: str
    attempt: int
    conn: asyncpg.Connection
