"""The 60-second demo (`make demo`), against the running local stack.

1. Submit jobs (mostly succeeding, some flaky, a few that fail for good) with the load tool
   (``relayq-load``, its progress on the terminal and a ghz report per run), and watch them
   finish.
2. Kill a worker process mid-run: its job is delivered again, retries show, nothing is lost.
3. Walk through one dead-lettered job with `dlq-tool show`, print its trace with `relayq-trace`,
   and replay it with `dlq-tool replay`.

Reads the endpoints (and the DLQ admin token) from ``.relayq/stack.env``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

from relayq.v1 import ingest_pb2, ingest_pb2_grpc, job_pb2
from relayq_load.cli import submit_argv

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POLL_WINDOW = 200
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_DEAD_LETTERED)


def read_env(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file."""
    if not path.exists():
        sys.exit(f"demo: {path} not found; start the stack with `make up`")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


SLOW_FIRST = 4  # long jobs submitted first: in flight when a worker is killed


@dataclass(frozen=True)
class Group:
    """Jobs of one kind, submitted by one run of the load tool."""

    name: str
    count: int
    task: str
    payload: str  # JSON with the tool's {{...}} actions

    def job_id(self, run: str, n: int) -> str:
        return f"demo-{run}-{self.name}-{n}"

    def data(self, run: str) -> str:
        """The tool's call data: the client names each job (so the demo can follow it)."""
        key = self.job_id(run, 0)[:-1] + "{{.RequestNumber}}"
        return (
            f'{{"task": "{self.task}", "payload": {self.payload}, '
            f'"job_id": "{key}", "idempotency_key": "{key}"}}'
        )


