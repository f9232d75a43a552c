"""The 60-second demo (`make demo`), against the running local stack.

1. Submit jobs (mostly succeeding, some flaky, a few that fail for good) and watch them finish.
2. Kill a worker process mid-run: its job is delivered again, retries show, nothing is lost.
3. Walk through one dead-lettered job with `dlq-tool show`, and replay it with `dlq-tool replay`.

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
from pathlib import Path

import grpc
import psutil
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, ingest_pb2_grpc, job_pb2

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BATCH = 100
POLL_WINDOW = 200
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_DEAD_LETTERED)


def read_env(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file."""
    if not path.exists():
        sys.exit(f"demo: {path} not found; start the stack with `make up`")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


SLOW_FIRST = 4  # long jobs submitted first: in flight when a worker is killed


def job(i: int, run: str, failures: bool) -> ingest_pb2.SubmitJobRequest:
    """The demo's mix: 1 in 25 flaky (2 planned failures), 1 in 200 failing for good, and a
    few long jobs first, so that killing a worker hits jobs in flight."""
    payload = struct_pb2.Struct()
    task = "demo.echo"
    if i < SLOW_FIRST:
        task = "demo.slow"
        payload.update({"ms": 3000})
    elif failures and i % 200 == 199:
        task = "demo.fail"
        payload.update({"permanent": True, "message": f"card declined for order {i}"})
    elif failures and i % 25 == 24:
        task = "demo.flaky"
        payload.update({"fail_times": 2})
    elif i % 10 == 9:
        task = "demo.slow"
        payload.update({"ms": 20})
    else:
        payload.update({"n": i, "run": run})
    return ingest_pb2.SubmitJobRequest(
        task=task, payload=payload, idempotency_key=f"demo-{run}-{i}"
    )


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


async def submit(
    stub: ingest_pb2_grpc.IngestServiceAsyncStub, jobs: int, run_id: str, failures: bool
) -> tuple[list[str], dict[str, str]]:
    ids: list[str] = []
    tasks: dict[str, str] = {}
    for start in range(0, jobs, BATCH):
        batch = [job(i, run_id, failures) for i in range(start, min(start + BATCH, jobs))]
        reply = await stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=batch))
        for item, result in zip(batch, reply.results, strict=True):
            if result.WhichOneof("outcome") == "job":
                ids.append(result.job.job_id)
                tasks[result.job.job_id] = item.task
            else:
                print(f"  refused: {result.error.code} {result.error.message}")
    return ids, tasks


async def run(args: argparse.Namespace) -> int:
    env = read_env(args.env_file)
    state_dir = args.env_file.parent
    address = env["RELAYQ_INGEST_GRPC"]
    run_id = uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        print(f"1. submitting {args.jobs} jobs to {address} ...")
        t0 = time.monotonic()
        ids, tasks = await submit(stub, args.jobs, run_id, not args.no_failures)
        submit_seconds = time.monotonic() - t0
        print(
            f"   submitted {len(ids)} in {submit_seconds:.2f}s "
            f"({len(ids) / submit_seconds:.0f} jobs/s); workers are on it"
        )

        final: dict[str, job_pb2.Job] = {}
        pending = list(ids)
        killed = args.no_kill
        deadline = time.monotonic() + args.timeout
        while pending and time.monotonic() < deadline:
            window = pending[:POLL_WINDOW]
            replies = await asyncio.gather(
                *(stub.GetJob(ingest_pb2.GetJobRequest(job_id=j)) for j in window)
            )
            for r in replies:
                if r.job.state in TERMINAL:
                    final[r.job.job_id] = r.job
            pending = [j for j in pending if j not in final]
            print("\r   " + bar(len(final), len(ids)), end="", flush=True)
            if not killed:
                slow = await stub.GetJob(ingest_pb2.GetJobRequest(job_id=ids[0]))
                if slow.job.state == job_pb2.JOB_STATE_RUNNING or time.monotonic() - t0 > 10:
                    killed = True
                    print(f"\n2. mid-run: {kill_a_worker(state_dir)}")
            if pending and not any(j in final for j in window):
                await asyncio.sleep(0.2)
        print()

    succeeded = [j for j in final.values() if j.state == job_pb2.JOB_STATE_SUCCEEDED]
    dead = [j for j in final.values() if j.state == job_pb2.JOB_STATE_DEAD_LETTERED]
    retried = [j for j in succeeded if j.attempt_count > 1]
    lost_attempts = sum(1 for j in final.values() for a in j.attempts if a.outcome == "worker_lost")
    print("\nsummary")
    print(f"  jobs submitted        {len(ids)}")
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
        first = min(j.created_at.ToDatetime() for j in finished)
        last = max(j.finished_at.ToDatetime() for j in finished)
        span = max((last - first).total_seconds(), 1e-6)
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
        print(f"\n$ dlq-tool replay {entry} --yes")
        print(dlq_tool(env, "replay", entry, "--yes"))
        print("\n$ dlq-tool stats")
        print(dlq_tool(env, "stats"))

    print("\nthe stack is still up:")
    for key, value in env.items():
        if "TOKEN" not in key:
            print(f"  {key:<24} {value}")
    print("stop it with `make down`")
    ok = not pending and len(succeeded) + len(dead) == len(ids) and len(dead) == expected_dead
    return 0 if ok else 1


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
