"""Submit latency under a steady load: ``relayq-load --rps R`` (single SubmitJob calls) for a
fixed time, while the bench watches the backlog.

"No backlog growth" is judged on the samples of the second half of the run: the waiting jobs
(ledger) plus the broker's queue must not trend upwards (least-squares slope under 1 job/s) and
must end small (under one second of load).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from relayq_load.bench.counters import CostMeter
from relayq_load.bench.e2e import per_second, wait_done, waiting_jobs
from relayq_load.bench.sampler import Sampler
from relayq_load.bench.stack import BenchError, BenchStack
from relayq_load.cli import submit_argv
from relayq_load.config import clean_child_env

TEMPLATE = (
    '{{"task": "demo.echo", "payload": {{"n": {{{{.RequestNumber}}}}}}, '
    '"idempotency_key": "{prefix}{{{{.RequestNumber}}}}"}}'
)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def details_per_second(report: dict[str, Any]) -> dict[str, list[float]]:
    """Calls finished and their p50/p99 latency (ms) in each second of a ghz report."""
    from datetime import datetime

    details = report.get("details") or []
    if not details:
        return {"calls": [], "p50_ms": [], "p99_ms": []}
    ends = [datetime.fromisoformat(d["timestamp"]).timestamp() for d in details]
    t0 = min(ends)
    buckets: dict[int, list[int]] = {}
    for end, d in zip(ends, details, strict=True):
        buckets.setdefault(int(end - t0), []).append(int(d["latency"]))
    span = max(buckets) + 1
    calls, p50, p99 = [], [], []
    for second in range(span):
        values = sorted(buckets.get(second, []))
        calls.append(float(len(values)))
        p50.append(values[len(values) // 2] / 1e6 if values else 0.0)
        p99.append(values[min(len(values) - 1, int(0.99 * len(values)))] / 1e6 if values else 0.0)
    return {"calls": calls, "p50_ms": p50, "p99_ms": p99}


async def sustain_run(
    stack: BenchStack, *, seconds: float, rps: int, concurrency: int, out_dir: Path
) -> dict[str, Any]:
    """Runs the load tool at ``rps`` for ``seconds``; latency, throughput and backlog."""
    prefix = f"sustain-{uuid.uuid4().hex[:8]}-"
    report_path = out_dir / f"{prefix}report.json"
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    meter = CostMeter(stack.database_url, stack.redis_url)
    proc: asyncio.subprocess.Process | None = None
    sampler = Sampler(
        find_processes=stack.processes,
        redis_url=stack.redis_url,
        queue="default",
        backlog=lambda: waiting_jobs(pool),
        extra={"load tool": lambda: [proc.pid] if proc is not None else []},
    )
    argv = submit_argv(
        stack.ingest,
        TEMPLATE.format(prefix=prefix),
        report_path,
        *("-c", str(concurrency), "-z", f"{seconds}s", "--rps", str(rps), "--quiet"),
    )
    try:
        await meter.reset()
        t0 = time.time()
        proc = await asyncio.create_subprocess_exec(
            *argv, env=clean_child_env(), stderr=asyncio.subprocess.PIPE
        )
        sampler.start()
        _, err = await proc.communicate()
        await sampler.stop()
        if proc.returncode != 0:
            raise BenchError(f"relayq-load failed ({proc.returncode}): {err.decode()[-2000:]}")
        report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
        accepted = int(report["statusCodeDistribution"].get("OK", 0))
        done, last = await wait_done(pool, prefix, accepted, timeout=600)
        costs = await meter.read()
        series = await per_second(pool, prefix, t0)
    finally:
        await sampler.stop()
        await pool.close()
    if done < accepted:
        raise BenchError(f"sustained run: only {done} of {accepted} jobs succeeded")
    # The load tool needs a few seconds to start (imports): judge the load once it runs.
    running = [s for s in sampler.samples if s.t > 0]
    half = [s for s in running if s.t >= running[-1].t / 2] if running else []
    backlog = [(s.t, float((s.backlog or 0) + s.queue)) for s in half]
    growth = slope(backlog)
    end_backlog = backlog[-1][1] if backlog else 0.0
    latency = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"] or []}
    return {
        "seconds": seconds,
        "rps_target": rps,
        "jobs_per_min_target": rps * 60,
        "calls": report["count"],
        "ok": accepted,
        "errors": report["errorDistribution"],
        "achieved_rps": report["rps"],
        "p50_ms": latency.get(50, 0.0),
        "p90_ms": latency.get(90, 0.0),
        "p99_ms": latency.get(99, 0.0),
        "slowest_ms": report["slowest"] / 1e6,
        "backlog_slope_per_s": growth,
        "backlog_end": end_backlog,
        "backlog_max": max((y for _, y in backlog), default=0.0),
        "no_backlog_growth": growth < 1.0 and end_backlog < rps,
        "drained_after_s": (last - t0 - seconds) if last is not None else None,
        "cores": sampler.cores(),
        "machine_cores": sampler.machine_cores(),
        "cpu_ms_per_job": {k: v * 1000 / max(done, 1) for k, v in sampler.cpu_seconds.items()},
        "samples": [
            {"t": s.t, "backlog": (s.backlog or 0) + s.queue, "machine": s.machine}
            for s in sampler.samples
        ],
        "per_second": details_per_second(report),
        "ledger_series": series,
        **costs.per_job(done),
    }
