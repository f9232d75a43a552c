"""Per-process resources for running async job code from synchronous Celery tasks.

Each prefork child owns one event loop and one Postgres connection, made on first use after the
fork (never inherited from the parent), and remade when the connection has gone away.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg

from relayq_core.db.ledger import connect

T = TypeVar("T")


class Runtime:
    """The child process's loop and database connection."""

    def __init__(self, dsn: str, lock_wait_seconds: float = 10.0) -> None:
        self._dsn = dsn
        self._lock_wait_ms = int(lock_wait_seconds * 1000)
        self._pid = -1
        self._runner: asyncio.Runner | None = None
        self._conn: asyncpg.Connection | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` to completion on this process's loop."""
        if self._pid != os.getpid() or self._runner is None:
            # A forked child: the parent's loop and socket are not ours to use.
            self._runner = asyncio.Runner()
            self._conn = None
            self._pid = os.getpid()
        # Run in a copy of the caller's context: the Runner would otherwise reuse the context it
        # was created in, and every job would log the first job's ids.
        return self._runner.run(coro, context=contextvars.copy_context())

    async def connection(self) -> asyncpg.Connection:
        """The process's connection, reconnecting if it was closed or broken."""
        if self._conn is None or self._conn.is_closed():
            conn = await connect(self._dsn)
            # A delivery waits this long for another delivery of the same job, then defers.
            await conn.execute(f"SET lock_timeout = {self._lock_wait_ms}")
            self._conn = conn
        return self._conn

    async def discard_connection(self) -> None:
        """Drops a connection that failed mid-use, so the next job reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
