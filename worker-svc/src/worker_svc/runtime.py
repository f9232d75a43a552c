"""Per-process resources for running async job code from synchronous Celery tasks.

Each prefork child owns one event loop, one PostgreSQL connection (the delivery's: it holds the
job's lock and carries the handler's transaction), an HTTP client for handlers, and an attempt
supervisor (worker_svc/supervisor.py). All are made on first use after the fork (never
inherited from the parent) and remade when they have gone away.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import httpx

from relayq_core.db.ledger import JobLedger, connect
from worker_svc.supervisor import Supervisor, kill_this_process

T = TypeVar("T")


@dataclass(frozen=True)
class DeliveryLimits:
    """How deliveries of this process hold jobs and stop handlers (worker settings)."""

    #: A delivery waits this long for another delivery of the same job, then defers.
    lock_wait_seconds: float = 10.0
    #: The running attempt's lease (docs/reliability.md).
    lease_seconds: float = 15.0
    #: A handler this long past its time limit is stopped by killing the process.
    kill_grace_seconds: float = 10.0
    #: TEST ONLY: deliveries skip the job's lock and claim (worker_svc.config).
    unsafe_skip_claim: bool = False


class StopSwitch:
    """How a running handler is stopped from outside: its time limit, the loss of the
    delivery's connection, or the supervisor. The first reason given wins."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._timeout: asyncio.Timeout | None = None

    def attach(self, timeout: asyncio.Timeout | None) -> None:
        """The handler's ``asyncio.timeout`` while it runs (None once it has returned):
        stopping expires it now."""
        self._timeout = timeout

    def request(self, reason: str) -> None:
        """Stops the handler (on the loop's thread) with ``reason``; once it has returned,
        only the reason is kept."""
        if self.reason is not None:
            return
        self.reason = reason
        timeout = self._timeout
        if timeout is not None and not timeout.expired():
            timeout.reschedule(asyncio.get_running_loop().time())


class Runtime:
    """The child process's loop, connection, HTTP client and supervisor."""

    def __init__(
        self,
        dsn: str,
        limits: DeliveryLimits | None = None,
        *,
        http_timeout_seconds: float = 10.0,
        http_connect_timeout_seconds: float = 5.0,
        kill: Callable[[], None] = kill_this_process,
    ) -> None:
        self._dsn = dsn
        self.limits = limits or DeliveryLimits()
        self._http_timeout = httpx.Timeout(
            http_timeout_seconds, connect=http_connect_timeout_seconds
        )
        self._kill = kill
        self._pid = -1
        self._runner: asyncio.Runner | None = None
        self._conn: asyncpg.Connection | None = None
        self._http: httpx.AsyncClient | None = None
        self._supervisor: Supervisor | None = None
        #: The running attempt's stop switch (the connection's loss stops its handler).
        self.attempt: StopSwitch | None = None

    def _forked(self) -> bool:
        """Whether this is a new process (a forked child): the parent's resources are not ours."""
        if self._pid == os.getpid():
            return False
        self._runner = None
        self._conn = None
        self._http = None
        self._supervisor = None
        self._pid = os.getpid()
        return True

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` to completion on this process's loop."""
        self._forked()
        if self._runner is None:
            self._runner = asyncio.Runner()
        # Run in a copy of the caller's context: the Runner would otherwise reuse the context it
        # was created in, and every job would log the first job's ids.
        return self._runner.run(coro, context=contextvars.copy_context())

    async def connection(self) -> asyncpg.Connection:
        """The process's connection, reconnecting if it was closed or broken."""
        self._forked()
        if self._conn is None or self._conn.is_closed():
            conn = await connect(self._dsn)
            lock_wait_ms = int(self.limits.lock_wait_seconds * 1000)
            await conn.execute(f"SET lock_timeout = {lock_wait_ms}")
            # A connection that dies mid-attempt takes the job's lock with it: stop the handler
            # at once (when the loop is free to notice; the supervisor covers the rest).
            conn.add_termination_listener(self._connection_lost)
            self._conn = conn
        return self._conn

    def _connection_lost(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn and self.attempt is not None:
            self.attempt.request("connection_lost")

    async def discard_connection(self) -> None:
        """Drops a connection that failed mid-use, so the next job reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def supervisor(self, ledger: JobLedger) -> Supervisor:
        """This process's attempt supervisor (its thread starts with the first attempt)."""
        self._forked()
        if self._supervisor is None:
            self._supervisor = Supervisor(
                self._dsn,
                ledger,
                lease_seconds=self.limits.lease_seconds,
                kill_grace_seconds=self.limits.kill_grace_seconds,
                kill=self._kill,
            )
        return self._supervisor

    def http(self) -> httpx.AsyncClient:
        """The process's HTTP client for handlers: pooled connections, bounded waits."""
        self._forked()
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(
                timeout=self._http_timeout,
                follow_redirects=False,
                headers={"user-agent": "relayq-worker"},
            )
        return self._http

    async def close(self) -> None:
        """Releases everything this process made (worker shutdown; tests)."""
        if self._supervisor is not None:
            await asyncio.to_thread(self._supervisor.close)
            self._supervisor = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await self.discard_connection()
