"""What a handler gets besides its payload."""

from __future__ import annotations

from typing import Any

import asyncpg
from asyncpg.transaction import Transaction

JsonObject = dict[str, Any]


class JobContext:
    """The job's identity, and the transaction its outcome is recorded in.

    ``await ctx.db()`` is the connection inside that transaction: an effect written through it
    commits together with the job's success, or not at all. The transaction begins at the first
    ``db()`` call, so a handler that never touches Postgres costs no ``BEGIN``/``COMMIT``. For
    effects outside Postgres, pass ``idempotency_key`` to the downstream system
    (docs/idempotency.md).
    """

    __slots__ = ("_conn", "_transaction", "attempt", "idempotency_key", "job_id", "task")

    def __init__(
        self, job_id: str, idempotency_key: str, task: str, attempt: int, conn: asyncpg.Connection
    ) -> None:
        self.job_id = job_id
        self.idempotency_key = idempotency_key
        self.task = task
        self.attempt = attempt
        self._conn = conn
        self._transaction: Transaction | None = None

    async def db(self) -> asyncpg.Connection:
        """The connection inside the job's transaction (begun on the first call)."""
        if self._transaction is None:
            transaction = self._conn.transaction()
            await transaction.start()
            self._transaction = transaction
        return self._conn

    @property
    def transaction(self) -> Transaction | None:
        """The job's transaction, if the handler began it (the runner commits or rolls back)."""
        return self._transaction
