"""Once a second during a run: CPU by process role, worker memory, and the backlog.

CPU is read from each process's cumulative ``cpu_times`` (user + system), so a sample is the
exact CPU spent since the previous one, in cores. What the machine spent beyond the processes
the bench knows is ``other``: on a shared machine that is load the bench did not make, and the
report shows it next to every figure.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped,unused-ignore]
import redis.asyncio as aioredis

from relayq_load.bench.stack import Processes

# kombu's Redis transport keeps delivered, unacknowledged messages in this hash.
UNACKED = "unacked"


def _cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _spent_since(before: dict[int, float | None]) -> float:
    """CPU seconds the processes of ``before`` ({pid: _cpu_seconds then}) spent since then
    (one that ended in between counts for nothing)."""
    spent = 0.0
    for pid, then in before.items():
        now = _cpu_seconds(pid)
        if then is not None and now is not None:
            spent += now - then
    return spent


def _busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


async def other_load(find_processes: Callable[[], Processes], seconds: float = 3.0) -> float:
    """Cores the machine spent over ``seconds`` outside the given processes and this one."""
    pids = [*find_processes().pids(), os.getpid()]
    before = {pid: _cpu_seconds(pid) for pid in pids}
    busy0, total0 = _busy_seconds()
    start = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    busy1, total1 = _busy_seconds()
    machine = (busy1 - busy0) / max(total1 - total0, 1e-6) * (psutil.cpu_count() or 1)
    return max(0.0, machine - _spent_since(before) / elapsed)


async def own_load(find_processes: Callable[[], Processes], seconds: float = 2.0) -> float:
    """Cores the given processes spent over ``seconds`` (the stack's own background work)."""
    pids = find_processes().pids()
    before = {pid: _cpu_seconds(pid) for pid in pids}
    start = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    return _spent_since(before) / elapsed


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of the given processes, summed."""
    total = 0
    for pid in pids:
        try:
            total += int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            continue
    return total


@dataclass
class Sample:
    """One second of a run."""

    t: float  # seconds since the run started
    cores: dict[str, float]  # CPU by role, in cores
    machine: float  # the whole machine's busy cores
    queue: int = 0  # messages waiting in the broker queue
    unacked: int = 0  # delivered, not yet acknowledged
    backlog: int | None = None  # waiting jobs in the ledger
    message_bytes: int | None = None  # size of one waiting message


@dataclass
class Sampler:
    """Samples ``processes`` (refreshed as pools and backends come and go) every ``interval``."""

    find_processes: Callable[[], Processes]
    redis_url: str
    queue: str
    extra: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    backlog: Callable[[], Awaitable[int]] | None = None
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    machine_seconds: float = 0.0
    sampled_seconds: float = 0.0
    _task: asyncio.Task[None] | None = None
    _start: float = 0.0

    def _roles(self) -> dict[str, list[int]]:
        roles = dict(self.find_processes().groups)
        roles["bench"] = [os.getpid()]
        for name, pids in self.extra.items():
            roles[name] = pids()
        return roles

    async def _run(self) -> None:
        client = aioredis.Redis.from_url(self.redis_url)
        previous: dict[int, float] = {}
        roles = self._roles()
        for pids in roles.values():
            for pid in pids:
                seconds = _cpu_seconds(pid)
                if seconds is not None:
                    previous[pid] = seconds
        busy0, total0 = _busy_seconds()
        last = time.monotonic()
        n = 0
        try:
            while True:
                await asyncio.sleep(self.interval)
                n += 1
                if n % 5 == 0:
                    roles = self._roles()  # new pool children, new Postgres backends
                now = time.monotonic()
                elapsed = max(now - last, 1e-6)
                last = now
                cores: dict[str, float] = {}
                ours = 0.0
                for role, pids in roles.items():
                    spent = 0.0
                    for pid in pids:
                        seconds = _cpu_seconds(pid)
                        if seconds is None:
                            continue
                        spent += seconds - previous.get(pid, seconds)
                        previous[pid] = seconds
                    cores[role] = spent / elapsed
                    ours += spent
                    self.cpu_seconds[role] = self.cpu_seconds.get(role, 0.0) + spent
                busy1, total1 = _busy_seconds()
                ncpu = psutil.cpu_count() or 1
                machine = (busy1 - busy0) / max(total1 - total0, 1e-6) * ncpu
                busy0, total0 = busy1, total1
                cores["other"] = max(0.0, machine - ours / elapsed)
                self.cpu_seconds["other"] = (
                    self.cpu_seconds.get("other", 0.0) + cores["other"] * elapsed
                )
                self.machine_seconds += machine * elapsed
                self.sampled_seconds += elapsed
                sample = Sample(t=time.monotonic() - self._start, cores=cores, machine=machine)
                pipe = client.pipeline(transaction=False)
                pipe.llen(self.queue)
                pipe.hlen(UNACKED)
                pipe.lindex(self.queue, -1)
                queue, unacked, message = await pipe.execute()
                sample.queue, sample.unacked = int(queue), int(unacked)
                sample.message_bytes = len(message) if message else None
                if self.backlog is not None:
                    sample.backlog = await self.backlog()
                self.samples.append(sample)
        finally:
            await client.aclose()

    def start(self) -> None:
        """Starts sampling in the running event loop."""
        self._start = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stops sampling."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def cores(self) -> dict[str, float]:
        """Average cores by role over the sampled time, busiest first."""
        span = max(self.sampled_seconds, 1e-6)
        by_role = {role: spent / span for role, spent in self.cpu_seconds.items()}
        return dict(sorted(by_role.items(), key=lambda kv: -kv[1]))

    def machine_cores(self) -> float:
        """Average busy cores of the whole machine over the sampled time."""
        return self.machine_seconds / max(self.sampled_seconds, 1e-6)
