"""``make bench`` (``python -m relayq_load.bench``): relayq against bare Celery on this machine.

For each worker layout (the first one gives the headline figures):

1. a fresh local stack in the bench's own state directory (durable PostgreSQL), a short
   warm-up, worker RSS;
2. ``--runs`` times, interleaved: relayq end to end with single ``SubmitJob`` calls, with
   ``SubmitJobs`` batches, and the bare-Celery baseline on the same Redis;
3. (headline layout) a steady ``--rps`` load with the load tool for ``--sustain`` seconds;
4. (headline layout) py-spy on ingest, a worker's consumer and one of its pool processes
   during one more batched run;
5. worker RSS again; the stack goes down.

The results go to ``<state dir>/results.json``; ``docs/benchmarks.md`` and its PNG are written
from them (``--render`` rewrites them from a results file without running anything).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import structlog

from relayq_devstack.config import find_repo_root
from relayq_devstack.health import celery_workers_ready
from relayq_devstack.process import ServiceProcess, stop_all
from relayq_load import baseline
from relayq_load.bench.doc import render
from relayq_load.bench.e2e import e2e_run
from relayq_load.bench.profile import Target, profile
from relayq_load.bench.sampler import Sampler, other_load, own_load, rss_bytes
from relayq_load.bench.stack import BIN, BenchStack, Layout, Processes
from relayq_load.bench.sustain import sustain_run
from relayq_load.config import clean_child_env

REPO = find_repo_root(Path(__file__).resolve()) or Path.cwd()
BASELINE_DB = 15


def log(message: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def parser() -> argparse.ArgumentParser:
    """The bench's options."""
    p = argparse.ArgumentParser(prog="relayq-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default="2x2", help="NODESxPROCESSES, comma-separated (2x2)")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each kind (3)")
    p.add_argument(
        "--other-runs", type=int, default=1, help="runs of each kind for the other layouts (1)"
    )
    p.add_argument("--jobs", type=int, default=6000, help="jobs per relayq run (6000)")
    p.add_argument("--batch-size", type=int, default=100, help="jobs per SubmitJobs (100)")
    p.add_argument("--single-concurrency", type=int, default=64, help="SubmitJob in flight (64)")
    p.add_argument("--batch-concurrency", type=int, default=4, help="SubmitJobs in flight (4)")
    p.add_argument("--baseline-jobs", type=int, default=30_000, help="per baseline run (30000)")
    p.add_argument("--sustain", type=float, default=300, help="seconds at --rps (300; 0: skip)")
    p.add_argument("--rps", type=int, default=200, help="steady submits/s (200 = 12k/min)")
    p.add_argument("--profile", type=int, default=20, help="py-spy seconds (20; 0: skip)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        help="before each timed run, wait up to this many seconds for the machine's other load "
        "to fall under --quiet-cores (120)",
    )
    p.add_argument("--quiet-cores", type=float, default=0.3, help="see --wait-quiet (0.3)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 1 small run of each")
    p.add_argument("--state-dir", type=Path, default=REPO / ".relayq" / "bench")
    p.add_argument("--doc", type=Path, help="markdown to write (default: docs/benchmarks.md)")
    p.add_argument("--render", type=Path, metavar="RESULTS", help="only rewrite the doc")
    return p


def _apply_quick(args: argparse.Namespace) -> None:
    args.runs, args.jobs, args.baseline_jobs = 1, 1000, 5000
    args.sustain, args.profile, args.wait_quiet = min(args.sustain, 15), 0, 0


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import celery
    import grpc

    return {
        "cpu": model,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "celery": celery.__version__,
        "grpcio": grpc.__version__,
        "load_average_at_start": list(psutil.getloadavg()),
    }


def worker_rss(stack: BenchStack) -> dict[str, int]:
    """RSS of the worker consumers and of their pool processes (bytes)."""
    procs = stack.processes()
    mains = [r for r in procs.groups if r.startswith("worker") and not r.endswith("-pool")]
    pools = [r for r in procs.groups if r.endswith("-pool")]
    return {
        "consumers": rss_bytes(procs.pids(*mains)),
        "pools": rss_bytes(procs.pids(*pools)),
        "pool_processes": len(procs.pids(*pools)),
    }


