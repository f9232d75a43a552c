"""One running attempt: its handler under a time limit, what may stop it, and what it leaves.

:func:`call_handler` runs the handler under its time limit and tells the runner's own stops
(:class:`Stopped`) apart from the handler's failures. :class:`Attempt` is the rest of the
attempt's life around it: the supervisor's watch (worker_svc/supervisor.py), the handler's
leftover tasks and threads (:meth:`Attempt.quiesce`), and the connection the outcome is
recorded on (:meth:`Attempt.end_transaction` replaces one it can no longer trust).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import asyncpg

from relayq_core.db.ledger import Claim, JobLedger
from relayq_core.logging import get_logger
from relayq_core.retry import RetryPolicy
from worker_svc.context import JobContext, JsonObject
from worker_svc.runtime import Runtime, StopSwitch, TrackedExecutor, tracked_executor
from worker_svc.supervisor import Watch

if TYPE_CHECKING:
    from worker_svc.runner import Delivery

log = get_logger(__name__)

Handler = Callable[[JobContext, JsonObject], Awaitable[Any]]
#: Records the attempt as timed out on the connection given (the supervisor's); False when the
#: attempt no longer owns the job.
TimeoutRecorder = Callable[[asyncpg.Connection], Coroutine[Any, Any, bool]]

#: The longest a handler's transaction may take to roll back before its connection is closed.
ROLLBACK_SECONDS = 5.0

#: The running attempt, in the context of its handler and of every task the handler starts.
_ATTEMPT: contextvars.ContextVar[object] = contextvars.ContextVar("relayq_attempt")


class Stopped(Exception):
    """The handler was stopped from outside (its time limit, or the connection's loss)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def call_handler(
    handler: Handler, ctx: JobContext, payload: JsonObject, limit: float, stop: StopSwitch
) -> Any:
    """The handler under its time limit; :class:`Stopped` when the limit or ``stop`` ended it.

    A ``TimeoutError`` of the handler's own (its HTTP client's, its own ``asyncio.timeout``) is
    the handler's failure, told apart by whether *this* timeout expired.
    """
    timeout = asyncio.timeout(limit)
    stop.attach(timeout)
    token = _ATTEMPT.set(stop)  # tasks the handler starts inherit it (see Attempt.quiesce)
    try:
        async with timeout:
            return await handler(ctx, payload)
    except TimeoutError:
        if timeout.expired():
            raise Stopped(stop.reason or "timeout") from None
        raise
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this delivery itself is being cancelled (the process is stopping)
        # The handler let a cancellation of its own escape (it awaited a task that something
        # cancelled): its failure, like any other exception.
        raise HandlerCancelled("the handler raised CancelledError") from None
    finally:
        _ATTEMPT.reset(token)
        stop.attach(None)


#: How long a success waits for the tasks it cancelled to end (they end at their next step).
CANCELLED_SETTLE_SECONDS = 0.05


class HandlerCancelled(Exception):
    """A ``CancelledError`` that escaped the handler without this delivery being cancelled."""


