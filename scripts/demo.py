"""The 60-second demo: submit jobs to the running local stack, watch them finish, summarise.

Run by ``make demo`` after ``make up``; reads the endpoints from ``.relayq/stack.env``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, ingest_pb2_grpc, job_pb2

REPO = Path(__file__).resolve().parents[1]
BATCH = 100
POLL_WINDOW = 100


def read_env(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file."""
    if not path.exists():
        sys.exit(f"demo: {path} not found; start the stack with `make up`")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


def job(i: int, run: str) -> ingest_pb2.SubmitJobRequest:
    payload = struct_pb2.Struct()
    if i % 10 == 9:
        payload.update({"ms": 20})
        task = "demo.slow"
    else:
        payload.update({"n": i, "run": run})
        task = "demo.echo"
    return ingest_pb2.SubmitJobRequest(
        task=task, payload=payload, idempotency_key=f"demo-{run}-{i}"
    )


def bar(done: int, total: int, width: int = 40) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


async def run(jobs: int, timeout: float, env_file: Path) -> int:
    env = read_env(env_file)
    address = env["RELAYQ_INGEST_GRPC"]
    run_id = uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        print(f"submitting {jobs} jobs to {address} in batches of {BATCH} ...")
        t0 = time.monotonic()
        ids: list[str] = []
        refused = 0
        for start in range(0, jobs, BATCH):
            batch = [job(i, run_id) for i in range(start, min(start + BATCH, jobs))]
            reply = await stub.SubmitJobs(ingest_pb2.SubmitJobsRequest(jobs=batch))
            for result in reply.results:
                if result.WhichOneof("outcome") == "job":
                    ids.append(result.job.job_id)
                else:
                    refused += 1
                    print(f"  refused: {result.error.code} {result.error.message}")
        submit_seconds = time.monotonic() - t0
        print(
            f"submitted {len(ids)} in {submit_seconds:.2f}s "
            f"({len(ids) / submit_seconds:.0f} jobs/s); waiting for workers ..."
        )

        final: dict[str, job_pb2.Job] = {}
        pending = list(ids)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            # Jobs finish roughly in submit order: look at the oldest unfinished ones only, so
            # watching costs the stack little.
            window = pending[:POLL_WINDOW]
            replies = await asyncio.gather(
                *(stub.GetJob(ingest_pb2.GetJobRequest(job_id=j)) for j in window)
            )
            for r in replies:
                if r.job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_DEAD_LETTERED):
                    final[r.job.job_id] = r.job
            pending = [j for j in pending if j not in final]
            print("\r  " + bar(len(final), len(ids)), end="", flush=True)
            if pending and len(final) < len(ids) and not any(j in final for j in window):
                await asyncio.sleep(0.2)
        print()

    states = Counter(
        job_pb2.JobState.Name(j.state).removeprefix("JOB_STATE_").lower() for j in final.values()
    )
    states["unfinished"] = len(pending)
    finished = [j for j in final.values() if j.finished_at.seconds]
    print("\nsummary")
    print(f"  jobs submitted      {len(ids)} (refused {refused})")
    for state, count in sorted(states.items()):
        print(f"  {state:<19} {count}")
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
            f"  throughput          {len(finished) / span * 60:,.0f} jobs/min "
            f"(first submit to last finish: {span:.2f}s)"
        )
        print(
            f"  submit-to-done      p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms"
        )
    print("\nthe stack is still up:")
    for key, value in env.items():
        print(f"  {key:<24} {value}")
    print("stop it with `make down`")
    return 0 if not pending and states.get("succeeded", 0) == len(ids) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for jobs")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=REPO / ".relayq" / "stack.env",
        help="the stack's endpoints (written by relayq-stack up)",
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.jobs, args.timeout, args.env_file)))


if __name__ == "__main__":
    main()