async def baseline_run(workers: BaselineWorkers, jobs: int) -> dict[str, Any]:
    """One bare-Celery run, with the CPU its processes used."""
    sampler = Sampler(
        find_processes=lambda: Processes({"baseline workers": workers.pids()}),
        redis_url=workers.url,
        queue=baseline.QUEUE,
    )
    sampler.start()
    try:
        result = await asyncio.to_thread(baseline.run_baseline, workers.url, jobs, workers.nodes)
    finally:
        await sampler.stop()
    result["cores"] = sampler.cores()
    result["machine_cores"] = sampler.machine_cores()
    result["cpu_ms_per_job"] = {k: v * 1000 / jobs for k, v in sampler.cpu_seconds.items()}
    return result


class BaselineWorkers:
    """Bare Celery worker nodes in the same layout as relayq's, on their own Redis database."""

    def __init__(self, stack: BenchStack, layout: Layout) -> None:
        self.url = stack.redis_url_db(BASELINE_DB)
        self.nodes: list[str] = []
        self.procs: list[ServiceProcess] = []
        logs = stack.state_dir / "logs"
        for node in range(1, layout.workers + 1):
            self.procs.append(
                ServiceProcess(
                    f"baseline{node}",
                    baseline.worker_argv(BIN, node, layout.concurrency),
                    log_path=logs / f"baseline{node}.log",
                    env=clean_child_env(RELAYQ_BASELINE_BROKER_URL=self.url),
                    inherit_env=False,
                )
            )
        deadline = time.monotonic() + 120
        while not celery_workers_ready(self.url, layout.workers, name_prefix="baseline"):
            if time.monotonic() > deadline or not all(p.is_running() for p in self.procs):
                self.stop()
                raise RuntimeError(f"baseline workers did not start; see {logs}/baseline*.log")
            time.sleep(0.5)
        from relayq_devstack.health import celery_nodes

        self.nodes = sorted(n for n in celery_nodes(self.url, 2.0) if n.startswith("baseline"))

    def pids(self) -> list[int]:
        """Consumers and pool processes."""
        out = []
        for proc in self.procs:
            out.append(proc.pid)
            try:
                out += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:
                pass
        return out

    def stop(self) -> None:
        """Stops every node."""
        stop_all(self.procs, 15)


async def wait_quiet(args: argparse.Namespace, stack: BenchStack) -> float:
    """Waits (up to ``--wait-quiet`` s) until other load falls under ``--quiet-cores``."""
    deadline = time.monotonic() + args.wait_quiet
    while True:
        other = await other_load(stack.processes)
        if other <= args.quiet_cores or time.monotonic() >= deadline:
            if other > args.quiet_cores:
                log(f"the machine is busy with other work ({other:.2f} cores): running anyway")
            return other
        log(f"waiting for the machine to quieten (other load {other:.2f} cores)")


async def settle(stack: BenchStack, timeout: float = 120.0) -> dict[str, float]:
    """Lets the stack finish what the saturating runs left it (autovacuum of ~100,000 updated
    ledger rows, dirty buffers), so the steady run measures a system in steady state rather
    than its recovery: a VACUUM and a CHECKPOINT, then until its processes use < 0.1 cores."""
    start = time.monotonic()
    # One statement per call: psql -c runs several in one transaction, where VACUUM cannot.
    await asyncio.to_thread(stack.psql, "VACUUM (ANALYZE) relayq_jobs, relayq_job_attempts")
    await asyncio.to_thread(stack.psql, "CHECKPOINT")
    while True:
        idle = await own_load(stack.processes)
        waited = time.monotonic() - start
        if idle < 0.1 or waited >= timeout:
            log(f"settled in {waited:.0f} s (the stack's own load {idle:.2f} cores)")
            return {"seconds": waited, "stack_cores": idle}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