def mix(jobs: int, run: str, failures: bool) -> list[Group]:
    """The demo's jobs: a few long ones first (in flight when a worker is killed), 1 in 25
    flaky (2 planned failures), 1 in 200 failing for good, 1 in 10 brief slow, the rest echo."""
    groups = [Group("long", min(SLOW_FIRST, jobs), "demo.slow", '{"ms": 3000}')]
    if failures:
        groups.append(Group("flaky", jobs // 25, "demo.flaky", '{"fail_times": 2}'))
        groups.append(
            Group(
                "declined",
                jobs // 200,
                "demo.fail",
                '{"permanent": true, "message": "card declined for order {{.RequestNumber}}"}',
            )
        )
    groups.append(Group("brief", jobs // 10, "demo.slow", '{"ms": 20}'))
    rest = jobs - sum(g.count for g in groups)
    groups.append(
        Group("echo", rest, "demo.echo", f'{{"n": {{{{.RequestNumber}}}}, "run": "{run}"}}')
    )
    return [g for g in groups if g.count > 0]


def bar(done: int, total: int, width: int = 40) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def kill_a_worker(state_dir: Path) -> str:
    """SIGKILLs every pool process of the first worker node (jobs in flight die with them; the
    node starts new ones); what it did, in words."""
    stack = json.loads((state_dir / "stack.json").read_text())
    node = next(c for c in stack["components"] if c["name"].startswith("worker"))
    children = psutil.Process(node["pid"]).children()
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
    pids = ", ".join(str(c.pid) for c in children) or "none found"
    return f"killed the pool processes of {node['name']} with SIGKILL (pids {pids})"


def dlq_tool(env: dict[str, str], *args: str) -> str:
    """Runs dlq-tool against the stack and returns what it printed."""
    out = subprocess.run(
        [str(BIN / "dlq-tool"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (out.stdout + out.stderr).rstrip()


def relayq_trace(traces: Path, job_id: str) -> str:
    """The job's trace as relayq-trace prints it, once its dead letter's spans are written
    (span files get each process's finished spans every second)."""
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(
            [str(BIN / "relayq-trace"), job_id, "--dir", str(traces)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = (out.stdout + out.stderr).rstrip()
        if "dlq_reason=" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def load_tool(
    address: str, group: Group, run: str, report: Path, quiet: bool
) -> subprocess.Popen[bytes]:
    """Starts ``relayq-load`` submitting ``group`` (its progress on the terminal unless quiet)."""
    shape = ["-n", str(group.count), "-c", str(min(group.count, 50))]
    shape += ["--name", f"demo {group.name}", *(["--quiet"] if quiet else [])]
    argv = submit_argv(address, group.data(run), report, *shape)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL)


def wait_for(procs: list[tuple[Group, subprocess.Popen[bytes]]]) -> None:
    """Waits for load tool runs; exits if one failed."""
    for group, proc in procs:
        if proc.wait() != 0:
            sys.exit(f"demo: relayq-load failed for the {group.name} jobs")


def collect(
    groups: list[Group], run: str, reports: Path
) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """The job ids, their tasks, and the main run's ghz report."""
    ids: list[str] = []
    tasks: dict[str, str] = {}
    main = max(groups, key=lambda g: g.count)
    main_report: dict[str, Any] = {}
    for group in groups:
        report = json.loads((reports / f"{group.name}.json").read_text())
        ok = int(report["statusCodeDistribution"].get("OK", 0))
        if ok != group.count:
            print(f"  refused: {group.count - ok} {group.name} jobs: {report['errorDistribution']}")
        if group is main:
            main_report = report
        for n in range(group.count):
            ids.append(group.job_id(run, n))
            tasks[ids[-1]] = group.task
    return ids, tasks, main_report


async def run(args: argparse.Namespace) -> int:
    env = read_env(args.env_file)
    state_dir = args.env_file.parent
    address = env["RELAYQ_INGEST_GRPC"]
    run_id = uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        groups = mix(args.jobs, run_id, not args.no_failures)
        print(
            f"1. submitting {args.jobs} jobs to {address} with relayq-load: "
            + ", ".join(f"{g.count} {g.task} ({g.name})" for g in groups)
        )
        reports = state_dir / "demo-reports"
        reports.mkdir(parents=True, exist_ok=True)
        first, *others = groups
        main = max(groups, key=lambda g: g.count)

        def start(group: Group) -> tuple[Group, subprocess.Popen[bytes]]:
            path = reports / f"{group.name}.json"
            return group, load_tool(address, group, run_id, path, quiet=group is not main)

        t0 = time.monotonic()
        await asyncio.to_thread(wait_for, [start(first)])  # the long jobs, first
        running = [start(g) for g in others]
        killed = args.no_kill
        if not killed:
            # While the rest is being submitted, the long jobs run: kill their worker's pool.
            until = time.monotonic() + 10
            while time.monotonic() < until:
                long = await stub.GetJob(ingest_pb2.GetJobRequest(job_id=first.job_id(run_id, 0)))
                if long.job.state == job_pb2.JOB_STATE_RUNNING:
                    break
                await asyncio.sleep(0.05)
            killed = True
            print(f"2. mid-run: {kill_a_worker(state_dir)}", flush=True)
        await asyncio.to_thread(wait_for, running)
        ids, tasks, report = collect(groups, run_id, reports)
        submit_seconds = time.monotonic() - t0
        latency = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"]}
        print(
            f"   submitted {len(ids)} in {submit_seconds:.2f}s; the {report['count']}-call run: "
            f"{report['rps']:.0f} calls/s, p50 {latency[50]:.1f} ms, p99 {latency[99]:.1f} ms "
            f"(ghz reports: {reports}); workers are on it"
        )

        final: dict[str, job_pb2.Job] = {}
        refused: set[str] = set()
        pending = list(ids)
        deadline = time.monotonic() + args.timeout
        while pending and time.monotonic() < deadline:
            window = pending[:POLL_WINDOW]
            replies = await asyncio.gather(
                *(stub.GetJob(ingest_pb2.GetJobRequest(job_id=j)) for j in window),
                return_exceptions=True,
            )
            for job_id, r in zip(window, replies, strict=True):
                if isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.NOT_FOUND:
                    refused.add(job_id)  # its submit was refused (counted above)
                elif isinstance(r, BaseException):
                    raise r
                elif r.job.state in TERMINAL:
                    final[r.job.job_id] = r.job
            pending = [j for j in pending if j not in final and j not in refused]
            print("\r   " + bar(len(final), len(ids)), end="", flush=True)
            if pending and not any(j in final for j in window):
                await asyncio.sleep(0.2)
        print()

    succeeded = [j for j in final.values() if j.state == job_pb2.JOB_STATE_SUCCEEDED]
    dead = [j for j in final.values() if j.state == job_pb2.JOB_STATE_DEAD_LETTERED]
    retried = [j for j in succeeded if j.attempt_count > 1]
    lost_attempts = sum(1 for j in final.values() for a in j.attempts if a.outcome == "worker_lost")
    print("\nsummary")
    print(f"  jobs submitted        {len(ids) - len(refused)}")
    print(f"  succeeded             {len(succeeded)}   (of which retried: {len(retried)})")
    print(f"  dead-lettered         {len(dead)}   (permanent failures, in the DLQ)")
    print(f"  unfinished            {len(pending)}")
    print(
        f"  lost jobs             {len(pending)}   (worker-lost attempts redelivered: "
        f"{lost_attempts})"
    )
    expected_dead = sum(1 for t in tasks.values() if t == "demo.fail")
    finished = [j for j in final.values() if j.finished_at.seconds]
    if finished:
        earliest = min(j.created_at.ToDatetime() for j in finished)
        last = max(j.finished_at.ToDatetime() for j in finished)
        span = max((last - earliest).total_seconds(), 1e-6)
        latencies = sorted(
            (j.finished_at.ToDatetime() - j.created_at.ToDatetime()).total_seconds()
            for j in finished
        )
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(
            f"  throughput            {len(finished) / span * 60:,.0f} jobs/min "
            f"(first submit to last finish: {span:.2f}s)"
        )
        print(
            f"  submit-to-done        p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms"
        )

    if dead and not args.no_failures:
        entry = dead[0].job_id
        print(f"\n3. the DLQ: one entry, as the on-call engineer sees it\n$ dlq-tool show {entry}")
        print(dlq_tool(env, "show", entry))
        print(f"\n$ relayq-trace {entry}   # its trace, from the stack's span files")
        print(relayq_trace(args.env_file.parent / "traces", entry))
        print(f"\n$ dlq-tool replay {entry} --yes")
        print(dlq_tool(env, "replay", entry, "--yes"))
        print("\n$ dlq-tool stats")
        print(dlq_tool(env, "stats"))

    print("\nwhere to look")
    for line in where_to_look(env):
        print(f"  {line}")

    print("\nthe stack is still up:")
    for key, value in env.items():
        if "TOKEN" not in key:
            print(f"  {key:<24} {value}")
    print("stop it with `make down`")
    ok = (
        not pending
        and not refused
        and len(succeeded) + len(dead) == len(ids)
        and len(dead) == expected_dead
    )
    return 0 if ok else 1


def where_to_look(env: dict[str, str]) -> list[str]:
    """The monitoring URLs of the stack and the commands that read it, for the summary."""
    lines: list[str] = []
    if "RELAYQ_PROMETHEUS_URL" in env:
        lines.append(f"Prometheus (metrics, alert rules)  {env['RELAYQ_PROMETHEUS_URL']}")
    if "RELAYQ_ALERTMANAGER_URL" in env:
        lines.append(f"Alertmanager (routing, silences)   {env['RELAYQ_ALERTMANAGER_URL']}")
    if "RELAYQ_ALERT_SINK_URL" in env:
        lines.append(f"alerts it sent                     {BIN / 'relayq-alerts'}")
    return lines or ["no Prometheus in this stack (make setup installs it)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for jobs")
    parser.add_argument("--no-kill", action="store_true", help="do not kill a worker mid-run")
    parser.add_argument("--no-failures", action="store_true", help="only succeeding jobs")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=REPO / ".relayq" / "stack.env",
        help="the stack's endpoints (written by relayq-stack up)",
    )
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
