"""``relayq-outage``: submits at a steady rate through a Redis stall and a Redis outage, and
reports what the submitters saw and whether every accepted job ran.

    relayq-outage [--faults stall,outage] [--fault-seconds 60] [--rate 50]

It starts a local stack of its own (``relayq_devstack``, as ``make up`` does: durable
PostgreSQL, Redis with its AOF, ingest, 2 worker nodes of 2 processes, dlq-svc, the reconciler
with its default settings), then for each fault: ``--before`` seconds of load, the fault for
``--fault-seconds`` while the load goes on, ``--after`` seconds more, then it waits until every
accepted job has run. The load is open-loop (``--rate`` submits a second, alternating
``SubmitJob`` over gRPC and ``POST /v1/jobs`` over HTTP, each call with a ``--deadline``).

- **stall**: ``SIGSTOP`` to Redis, then ``SIGCONT``: connections stay open and nothing answers
  (a hung host, a long fork, a saturated network).
- **outage**: Redis stopped (``SIGTERM``; it writes its AOF), then started again on its port.

Reported per fault and per phase (before / during / after the fault): calls, availability
(answered OK), latency p50 / p99 / max, and answers within 1 s; then from the ledger how many
accepted jobs are ``succeeded``, how long after Redis returned the last one did, the longest
wait from accept to start, duplicate deliveries; and from /metrics what ingest's outbox and the
reconciler did. The results go to ``<state dir>/results.json`` and the summary to stdout (the
Markdown that docs/reliability.md quotes).

To measure another build's ingest against the same stack, put its sources first on the
``PYTHONPATH`` of this command (the stack's processes inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from prometheus_client.parser import text_string_to_metric_families

from relayq_devstack.config import DEFAULT_PORTS, StackConfig, find_repo_root
from relayq_devstack.ports import free_port
from relayq_devstack.redis import RedisServer
from relayq_devstack.stack import Stack
from relayq_load.outage.submitter import Call, Submitter, summarise, timeline

REPO = find_repo_root(Path(__file__).resolve()) or Path.cwd()
FAULTS = ("stall", "outage")
#: Counters read from /metrics before and after each fault (missing ones count as 0).
INGEST_COUNTERS = (
    "relayq_ingest_publish_failures_total",
    "relayq_ingest_published_total",
    "relayq_ingest_outbox_dropped_total",
)
RECONCILER_COUNTERS = ("relayq_reconciler_requeued_total",)


def log(message: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"[outage {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = argparse.ArgumentParser(prog="relayq-outage", description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", default=",".join(FAULTS), help="stall,outage (both)")
    p.add_argument("--fault-seconds", type=float, default=60, help="each fault's length (60)")
    p.add_argument("--before", type=float, default=10, help="load before the fault (10 s)")
    p.add_argument("--after", type=float, default=20, help="load after Redis returns (20 s)")
    p.add_argument("--rate", type=float, default=50, help="submits a second, both doors (50)")
    p.add_argument("--deadline", type=float, default=120, help="each call's deadline (120 s)")
    p.add_argument("--drain-timeout", type=float, default=300, help="for the jobs to run (300)")
    p.add_argument("--workers", type=int, default=2, help="worker nodes (2)")
    p.add_argument("--concurrency", type=int, default=2, help="processes per node (2)")
    p.add_argument(
        "--state-dir", type=Path, default=REPO / ".relayq" / "outage", help="the stack's files"
    )
    p.add_argument("--render", type=Path, help="print the summary of this results.json only")
    return p


def scrape(url: str, names: Sequence[str]) -> dict[str, float]:
    """Counter samples of ``names`` at ``url`` by ``name{labels}``; {} when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """What each counter added (the non-zero ones)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


class Fault:
    """Stops Redis one way and brings it back."""

    def __init__(self, kind: str, redis: RedisServer) -> None:
        self.kind = kind
        self.redis = redis

    async def inject(self) -> None:
        if self.kind == "stall":
            os.kill(self.redis.pid, signal.SIGSTOP)
        else:
            await asyncio.to_thread(self.redis.stop)

    async def heal(self) -> None:
        if self.kind == "stall":
            os.kill(self.redis.pid, signal.SIGCONT)
        else:
            await asyncio.to_thread(self.redis.start)


async def ledger_outcome(
    database_url: str, job_ids: list[str], early: list[str], healed_at: float
) -> dict[str, Any]:
    """The accepted jobs as the ledger has them; ``early``: those accepted before Redis came
    back (at ``healed_at``, a Unix time), whose last finish is what the fault delayed."""
    conn = await asyncpg.connect(database_url)
    try:
        states = {
            r["state"]: r["n"]
            for r in await conn.fetch(
                "SELECT state, count(*) AS n FROM relayq_jobs WHERE job_id = ANY($1::text[])"
                " GROUP BY state",
                job_ids,
            )
        }
        row = await conn.fetchrow(
            "SELECT count(*) AS recorded,"
            " max(extract(epoch FROM started_at - created_at)) AS longest_wait,"
            " sum(duplicate_deliveries) AS duplicates,"
            " sum(attempt_count) AS attempts"
            " FROM relayq_jobs WHERE job_id = ANY($1::text[])",
            job_ids,
        )
        last_early = await conn.fetchval(
            "SELECT max(finished_at) FROM relayq_jobs WHERE job_id = ANY($1::text[])", early
        )
    finally:
        await conn.close()
    assert row is not None
    return {
        "states": states,
        "recorded": row["recorded"],
        "longest_wait_s": round(float(row["longest_wait"] or 0), 1),
        "early_done_after_redis_returned_s": (
            round(last_early.timestamp() - healed_at, 1) if last_early else None
        ),
        "duplicate_deliveries": int(row["duplicates"] or 0),
        "attempts": int(row["attempts"] or 0),
    }


async def run_fault(kind: str, stack: Stack, env: dict[str, str], args: Any) -> dict[str, Any]:
    """One fault under load (see the module docstring)."""
    assert stack.redis is not None
    fault = Fault(kind, stack.redis)
    ingest_metrics = env["RELAYQ_INGEST_HTTP"] + "/metrics"
    reconciler_metrics = env["RELAYQ_RECONCILER_URL"] + "/metrics"
    counters = (
        scrape(ingest_metrics, INGEST_COUNTERS),
        scrape(reconciler_metrics, RECONCILER_COUNTERS),
    )
    submitter = Submitter(
        env["RELAYQ_INGEST_GRPC"],
        env["RELAYQ_INGEST_HTTP"],
        f"{kind}-{uuid.uuid4().hex[:8]}",
        args.deadline,
    )
    started = time.monotonic()
    total = args.before + args.fault_seconds + args.after
    load = asyncio.create_task(submitter.submit_for(total, args.rate, started))
    await asyncio.sleep(args.before)
    log(f"{kind}: Redis {'SIGSTOPped' if kind == 'stall' else 'stopped'}")
    injected = time.monotonic() - started
    await fault.inject()
    await asyncio.sleep(max(0.0, started + args.before + args.fault_seconds - time.monotonic()))
    await fault.heal()
    healed = time.monotonic() - started
    healed_at = time.time()
    log(f"{kind}: Redis back after {healed - injected:.1f} s; load goes on for {args.after:.0f} s")
    await load
    log(f"{kind}: {len(submitter.calls)} calls answered; waiting for the accepted jobs to run")
    accepted = [c.job_id for c in submitter.calls if c.ok]
    early = [c.job_id for c in submitter.calls if c.ok and c.sent < healed]
    deadline = time.monotonic() + args.drain_timeout
    while True:
        outcome = await ledger_outcome(env["RELAYQ_DATABASE_URL"], accepted, early, healed_at)
        done = outcome["states"].get("succeeded", 0)
        if done == len(accepted) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    phases = {
        "before": [c for c in submitter.calls if c.sent < injected],
        "during": [c for c in submitter.calls if injected <= c.sent < healed],
        "after": [c for c in submitter.calls if c.sent >= healed],
    }
    return {
        "fault": kind,
        "fault_seconds": round(healed - injected, 1),
        "rate": args.rate,
        "phases": {name: summarise(calls) for name, calls in phases.items()},
        "doors": {
            door: summarise([c for c in phases["during"] if c.door == door])
            for door in ("grpc", "http")
        },
        "all": summarise(submitter.calls),
        "accepted": len(accepted),
        "succeeded": outcome["states"].get("succeeded", 0),
        "ledger": outcome,
        "all_ran": done == len(accepted),
        "ingest": delta(scrape(ingest_metrics, INGEST_COUNTERS), counters[0]),
        "reconciler": delta(scrape(reconciler_metrics, RECONCILER_COUNTERS), counters[1]),
        "slowest": [_call(c) for c in sorted(submitter.calls, key=lambda c: -c.seconds)[:3]],
        "injected_s": round(injected, 2),
        "healed_s": round(healed, 2),
        "timeline": timeline(submitter.calls),
    }


def _call(call: Call) -> dict[str, Any]:
    return {"door": call.door, "sent_s": round(call.sent, 2), "s": round(call.seconds, 3)}


def render(results: dict[str, Any]) -> str:
    """The Markdown summary (one table of submits, one of jobs)."""
    lines = [
        f"{results['runs'][0]['rate']:.0f} submits/s (alternating gRPC and HTTP), open loop; "
        f"`{results['command']}`",
        "",
        "| fault | phase | calls | answered OK | within 1 s | p50 | p99 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        for phase, s in run["phases"].items():
            label = f"{run['fault']} ({run['fault_seconds']:.0f} s)"
            lines.append(
                f"| {label} | {phase} | {s['calls']} | {s['availability_pct']} % | "
                f"{s['within_bound_pct']} % | {s['p50_ms']} ms | {s['p99_ms']} ms | "
                f"{s['max_ms']} ms |"
            )
    lines += [
        "",
        "| fault | accepted | succeeded | last job accepted before Redis returned: done "
        "| longest accept→start | duplicate deliveries | ingest publish failures "
        "| left to the reconciler | reconciler re-published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        ingest, reconciler = run["ingest"], run["reconciler"]
        failures = ingest.get("relayq_ingest_publish_failures_total", 0)
        left = sum(v for k, v in ingest.items() if "dropped" in k)
        requeued = ", ".join(
            f"{k.split('=')[-1].rstrip('}')} {v:.0f}" for k, v in reconciler.items()
        )
        ran = run["ledger"]["early_done_after_redis_returned_s"]
        lines.append(
            f"| {run['fault']} | {run['accepted']} | {run['succeeded']} | "
            f"{ran} s after it returned | "
            f"{run['ledger']['longest_wait_s']} s | {run['ledger']['duplicate_deliveries']} | "
            f"{failures:.0f} | {left:.0f} | {requeued or '0'} |"
        )
    return "\n".join(lines)


async def measure(args: Any) -> dict[str, Any]:
    """Starts the stack, runs each fault, stops the stack."""
    ports = {name: free_port() for name in DEFAULT_PORTS}
    config = StackConfig(
        state_dir=args.state_dir,
        redis_port=free_port(),
        postgres_port=free_port(),
        ports=ports,
        explicit_ports=frozenset(ports),
        workers=args.workers,
        concurrency=args.concurrency,
        timeout=180.0,
        skip=frozenset({"flower", "prometheus"}),
    )
    stack = Stack(config)
    log(f"starting a stack in {args.state_dir}")
    info = await asyncio.to_thread(stack.up)
    runs = []
    try:
        for kind in args.faults.split(","):
            if kind not in FAULTS:
                raise SystemExit(f"relayq-outage: unknown fault {kind!r} (stall, outage)")
            runs.append(await run_fault(kind, stack, info.env, args))
    finally:
        log("stopping the stack")
        await asyncio.to_thread(stack.down, 20)
    return {"runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relayq-outage`` / ``python -m relayq_load.outage``."""
    args = parser().parse_args(argv)
    if args.render is not None:  # the summary of an earlier run, without running anything
        sys.stdout.write(render(json.loads(args.render.read_text(encoding="utf-8"))) + "\n")
        return 0
    # relayq_devstack logs every process it starts; this command prints its own progress.
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    results = asyncio.run(measure(args))
    results["command"] = " ".join(["relayq-outage", *(argv or sys.argv[1:])])
    args.state_dir.mkdir(parents=True, exist_ok=True)
    path = args.state_dir / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    sys.stdout.write(render(results) + "\n")
    log(f"results in {path}")
    return 0 if all(r["all_ran"] for r in results["runs"]) else 1