async def bench_layout(args: argparse.Namespace, layout: Layout, headline: bool) -> dict[str, Any]:
    """Every measurement for one layout."""
    stack = BenchStack(args.state_dir / str(layout), layout)
    log(f"{layout}: starting a fresh stack in {stack.state_dir}")
    stack.up()
    out: dict[str, Any] = {"layout": str(layout), "runs": {"single": [], "batched": []}}
    runs = args.runs if headline else args.other_runs
    try:
        await e2e_run(stack, jobs=200, batch=50, concurrency=2, label="warmup")
        out["rss_before"] = worker_rss(stack)
        processed = 0
        workers = await asyncio.to_thread(BaselineWorkers, stack, layout)
        baseline_runs: list[dict[str, Any]] = []
        try:
            for r in range(runs):
                for kind, batch, conc in (
                    ("single", 1, args.single_concurrency),
                    ("batched", args.batch_size, args.batch_concurrency),
                ):
                    log(f"{layout}: run {r + 1}/{runs} {kind}: {args.jobs} jobs")
                    quiet = await wait_quiet(args, stack)
                    run = await e2e_run(
                        stack, jobs=args.jobs, batch=batch, concurrency=conc, label=kind
                    )
                    run["other_load_before"] = quiet
                    processed += run["accepted"]
                    log(
                        f"{layout}: {kind}: {run['jobs_per_min']:,.0f} jobs/min "
                        f"({run['seconds']:.1f} s, machine {run['machine_cores']:.2f} cores, "
                        f"other load {run['cores'].get('other', 0):.2f} cores)"
                    )
                    out["runs"][kind].append(run)
                log(f"{layout}: run {r + 1}/{runs} bare Celery: {args.baseline_jobs} tasks")
                quiet = await wait_quiet(args, stack)
                base = await baseline_run(workers, args.baseline_jobs)
                base["other_load_before"] = quiet
                log(f"{layout}: bare Celery: {base['jobs_per_min']:,.0f} jobs/min")
                baseline_runs.append(base)
        finally:
            workers.stop()
        out["baseline"] = baseline_runs
        for kind in ("single", "batched"):
            out[f"{kind}_median_jobs_per_min"] = _median(
                [r["jobs_per_min"] for r in out["runs"][kind]]
            )
        out["baseline_median_jobs_per_min"] = _median([b["jobs_per_min"] for b in baseline_runs])
        if headline and args.sustain > 0:
            log(f"{layout}: steady {args.rps}/s for {args.sustain:.0f} s (relayq-load)")
            out["settled"] = await settle(stack)
            await wait_quiet(args, stack)
            sustain = await sustain_run(
                stack,
                seconds=args.sustain,
                rps=args.rps,
                concurrency=50,
                out_dir=stack.state_dir / "reports",
            )
            processed += sustain["ok"]
            log(
                f"{layout}: p50 {sustain['p50_ms']:.1f} ms, p99 {sustain['p99_ms']:.1f} ms, "
                f"backlog slope {sustain['backlog_slope_per_s']:+.2f}/s"
            )
            out["sustain"] = sustain
        if headline and args.profile > 0:
            procs = stack.processes()
            targets = [Target("ingest", procs.groups["ingest"][0])]
            targets.append(Target("worker consumer", procs.groups["worker1"][0]))
            pool = procs.groups.get("worker1-pool", [])
            if pool:
                targets.append(Target("worker pool process", pool[0]))
            rate = out["batched_median_jobs_per_min"] / 60 or 100.0
            jobs = int(max(args.jobs, rate * (args.profile + 10)))
            log(f"{layout}: py-spy for {args.profile} s during a batched run of {jobs} jobs")
            await wait_quiet(args, stack)
            holder: dict[str, Any] = {}

            async def spy() -> None:
                await asyncio.sleep(2)
                holder.update(await profile(targets, args.profile, stack.state_dir / "profiles"))

            run = await e2e_run(
                stack,
                jobs=jobs,
                batch=args.batch_size,
                concurrency=args.batch_concurrency,
                label="profiled",
                during=spy,
            )
            processed += run["accepted"]
            out["profile"] = {"jobs_per_min": run["jobs_per_min"], "processes": holder}
        out["rss_after"] = worker_rss(stack)
        out["jobs_between_rss"] = processed
    finally:
        log(f"{layout}: stopping the stack")
        stack.down()
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; the results as a JSON-ready dict."""
    layouts = [Layout.parse(t) for t in args.layouts.split(",") if t.strip()]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("render", "doc")
        },
        "headline": str(layouts[0]),
        "layouts": {},
    }
    started = time.monotonic()
    for i, layout in enumerate(layouts):
        results["layouts"][str(layout)] = await bench_layout(args, layout, headline=i == 0)
    results["minutes"] = (time.monotonic() - started) / 60
    return results


def _quiet_logging() -> None:
    # relayq_devstack logs every process it starts; the bench prints its own progress.
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relayq-bench`` / ``python -m relayq_load.bench``."""
    args = parser().parse_args(argv)
    _quiet_logging()
    doc = args.doc or (REPO / "docs" / "benchmarks.md")
    if args.render is not None:
        results = json.loads(args.render.read_text(encoding="utf-8"))
        render(results, doc)
        log(f"wrote {doc}")
        return 0
    if args.quick:
        _apply_quick(args)
        doc = args.doc or (args.state_dir / "benchmarks.md")
    results = asyncio.run(bench(args))
    args.state_dir.mkdir(parents=True, exist_ok=True)
    path = args.state_dir / ("results-quick.json" if args.quick else "results.json")
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    render(results, doc)
    log(f"results in {path}; wrote {doc} ({results['minutes']:.1f} min)")
    return 0