def _asyncpg_cancel_request(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is asyncpg's request to cancel a statement the handler abandoned
    (``Connection._cancel``): it must finish for the connection's sake. Nothing else of asyncpg's
    is spared: a task the handler made of a statement (``asyncio.shield(conn.execute(...))``) is
    the handler's work like any other."""
    code = getattr(task.get_coro(), "cr_code", None)
    return (
        code is not None
        and code.co_qualname == "Connection._cancel"
        and "asyncpg" in code.co_filename
    )


class Attempt:
    """One delivery's running attempt: its stop switch and the supervisor's watch on it."""

    def __init__(
        self,
        runtime: Runtime,
        ledger: JobLedger,
        delivery: Delivery,
        policy: RetryPolicy,
        conn: asyncpg.Connection,
    ) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.delivery = delivery
        self.policy = policy
        #: The connection the delivery records on: the claim's, holding the job's lock, until
        #: end_transaction() has to replace it (then the lease alone keeps others away).
        self.conn = conn
        self.lock_held = True
        self.stop = StopSwitch()
        self._watch: Watch | None = None
        self._executor: TrackedExecutor | None = None
        #: The handler's offloaded work outlived it: the process must end (after recording).
        self.must_kill = False
        #: Tasks or threads may still run after the handler returned (see quiesce).
        self._work_left = False

    def begin(self, claim: Claim, lease_sent: float, record_timeout: TimeoutRecorder) -> None:
        """The handler is about to run: the connection's loss stops it, the supervisor watches
        (``record_timeout`` is how it records the attempt if it must kill the process)."""
        self.runtime.attempt = self.stop
        self._executor = tracked_executor()
        if self.runtime.limits.unsafe_skip_claim:
            return  # no lock held: nothing for a lease to prove
        loop = asyncio.get_running_loop()
        stop = self.stop

        def stop_from_thread(reason: str) -> None:
            loop.call_soon_threadsafe(stop.request, reason)

        def on_loop(callback: Callable[[], None]) -> None:
            loop.call_soon_threadsafe(callback)

        delivery, policy = self.delivery, self.policy
        self._watch = Watch(
            job_id=delivery.job_id,
            idempotency_key=delivery.idempotency_key,
            task=delivery.task,
            attempt=claim.attempt,
            holder_pid=self.conn.get_server_pid(),
            lease_sent=lease_sent,
            started=time.monotonic(),
            timeout=policy.timeout_seconds,
            stop=stop_from_thread,
            record_timeout=record_timeout,
            ping=on_loop,
        )
        self.runtime.supervisor(self.ledger).begin(self._watch)

    async def quiesce(self, *, wait: bool = True) -> None:
        """The handler has returned: its leftover tasks are cancelled and, unless it succeeded
        (``wait`` False), awaited with what it handed to threads, for up to half the kill grace.
        Work still running then would overlap the next attempt: :attr:`must_kill`.

        A success that then cannot be recorded is an attempt that ended other than in success
        after all: call again with ``wait`` True before giving it up."""
        current = asyncio.current_task()
        # The handler's tasks carry its attempt in their context (set by call_handler), and only
        # they. asyncpg's cancel request of a statement the handler abandoned is not cancelled
        # (the connection needs it to finish) but is waited for like the rest: until it lands,
        # the server runs the statement on.
        leftover = [
            t
            for t in asyncio.all_tasks()
            if t is not current and not t.done() and t.get_context().get(_ATTEMPT) is self.stop
        ]
        for task in leftover:
            if not _asyncpg_cancel_request(task):
                task.cancel()
        if not wait:
            # A success: not waited for, beyond the moment cancelled tasks need to end, so
            # whatever still runs then may outlive the attempt until the outcome is recorded
            # (the lease kill stays armed meanwhile; a task that ended at its cancellation
            # must not keep it armed through a slow commit).
            pending: set[asyncio.Task[Any]] = set()
            if leftover:
                _, pending = await asyncio.wait(leftover, timeout=CANCELLED_SETTLE_SECONDS)
            executor = self._executor
            self._work_left = bool(pending) or (executor is not None and executor.busy > 0)
        else:
            # Half the kill grace: decided here, on the loop, before the supervisor's hard
            # deadline (time limit + grace) would make it decide from its thread.
            grace = self.runtime.limits.kill_grace_seconds / 2
            started = time.monotonic()
            if leftover:
                _, pending = await asyncio.wait(leftover, timeout=grace)
                self.must_kill = bool(pending)
            remaining = max(0.0, grace - (time.monotonic() - started))
            executor = self._executor
            if executor is not None and not await executor.idle(remaining):
                self.must_kill = True
            self._work_left = self.must_kill
            if self.must_kill:
                log.error(
                    "job_attempt_left_work_running",
                    tasks=len(leftover),
                    threads=executor.busy if executor is not None else 0,
                    grace_seconds=grace,
                )
        self.handler_returned()

    async def end_transaction(self, ctx: JobContext, *, cut: bool) -> None:
        """Leaves nothing of the handler's open on the delivery's connection.

        A handler that failed on its own (``cut`` False) has its transaction rolled back. One
        that was cancelled (its time limit; ``cut``) may have been cut off mid-statement, and
        asyncpg then waits for the cancellation of a statement that already finished: that
        connection is never trusted again, nor is one whose rollback failed or took too long.
        It is closed (its session lock goes with it, and the attempt's lease keeps other
        deliveries away meanwhile) and the outcome is recorded on a fresh connection.
        """
        conn = self.conn
        if conn.is_closed() or (ctx.transaction is None and not conn.is_in_transaction()):
            return
        if not cut and ctx.transaction is not None:
            try:
                async with asyncio.timeout(ROLLBACK_SECONDS):
                    await ctx.transaction.rollback()
                if not conn.is_in_transaction():
                    return
            except Exception as exc:
                log.warning("job_rollback_failed", error=type(exc).__name__)
        old_pid = conn.get_server_pid()
        await self.runtime.discard_connection()
        self.lock_held = False
        self.conn = await self.runtime.connection()
        # Closing the socket does not stop a statement the server is still running (PostgreSQL
        # notices a vanished client only between statements, or at the next
        # client_connection_check_interval): end that session now, and its locks with it.
        with contextlib.suppress(Exception):
            await self.conn.execute("SELECT pg_terminate_backend($1)", old_pid)

    async def release(self) -> None:
        """Releases the job's lock, if this delivery still holds it."""
        if self.lock_held:
            await release_job(self.conn, self.ledger, self.delivery.job_id)

    def kill_if_busy(self) -> None:
        """The handler's work outlived it (:attr:`must_kill`): end the process now, once its
        outcome is recorded or cannot be, before another attempt could run beside that work."""
        if self.must_kill:
            log.error("job_attempt_killed", reason="work_left_running")
            self.runtime.kill()

    def handler_returned(self) -> None:
        """Nothing left to stop (the lease is still renewed until the outcome is recorded).

        Unless the handler's work outlived it (:attr:`must_kill`): then the supervisor stays
        armed, so the process dies before the lease can run out even when recording the outcome
        takes longer than that (a fresh connection that is slow to open, say)."""
        if self._watch is not None:
            self._watch.handler_done = True
            self._watch.work_left = self.must_kill or self._work_left
        self.runtime.attempt = None

    def end(self) -> None:
        """The delivery is over."""
        self.runtime.attempt = None
        if self._watch is not None:
            self.runtime.supervisor(self.ledger).end(self._watch)
            self._watch = None


async def release_job(conn: asyncpg.Connection, ledger: JobLedger, job_id: str) -> None:
    """Releases the job's lock on ``conn`` (nothing when the connection is gone)."""
    if not conn.is_closed():
        await ledger.unlock_job(conn, job_id)
