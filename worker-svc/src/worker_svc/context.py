"""What a handler gets besides its payload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from asyncpg.transaction import Transaction

JsonObject = dict[str, Any]


class JobContext:
    """The job's identity, and the transaction its outcome is recorded in.

    ``await ctx.db()`` is the connection inside that transaction: an effect written through it
    commits together with the job's success, or not at all. The transaction begins at the first
    ``db()`` call, so a handler that never touches Postgres costs no ``BEGIN``/``COMMIT``. For
    effects outside Postgres, pass ``idempotency_key`` to the downstream system
    (docs/idempotency.md); ``ctx.http()`` is the process's HTTP client for that.
    """

    __slots__ = (
        "_conn",
        "_http",
        "_transaction",
        "attempt",
        "idempotency_key",
        "job_id",
        "task",
    )

    def __init__(
        self,
        job_id: str,
        idempotency_key: str,
        task: str,
        attempt: int,
        conn: asyncpg.Connection,
        http: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self.job_id = job_id
        self.idempotency_key = idempotency_key
        self.task = task
        self.attempt = attempt
        self._conn = conn
        self._http = http
        self._transaction: Transaction | None = None

    def http(self) -> httpx.AsyncClient:
        """The process's HTTP client: pooled connections, the worker's timeouts
        (``RELAYQ_WORKER_HTTP_*``), no redirects followed."""
        if self._http is None:
            raise RuntimeError("this job context has no HTTP client")
        return self._http()

    async def db(self) -> asyncpg.Connection:
        """The connection inside the job's transaction (begun on the first call)."""
        if self._transaction is None:
            # Kept before BEGIN is sent: if a cancellation cuts the BEGIN short, the runner still
            # knows a transaction may be open and rolls it back.
            self._transaction = self._conn.transaction()
            await self._transaction.start()
        return self._conn

    @property
    def transaction(self) -> Transaction | None:
        """The job's transaction, if the handler began it (the runner commits or rolls back)."""
        return self._transaction
