"""The chaos run's clients: a paced stream of SubmitJobs calls that retry like a real client.

Every job has a client-chosen idempotency key. A call that fails as a whole (ingest killed:
UNAVAILABLE; a deadline) and items answered UNAVAILABLE (Redis or Postgres down) are sent again
with the same keys until ingest accepts them, so every key ends up acknowledged exactly once
from the client's point of view, and the audit can check the system agrees.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, ingest_pb2_grpc

#: Reconnect quickly once ingest is back (gRPC's default backoff grows to two minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

#: Calls with these codes are sent again (same keys); any other is a failure of the run.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class JobPlan:
    """One job of the run and what it must end as."""

    key: str
    task: str
    payload: dict[str, Any]
    #: "succeeded" or "dead_lettered"
    expect: str
    #: The DLQ reason a dead-lettered job should carry.
    reason: str = ""


#: What a webhook job's receiver does to its first requests (each fault costs one retry; the
#: fast policy allows 4). "delay:3" outlasts the workers' 1 s HTTP timeout.
WEBHOOK_FAULTS: list[list[str]] = [[], [], ["503"], ["500", "429:1"], ["delay:3"], ["close"]]


def account(run_id: str, n: int) -> str:
    """A demo.transfer account of this run (its balance is this run's doing alone)."""
    return f"chaos-{run_id}-acct-{n:02d}"


def plan(
    run_id: str, jobs: int, seed: int, hold_ms: int = 0, webhook_url: str = ""
) -> list[JobPlan]:
    """The mix: 30 % demo.transfer, 10 % demo.charge, 20 % demo.echo, 10 % demo.webhook (echo
    when there is no receiver), 20 % demo.flaky, 10 % demo.fail.

    A transfer or charge holds its transaction open for up to ``hold_ms`` (random), so that
    SIGKILLs land in the middle of them, between the effect and the commit. A webhook's body
    tells the receiver which faults to answer its first requests with.
    """
    rng = random.Random(seed)
    out = []
    for i in range(jobs):
        key = f"chaos-{run_id}-{i:06d}"
        roll = i % 10
        if roll < 3:
            source = rng.randrange(23)
            target = (source + 1 + rng.randrange(22)) % 23
            payload: dict[str, Any] = {
                "from": account(run_id, source),
                "to": account(run_id, target),
                "amount_cents": 100 + i,
                "hold_ms": rng.randint(0, hold_ms),
            }
            out.append(JobPlan(key, "demo.transfer", payload, "succeeded"))
        elif roll < 4:
            payload = {
                "account": f"acct-{i % 97}",
                "amount_cents": 100 + i,
                "hold_ms": rng.randint(0, hold_ms),
            }
            out.append(JobPlan(key, "demo.charge", payload, "succeeded"))
        elif roll < 6 or (roll == 6 and not webhook_url):
            out.append(JobPlan(key, "demo.echo", {"i": i, "run": run_id}, "succeeded"))
        elif roll == 6:
            body = {"key": key, "faults": rng.choice(WEBHOOK_FAULTS)}
            out.append(
                JobPlan(key, "demo.webhook", {"url": webhook_url, "body": body}, "succeeded")
            )
        elif roll < 9:
            fail_times = rng.randint(1, 3)  # the fast policy allows 4 retries
            out.append(JobPlan(key, "demo.flaky", {"fail_times": fail_times}, "succeeded"))
        else:
            permanent = rng.random() < 0.5
            out.append(
                JobPlan(
                    key,
                    "demo.fail",
                    {"permanent": permanent, "message": f"chaos {i}"},
                    "dead_lettered",
                    "permanent_error" if permanent else "retries_exhausted",
                )
            )
    return out


@dataclass
class LoadReport:
    """What the clients saw."""

    job_ids: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    failed_calls: Counter[str] = field(default_factory=Counter)
    item_errors: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    resent_items: int = 0
    unexpected: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _request(job: JobPlan) -> ingest_pb2.SubmitJobRequest:
    payload = struct_pb2.Struct()
    payload.update(job.payload)
    return ingest_pb2.SubmitJobRequest(task=job.task, payload=payload, idempotency_key=job.key)


async def _send(
    stub: ingest_pb2_grpc.IngestServiceAsyncStub, batch: list[JobPlan], report: LoadReport
) -> None:
    pending = list(batch)
    while pending:
        report.calls += 1
        try:
            reply = await stub.SubmitJobs(
                ingest_pb2.SubmitJobsRequest(jobs=[_request(j) for j in pending]), timeout=15
            )
        except grpc.aio.AioRpcError as exc:
            report.failed_calls[exc.code().name] += 1
            if exc.code() not in RETRYABLE:
                report.unexpected.append(f"{exc.code().name}: {exc.details()}")
                return
            report.resent_items += len(pending)
            await asyncio.sleep(0.5)
            continue
        again = []
        for result in reply.results:
            job = pending[result.index]
            if result.HasField("job"):
                report.job_ids[job.key] = result.job.job_id
                report.duplicates += result.job.duplicate
            else:
                report.item_errors[result.error.code] += 1
                if result.error.code != "UNAVAILABLE":
                    report.unexpected.append(
                        f"{job.key}: {result.error.code} {result.error.message}"
                    )
                    continue
                again.append(job)
        if again:
            report.resent_items += len(again)
            await asyncio.sleep(0.5)
        pending = again


async def run_load(
    address: str,
    jobs: list[JobPlan],
    seconds: float,
    batch: int,
    senders: int,
    report: LoadReport | None = None,
) -> LoadReport:
    """Submits ``jobs`` evenly over ``seconds`` from ``senders`` concurrent clients."""
    report = report or LoadReport()
    batches = [jobs[i : i + batch] for i in range(0, len(jobs), batch)]
    interval = seconds / max(1, len(batches))
    queue: asyncio.Queue[list[JobPlan] | None] = asyncio.Queue()
    started = time.monotonic()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        async def sender() -> None:
            while (item := await queue.get()) is not None:
                await _send(stub, item, report)

        tasks = [asyncio.create_task(sender()) for _ in range(senders)]
        for n, chunk in enumerate(batches):
            delay = started + n * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await queue.put(chunk)
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    report.seconds = time.monotonic() - started
    return report


def submit_until_accepted(
    stub: ingest_pb2_grpc.IngestServiceStub, jobs: list[JobPlan], report: LoadReport
) -> None:
    """The blocking client: sends ``jobs`` again (same keys) until ingest has taken them all."""
    pending = list(jobs)
    while pending:
        report.calls += 1
        try:
            reply = stub.SubmitJobs(
                ingest_pb2.SubmitJobsRequest(jobs=[_request(j) for j in pending]), timeout=30
            )
        except grpc.RpcError as exc:
            code = exc.code()
            report.failed_calls[code.name] += 1
            if code not in RETRYABLE:
                report.unexpected.append(f"{code.name}: {exc}")
                return
            report.resent_items += len(pending)
            time.sleep(0.5)
            continue
        again = []
        for result in reply.results:
            job = pending[result.index]
            if result.HasField("job"):
                report.job_ids[job.key] = result.job.job_id
                report.duplicates += result.job.duplicate
            elif result.error.code == "UNAVAILABLE":
                report.item_errors[result.error.code] += 1
                again.append(job)
            else:
                report.item_errors[result.error.code] += 1
                report.unexpected.append(f"{job.key}: {result.error.code} {result.error.message}")
        if again:
            report.resent_items += len(again)
            time.sleep(0.5)
        pending = again


def request_for(jobs: list[JobPlan]) -> ingest_pb2.SubmitJobsRequest:
    """One SubmitJobs request for ``jobs``."""
    return ingest_pb2.SubmitJobsRequest(jobs=[_request(j) for j in jobs])


def resubmit_all(address: str, jobs: list[JobPlan], report: LoadReport) -> list[str]:
    """Submits every job again, as a client whose answers were lost would: each must come back
    as the same job, a duplicate. The keys that did not."""
    wrong = []
    with grpc.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for i in range(0, len(jobs), 500):
            chunk = jobs[i : i + 500]
            reply = stub.SubmitJobs(request_for(chunk), timeout=60)
            for result in reply.results:
                job = chunk[result.index]
                if not (
                    result.HasField("job")
                    and result.job.duplicate
                    and result.job.job_id == report.job_ids.get(job.key)
                ):
                    wrong.append(job.key)
    return wrong
