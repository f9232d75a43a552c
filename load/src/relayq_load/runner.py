"""Headless runs: Locust as a library, ghz's semantics for when a run ends.

``-c`` users are started together (not ramped: ghz starts all its workers at once), each a
:class:`~relayq_load.user.CallUser` greenlet in a Locust ``Environment`` with a ``LocalRunner``,
so Locust's statistics and events work as usual. The run ends

- ``normal``: every one of ``-n`` requests has finished;
- ``timeout``: ``-z`` has elapsed; nothing new is issued and calls in flight finish;
- ``cancel``: SIGINT or SIGTERM; calls in flight are abandoned.

A :class:`Recorder` listens to Locust's ``request`` event and keeps every call for the report;
a progress greenlet writes one line a second to stderr.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import gevent
import gevent.event
from locust.env import Environment
from locust.event import Events

from relayq_load.grpc_user import REQUEST_TYPE, close_channels
from relayq_load.report import CallResult, status_of
from relayq_load.user import CallUser, LoadPlan


class Recorder:
    """Every gRPC call a run makes, from Locust's ``request`` event."""

    def __init__(self) -> None:
        self.results: list[CallResult] = []
        self.errors = 0

    def on_request(
        self,
        request_type: str,
        response_time: float,
        exception: BaseException | None = None,
        context: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        """Locust ``request`` listener."""
        if request_type != REQUEST_TYPE:
            return
        latency_ns = (context or {}).get("latency_ns")
        if not isinstance(latency_ns, int):
            latency_ns = round(response_time * 1e6)
        status, error = status_of(exception)
        if error:
            self.errors += 1
        self.results.append(CallResult(time.time_ns(), latency_ns, status, error))


@dataclass
class RunOutcome:
    """What a run did: its calls, how long it took (ns), and why it ended."""

    results: list[CallResult]
    total_ns: int
    end_reason: str


def _percentile_ms(values: list[int], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1e6


class Progress:
    """One line a second on stderr: calls done, rate, errors, latency of the last second."""

    def __init__(self, recorder: Recorder, total: int | None, out: TextIO = sys.stderr) -> None:
        self.recorder = recorder
        self.total = total
        self.out = out
        self._seen = 0
        self._start = time.perf_counter()
        self._last = self._start

    def tick(self) -> None:
        """Writes the line for the time since the previous tick."""
        now = time.perf_counter()
        results = self.recorder.results
        fresh = [r.latency_ns for r in results[self._seen :]]
        self._seen = len(results)
        interval = max(now - self._last, 1e-9)
        self._last = now
        done = f"{len(results)}/{self.total}" if self.total is not None else str(len(results))
        self.out.write(
            f"[{now - self._start:6.1f}s] {done} calls  {len(fresh) / interval:8.1f}/s  "
            f"errors {self.recorder.errors}  p50 {_percentile_ms(fresh, 0.5):.1f} ms  "
            f"p99 {_percentile_ms(fresh, 0.99):.1f} ms\n"
        )
        self.out.flush()

    def run(self) -> None:
        """Ticks every second until killed."""
        while True:
            gevent.sleep(1.0)
            self.tick()


def run(
    plan: LoadPlan,
    *,
    host: str,
    concurrency: int,
    connections: int = 1,
    insecure: bool = True,
    timeout: float = 20.0,
    metadata: tuple[tuple[str, str], ...] = (),
    progress: bool = True,
) -> RunOutcome:
    """Runs ``plan`` with ``concurrency`` users against ``host`` until it ends (see above)."""
    events = Events()
    recorder = Recorder()
    events.request.add_listener(recorder.on_request)
    user_class = type(
        "CallUser",
        (CallUser,),
        {
            "plan": plan,
            "host": host,
            "connections": connections,
            "insecure": insecure,
            "timeout": timeout,
            "metadata": metadata,
        },
    )
    env = Environment(user_classes=[user_class], events=events, host=host)
    runner = env.create_local_runner()
    cancelled = gevent.event.Event()
    handlers = [gevent.signal_handler(s, cancelled.set) for s in (signal.SIGINT, signal.SIGTERM)]
    ticker = gevent.spawn(Progress(recorder, plan.total).run) if progress else None
    start = time.perf_counter_ns()
    # The plan stops issuing at its duration by itself; calls in flight then finish.
    end_reason = "timeout" if plan.duration else "normal"
    try:
        # All users at once, like ghz's workers (Locust's spawner would ramp them up).
        for _ in range(concurrency):
            user_class(env).start(runner.user_greenlets)
        while runner.user_count > 0:
            if cancelled.is_set():
                end_reason = "cancel"
                plan.stop()
                runner.user_greenlets.kill(block=True, timeout=5)
                break
            cancelled.wait(0.05)
        total_ns = time.perf_counter_ns() - start
    finally:
        if ticker is not None:
            ticker.kill()
        for handler in handlers:
            handler.cancel()
        runner.quit()
        close_channels()
    if progress:
        sys.stderr.write(
            f"done: {len(recorder.results)} calls, {recorder.errors} errors, "
            f"{total_ns / 1e9:.2f} s ({end_reason})\n"
        )
    return RunOutcome(recorder.results, total_ns, end_reason)
