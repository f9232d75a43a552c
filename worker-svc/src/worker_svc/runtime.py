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
import threading
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
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
    #: PostgreSQL drops a worker session whose peer went silent (a partition, a host lost
    #: without a FIN) after about this long, releasing the job's lock with it.
    dead_peer_seconds: float = 20.0

    def server_settings(self) -> dict[str, str]:
        """Session settings that make PostgreSQL notice a vanished worker in time: TCP
        keepalives (idle, interval, count) and a limit on unacknowledged data."""
        idle = max(1, int(self.dead_peer_seconds * 0.4))
        interval = max(1, int(self.dead_peer_seconds * 0.2))
        return {
            "tcp_keepalives_idle": str(idle),
            "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": str(int(self.dead_peer_seconds * 1000)),
            # A statement of a session whose client is gone (a killed worker) stops within this
            # interval instead of running on, holding the job's lock (PostgreSQL 14 and later).
            "client_connection_check_interval": "2000",
        }


class TrackedExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting the work in flight, so an attempt can tell
    whether what its handler handed to threads (``asyncio.to_thread``, ``run_in_executor``)
    has finished: cancelling the handler does not stop a thread."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="relayq-handler")
        self._lock = threading.Lock()
        self._busy = 0
        self._idle_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            self._busy += 1

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1
                    waiters = self._idle_waiters if self._busy == 0 else []
                    if waiters:
                        self._idle_waiters = []
                for loop, waiter in waiters:
                    loop.call_soon_threadsafe(_resolve, waiter)

        return super().submit(run)

    @property
    def busy(self) -> int:
        """Work items submitted and not finished."""
        with self._lock:
            return self._busy

    async def idle(self, timeout: float) -> bool:
        """Waits up to ``timeout`` for every work item to finish; whether they all did."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._busy == 0:
                return True
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle_waiters.append((loop, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        return True


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


#: The tracked default executor of each event loop that ran a delivery.
_EXECUTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TrackedExecutor] = (
    weakref.WeakKeyDictionary()
)


def tracked_executor() -> TrackedExecutor:
    """The running loop's default executor, made a :class:`TrackedExecutor` on first use."""
    loop = asyncio.get_running_loop()
    executor = _EXECUTORS.get(loop)
    if executor is None:
        executor = TrackedExecutor()
        loop.set_default_executor(executor)
        _EXECUTORS[loop] = executor
    return executor


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
        #: The connection's transaction bookkeeping may be wrong (a BEGIN cut short, a handler
        #: that escaped mid-transaction): it is replaced before the next delivery.
        self.tainted = False

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
        if self._conn is not None and (self.tainted or self._conn.is_in_transaction()):
            await self.discard_connection()  # never start a delivery inside a stale transaction
        if self._conn is None or self._conn.is_closed():
            conn = await connect(self._dsn, self.limits.server_settings())
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

    def taint(self) -> None:
        """Marks the connection for replacement before the next delivery."""
        self.tainted = True

    def kill(self) -> None:
        """Ends this process at once (see :func:`worker_svc.supervisor.kill_this_process`)."""
        self._kill()

    async def discard_connection(self) -> None:
        """Drops a connection that failed mid-use, so the next job reconnects."""
        self.tainted = False
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
                server_settings=self.limits.server_settings(),
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
