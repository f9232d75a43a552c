"""The load itself: a shared plan (which request comes next, at what pace) and the Locust user
that carries it out.

One :class:`LoadPlan` per process hands out request numbers to every user: ``-n`` caps them,
``--rps`` spaces them on one global schedule (request ``k`` not before ``start + k/rps``, like
ghz's constant pacer, catching up without a burst limit beyond the concurrency), and a deadline
or :meth:`LoadPlan.stop` ends a duration-bound run: a request whose slot falls after it is never
sent, even if a user already holds its number. Greenlets switch only when they block, so the
plain counters need no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import gevent
from locust import constant, task
from locust.env import Environment
from locust.exception import StopUser

from relayq_load.calls import Method, RequestFactory
from relayq_load.grpc_user import GrpcUser


@dataclass
class LoadPlan:
    """What to call, how many times, and how fast; shared by every user of a run."""

    method: Method
    requests: RequestFactory
    total: int | None = None
    rps: float = 0.0
    duration: float | None = None
    issued: int = 0
    stopped: bool = False
    started_at: float | None = field(default=None)

    def take(self) -> int | None:
        """The next request number, or None when the run has issued everything it will."""
        if self.stopped or (self.total is not None and self.issued >= self.total):
            return None
        now = time.perf_counter()
        if self.started_at is None:
            self.started_at = now
        elif self.duration is not None and now - self.started_at >= self.duration:
            self.stopped = True
            return None
        number = self.issued
        self.issued += 1
        return number

    def pace(self, number: int) -> bool:
        """Sleeps (cooperatively) until request ``number``'s slot on the rate schedule; False
        when the run ended meanwhile or the slot lies past the deadline (do not send it)."""
        if self.rps <= 0 or self.started_at is None:
            return not self.stopped
        offset = number / self.rps
        if self.duration is not None and offset >= self.duration:
            return False
        delay = self.started_at + offset - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        return not self.stopped

    def stop(self) -> None:
        """Issue nothing more; calls in flight still finish."""
        self.stopped = True


class CallUser(GrpcUser):
    """Calls the plan's method as fast as the plan allows, until the plan runs out.

    Runs headless under ``relayq-load`` (which sets :attr:`plan`) or under ``locust -f`` with the
    ``--grpc-*`` options of :mod:`relayq_load.locustfile`.
    """

    wait_time = constant(0)
    plan: ClassVar[LoadPlan | None] = None
    metadata: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if self.plan is None:
            raise RuntimeError("CallUser.plan is not set (use relayq-load or the locustfile)")
        self._plan: LoadPlan = self.plan

    @task
    def call(self) -> None:
        """One request of the plan."""
        number = self._plan.take()
        if number is None:
            raise StopUser()
        if not self._plan.pace(number):
            raise StopUser()
        self.unary(self._plan.method, self._plan.requests.build(number))
