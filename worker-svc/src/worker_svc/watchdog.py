"""The consumption watchdog: a worker node that is connected but no longer consuming exits.

Celery's Redis transport has had bugs (celery/celery#8030, #8091, #9054, #10205) where a worker
reconnects after the broker restarts and then never asks for another message: the process is
alive, answers ``ping``, and the queue grows. Restarting the node cures it, so the watchdog
detects the condition and exits with :data:`EXIT_STALLED`, and the supervisor (compose
``restart: unless-stopped``, Kubernetes, the chaos harness) starts a fresh node.

The node's main process notes the time of every message it receives (Celery's
``task_received`` signal, retries and replays included). A thread samples, every
``watchdog_interval_seconds``:

- the depth of this node's queues (``LLEN``, one pipelined round trip to Redis), and
- whether the node has a free pool slot (fewer reserved requests than its concurrency).

The node *should* be receiving while the queue holds messages and it has room for them. When
that has been true for ``stall_seconds`` in a row and nothing arrived in that time, the node is
stalled: it logs ``worker_stalled`` and starts a warm shutdown (running jobs finish), exiting
non-zero; if that has not ended after ``stall_exit_grace_seconds`` the process exits at once
(unfinished jobs' messages are redelivered: ``acks_late``). A broker that cannot be reached
resets the clock: reconnecting is Celery's job, and the watchdog only judges a node that could
consume.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from relayq_core.logging import get_logger
from worker_svc.config import WorkerSettings

log = get_logger(__name__)

#: The exit status of a node the watchdog stopped (EX_SOFTWARE).
EXIT_STALLED = 70


@dataclass
class StallDetector:
    """Decides from samples whether a node is stalled (pure; the thread feeds it)."""

    stall_seconds: float
    _expecting_since: float | None = None

    def observe(
        self, now: float, *, last_received: float, depth: int | None, busy: int, capacity: int
    ) -> bool:
        """True when the node should have received a message for ``stall_seconds`` and did
        not. ``depth`` None: the broker could not be asked."""
        expecting = depth is not None and depth > 0 and busy < capacity
        if not expecting:
            self._expecting_since = None
            return False
        if self._expecting_since is None:
            self._expecting_since = now
        quiet_since = max(self._expecting_since, last_received)
        return now - quiet_since >= self.stall_seconds


class Watchdog:
    """The thread in the node's main process that runs a :class:`StallDetector`."""

    def __init__(
        self,
        redis_url: str,
        queues: Sequence[str],
        capacity: int,
        *,
        stall_seconds: float,
        interval_seconds: float,
        exit_grace_seconds: float,
        busy: Callable[[], int],
        stop_node: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._queues = list(queues)
        self._capacity = capacity
        self._detector = StallDetector(stall_seconds)
        self._interval = interval_seconds
        self._exit_grace = exit_grace_seconds
        self._busy = busy
        self._stop_node = stop_node
        self._clock = clock
        self.last_received = clock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def received(self, **_: Any) -> None:
        """``task_received`` handler: the node got a message (cheap: one assignment)."""
        self.last_received = self._clock()

    def depth(self) -> int | None:
        """Messages waiting in this node's queues, or None when Redis does not answer."""
        try:
            pipe = self._client.pipeline(transaction=False)
            for queue in self._queues:
                pipe.llen(queue)
            return sum(int(n) for n in pipe.execute())
        except redis.RedisError:
            return None

    def check(self) -> bool:
        """One sample; stops the node and returns True when it is stalled."""
        depth = self.depth()
        busy = self._busy()
        now = self._clock()
        if not self._detector.observe(
            now, last_received=self.last_received, depth=depth, busy=busy, capacity=self._capacity
        ):
            return False
        log.error(
            "worker_stalled",
            depth=depth,
            busy=busy,
            capacity=self._capacity,
            quiet_seconds=round(now - self.last_received, 1),
            exit_code=EXIT_STALLED,
        )
        self._stop_node(EXIT_STALLED)
        return True

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            if self.check():
                # A warm shutdown normally ends the process well before this.
                if not self._stopped.wait(self._exit_grace):
                    log.error("worker_stall_exit_forced", exit_code=EXIT_STALLED)
                    os._exit(EXIT_STALLED)
                return

    def start(self) -> None:
        """Starts sampling (from ``worker_ready``; again after a reconnect: ignored)."""
        if self._thread is not None:
            return
        self.last_received = self._clock()
        # In a copy of this context: the process's log fields (service) come along.
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(
            target=ctx.run, args=(self._run,), name="relayq-watchdog", daemon=True
        )
        self._thread.start()
        log.info(
            "worker_watchdog_started",
            queues=self._queues,
            stall_seconds=self._detector.stall_seconds,
        )

    def stop(self) -> None:
        """Stops sampling (the node is shutting down for another reason)."""
        self._stopped.set()
        self._client.close()


def install(settings: WorkerSettings, queues: Sequence[str]) -> Watchdog:
    """Creates the node's watchdog and hooks it to Celery's signals (main process only)."""
    from celery import signals
    from celery.worker import state

    def stop_node(code: int) -> None:
        # Celery's own warm-shutdown flag: the consumer loop sees it within a tick and stops
        # taking messages, lets running jobs finish, and exits with this code.
        state.should_stop = code

    watchdog = Watchdog(
        settings.redis_url,
        queues,
        settings.concurrency,
        stall_seconds=settings.stall_seconds,
        interval_seconds=settings.watchdog_interval_seconds,
        exit_grace_seconds=settings.stall_exit_grace_seconds,
        busy=lambda: len(state.reserved_requests),
        stop_node=stop_node,
    )
    signals.task_received.connect(watchdog.received, weak=False)
    signals.worker_ready.connect(lambda **_: watchdog.start(), weak=False)
    signals.worker_shutdown.connect(lambda **_: watchdog.stop(), weak=False)
    return watchdog
