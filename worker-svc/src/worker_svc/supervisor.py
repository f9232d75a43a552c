"""The attempt supervisor: the part of a delivery that does not rely on the handler's help.

A handler runs on its pool process's event loop, and the runner's own ``asyncio.timeout``
cancels it at its time limit. That needs a handler that lets itself be cancelled and does not
block the loop. The supervisor covers the rest from a thread of the same process, with its own
event loop and its own PostgreSQL connection (made the first time it is needed):

- **Time limit, hard.** A handler still running ``kill_grace_seconds`` after its time limit
  ignored the cancellation or blocks the loop. The supervisor records the attempt as timed out
  (``relayq_settle_failure``, only while the attempt still owns the job) and kills its own
  process. Celery's pool replaces the process and hands the message back; the job's next
  delivery finds the retry not yet due and waits for it, or hands the staged dead letter off.
- **Lease.** The claim leases the job for ``lease_seconds``. While the attempt runs, the
  supervisor renews the lease every third of it, only while the delivery's own connection still
  holds the job's lock. When the lock is gone (a PostgreSQL restart or a partition cut that
  connection) it asks the loop to stop the handler; and if the handler is still running when a
  sixth of the lease is left, counted on this process's monotonic clock from the last renewal
  it *sent* (so never later than the database's expiry), it kills the process. Another delivery
  takes a running job over only once its lease has run out: by then this attempt has stopped.

Every database call of the supervisor is bounded by the time left before it must act, so a
database that stops answering cannot keep it from killing a handler it has to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from relayq_core.db.ledger import AttemptSuperseded, JobLedger, connect
from relayq_core.logging import get_logger, job_context
from worker_svc.metrics import ATTEMPTS_KILLED

log = get_logger(__name__)

T = TypeVar("T")

#: How long the supervisor waits for the database on one call, at most.
CALL_SECONDS = 5.0
#: After a failed renewal (database unreachable), the next try comes this soon.
RETRY_SECONDS = 1.0
#: The longest the thread sleeps without looking at the process's attempt.
POLL_SECONDS = 0.5


def kill_this_process() -> None:
    """The hard stop: SIGKILL to ourselves (no handler, no atexit, no flush can delay it)."""
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Watch:
    """One running attempt, as the supervisor watches it.

    ``stop`` asks the event loop to stop the handler (thread-safe); ``record_timeout`` records
    the attempt as timed out on the connection it is given and returns False when the attempt no
    longer owns the job (it finished meanwhile).
    """

    job_id: str
    idempotency_key: str
    task: str
    attempt: int
    #: The backend pid of the delivery's connection, which holds the job's lock.
    holder_pid: int
    #: When the lease was taken, on this process's monotonic clock: never later than the
    #: database's moment (the claim was sent, plus what the database says it waited).
    lease_sent: float
    #: When the handler started, and its time limit (seconds).
    started: float
    timeout: float
    stop: Callable[[str], None]
    record_timeout: Callable[[asyncpg.Connection], Coroutine[Any, Any, bool]]
    #: Set by the runner when the handler has returned: no time limit left to enforce.
    handler_done: bool = False
    #: Set by the runner while work the handler started may still run after it returned (its
    #: tasks or threads, not yet known to be over): the lease kill stays armed, so that work
    #: never outlives the lease, whatever recording the outcome takes.
    work_left: bool = False
    #: Runs a callback on the delivery's event loop (thread-safe): how the supervisor tells a
    #: loop that answers (recording, however slowly) from one that work left behind blocks.
    ping: Callable[[Callable[[], None]], None] | None = None
    #: When the unanswered ping was sent (monotonic), or None.
    ping_sent: float | None = None
    lease_deadline: float = 0.0
    next_renewal: float = 0.0
    stop_sent: bool = False
    timed_out: bool = field(default=False, repr=False)


class Supervisor:
    """The thread that watches this process's attempt (one at a time: one job per process)."""

    def __init__(
        self,
        dsn: str,
        ledger: JobLedger,
        *,
        lease_seconds: float,
        kill_grace_seconds: float,
        kill: Callable[[], None] = kill_this_process,
        clock: Callable[[], float] = time.monotonic,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self._dsn = dsn
        self._server_settings = server_settings
        self._ledger = ledger
        self._lease = lease_seconds
        self._grace = kill_grace_seconds
        self._kill_process = kill
        self._clock = clock
        self._cond = threading.Condition()
        self._watch: Watch | None = None
        self._closed = False
        #: How often the thread looks for a new watch: sooner than any watch's first deadline.
        self.poll_seconds = min(POLL_SECONDS, lease_seconds / 6, kill_grace_seconds)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: asyncpg.Connection | None = None

    @property
    def lease_seconds(self) -> float:
        """The lease every claim of this process takes."""
        return self._lease

    def begin(self, watch: Watch) -> None:
        """Starts watching ``watch`` (the claim has just leased the job).

        The thread is not woken: it looks at least every :attr:`poll_seconds`, and no deadline
        of a new watch comes sooner than that (the first renewal is a third of the lease away,
        the hard time limit the time limit plus its grace). A job costs its delivery no thread
        switch."""
        watch.lease_deadline = watch.lease_sent + self._lease
        watch.next_renewal = watch.lease_sent + self._lease / 3
        with self._cond:
            self._watch = watch
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="relayq-supervisor", daemon=True
                )
                self._thread.start()

    def end(self, watch: Watch) -> None:
        """Stops watching ``watch`` (its outcome is recorded, or its delivery gave up)."""
        with self._cond:
            if self._watch is watch:
                self._watch = None

    def close(self) -> None:
        """Stops the thread and closes its connection."""
        with self._cond:
            self._closed = True
            self._watch = None
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=CALL_SECONDS + 1)

    # --- the thread ---------------------------------------------------------------------------

    def _deadlines(self, watch: Watch) -> tuple[float, float, float]:
        """When to renew, when the lease forces a kill, when the time limit does."""
        kill_at = watch.lease_deadline - self._lease / 6
        hard_at = watch.started + watch.timeout + self._grace
        return watch.next_renewal, kill_at, hard_at

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        last_wake = self._clock()
        try:
            while True:
                with self._cond:
                    if self._closed:
                        return
                    now = self._clock()
                    stalled = now - last_wake > self.poll_seconds + max(1.0, self._grace / 2)
                    last_wake = now
                    watch = self._watch
                    if watch is None:
                        self._cond.wait(self.poll_seconds)
                        continue
                    if stalled:
                        # This thread itself did not run for a while (the whole process frozen:
                        # a paused container, a stolen VM): an unanswered ping proves nothing.
                        watch.ping_sent = None
                    renew_at, kill_at, hard_at = self._deadlines(watch)
                    if not watch.handler_done:
                        due = min(renew_at, kill_at, hard_at)
                    else:
                        # Once the handler returned, the loop must answer: whatever blocks it
                        # (work left behind, seen by quiesce or not: a plain callback, a task
                        # made after the look) keeps the outcome from being recorded.
                        self._ping(watch)
                        lease = kill_at if watch.work_left else renew_at
                        due = min(renew_at, lease, self._blocked_at(watch))
                    wait = due - self._clock()
                    if wait > 0:
                        # Never longer than the poll: the watch may end, and another begin.
                        self._cond.wait(min(wait, self.poll_seconds))
                        continue
                with job_context(watch.job_id, watch.idempotency_key, task=watch.task):
                    self._loop.run_until_complete(self._act(watch))
        finally:
            if self._conn is not None and not self._conn.is_closed():
                self._conn.terminate()
            # A terminated connection's socket is closed by a callback of the loop: let it run
            # (and that of any call cut short before), or the socket is left to the collector.
            # (call_soon is FIFO: they run before the stop.)
            self._loop.call_soon(self._loop.stop)
            self._loop.run_forever()
            self._loop.close()

    def _current(self, watch: Watch) -> bool:
        with self._cond:
            return self._watch is watch

    async def _act(self, watch: Watch) -> None:
        renew_at, kill_at, hard_at = self._deadlines(watch)
        now = self._clock()
        if not watch.handler_done and now >= hard_at and not watch.timed_out:
            watch.timed_out = True
            await self._hard_timeout(watch, kill_at)
        elif watch.handler_done and now >= self._blocked_at(watch):
            # Work the handler left (a task that swallowed its cancellation and then made a
            # blocking call) holds the event loop: the runner can neither record the outcome nor
            # kill, and the delivery's session keeps the lease renewed, so nothing else would
            # ever end it. No record (the loop that would make it is the one blocked): the job
            # comes back as a worker loss. A loop that answers is left alone, however slowly it
            # records.
            self._kill(
                watch,
                "loop_blocked",
                "work its handler left blocks the event loop before the outcome is recorded",
            )
        elif (not watch.handler_done or watch.work_left) and now >= kill_at:
            self._kill(
                watch,
                "lease",
                "the job's lease could not be renewed and its handler or its work is still running",
            )
        elif now >= renew_at:
            await self._renew(watch, kill_at)

    def _ping(self, watch: Watch) -> None:
        """Asks the delivery's loop to answer, unless a ping is already on its way."""
        if watch.ping is None or watch.ping_sent is not None:
            return
        watch.ping_sent = self._clock()

        def pong() -> None:
            watch.ping_sent = None

        try:
            watch.ping(pong)
        except RuntimeError:  # the loop is closed: the delivery is over
            watch.ping_sent = None

    def _blocked_at(self, watch: Watch) -> float:
        """When an unanswered ping means a blocked loop: a kill grace after it was sent."""
        sent = watch.ping_sent
        return float("inf") if sent is None else sent + self._grace

    async def _hard_timeout(self, watch: Watch, kill_at: float) -> None:
        log.error(
            "job_time_limit_ignored",
            attempt=watch.attempt,
            timeout_seconds=watch.timeout,
            grace_seconds=self._grace,
        )
        recorded: bool
        try:
            recorded = await self._call(watch.record_timeout, kill_at)
        except AttemptSuperseded:
            recorded = False
        except Exception as exc:  # unreachable database: the handler must stop all the same
            log.warning("job_timeout_not_recorded", error=type(exc).__name__)
            recorded = True
        if recorded and self._current(watch) and not watch.handler_done:
            await self._end_session(watch, kill_at)
            self._kill(watch, "timeout", "the handler ran past its time limit and its grace")

    async def _end_session(self, watch: Watch, act_by: float) -> None:
        """Ends the delivery's database session before the process dies: a statement the
        handler left running would otherwise go on, holding the job's lock, after the process is
        gone (best effort: the kill follows whatever happens here)."""
        try:
            await self._call(
                lambda conn: conn.execute("SELECT pg_terminate_backend($1)", watch.holder_pid),
                act_by,
            )
        except Exception as exc:
            log.warning("job_session_not_ended", error=type(exc).__name__)

    async def _renew(self, watch: Watch, kill_at: float) -> None:
        sent = self._clock()
        try:
            renewed = await self._call(
                lambda conn: self._ledger.renew_lease(
                    conn, watch.job_id, watch.attempt, self._lease, watch.holder_pid
                ),
                kill_at,
            )
        except Exception as exc:
            log.warning("job_lease_renewal_failed", error=type(exc).__name__)
            watch.next_renewal = sent + RETRY_SECONDS
            return
        if renewed:
            watch.lease_deadline = sent + self._lease
            watch.next_renewal = sent + self._lease / 3
            return
        # The delivery's connection no longer holds the lock (or the attempt is over): nobody
        # can record this attempt any more. Stop the handler; the lease runs out on its own.
        watch.next_renewal = float("inf")
        if self._current(watch) and not watch.stop_sent:
            watch.stop_sent = True
            log.warning("job_lease_lost", attempt=watch.attempt)
            watch.stop("lease_lost")

    async def _call(
        self, fn: Callable[[asyncpg.Connection], Coroutine[Any, Any, T]], act_by: float
    ) -> T:
        """``fn`` on the supervisor's connection, given up in time to act by ``act_by``."""
        budget = max(0.1, min(CALL_SECONDS, act_by - self._clock() - 0.5))
        try:
            async with asyncio.timeout(budget):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self._dsn, self._server_settings)
                return await fn(self._conn)
        except BaseException:
            # A call cut short leaves the connection mid-protocol: start afresh next time.
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    conn.terminate()
            raise

    def _kill(self, watch: Watch, reason: str, why: str) -> None:
        if not self._current(watch):
            return
        log.error("job_attempt_killed", attempt=watch.attempt, reason=reason, detail=why)
        ATTEMPTS_KILLED.labels(task=watch.task, reason=reason).inc()
        self._kill_process()
