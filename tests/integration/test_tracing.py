"""One trace follows a job across ingest, the worker and dlq-svc (real processes, real OTLP).

The test runs its own OTLP/gRPC receiver; ingest-svc, a worker and dlq-svc run as subprocesses
exporting to it through the standard OTEL_* variables, on a Redis database of their own. They
also write their spans to files (``RELAYQ_TRACES_DIR``, as in the local stack), which the real
``relayq-trace`` command reads back.

``RELAYQ_TEST_BREAK_TRACES=worker`` (a test-only switch) starts the worker without the span
directory: the relayq-trace test must then fail, naming the attempts it cannot find.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc, ingest_pb2, ingest_pb2_grpc, job_pb2
from relayq_devstack.health import celery_workers_ready, grpc_healthy
from relayq_devstack.ports import free_port
from relayq_devstack.process import ServiceProcess
from relayq_devstack.redis import RedisServer
from tests.conftest import BIN, REPO, service_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps (service, trace id, span name) of every span."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        self.links: dict[str, list[str]] = {}  # span name -> trace ids it links to

    async def Export(  # noqa: N802
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "?",
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append((service, span.trace_id.hex(), span.name))
                    if span.links:
                        self.links.setdefault(span.name, []).extend(
                            link.trace_id.hex() for link in span.links
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(0)


@pytest.fixture(scope="module")
def traced_stack(
    receiver: tuple[Receiver, int],
    database_url: str,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """ingest, one worker and dlq-svc exporting spans, on Redis database 3."""
    logs = tmp_path_factory.mktemp("traced")
    broker = redis_server.url.rsplit("/", 1)[0] + "/3"
    ports = {"grpc": free_port(), "http": free_port(), "dlq": free_port()}
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    traces = Path(logs) / "traces"
    env = service_env(database_url, broker, RELAYQ_TRACES_DIR=str(traces), **otel)
    procs: list[ServiceProcess] = []

    def start(name: str, script: str, **extra: str) -> ServiceProcess:
        proc_env = {**env, **extra}
        if os.environ.get("RELAYQ_TEST_BREAK_TRACES") == name:
            del proc_env["RELAYQ_TRACES_DIR"]
        proc = ServiceProcess(
            name,
            [str(BIN / script)],
            log_path=Path(logs) / f"{name}.log",
            env=proc_env,
            inherit_env=False,
        )
        procs.append(proc)
        return proc

    try:
        dlq = start("dlq", "relayq-dlq", RELAYQ_DLQ_GRPC_PORT=str(ports["dlq"]))
        ingest = start(
            "ingest",
            "relayq-ingest",
            RELAYQ_INGEST_GRPC_PORT=str(ports["grpc"]),
            RELAYQ_INGEST_HTTP_PORT=str(ports["http"]),
        )
        worker = start(
            "worker",
            "relayq-worker",
            RELAYQ_WORKER_CONCURRENCY="1",
            RELAYQ_WORKER_NODE_NAME="traced@%h",
            RELAYQ_DLQ_GRPC=f"127.0.0.1:{ports['dlq']}",
            RELAYQ_RETRY_POLICY=str(REPO / "tests" / "data" / "retry-fast.toml"),
        )
        dlq.wait_healthy(lambda: grpc_healthy(f"127.0.0.1:{ports['dlq']}"), timeout=30)
        ingest.wait_healthy(lambda: grpc_healthy(f"127.0.0.1:{ports['grpc']}"), timeout=30)
        worker.wait_healthy(
            lambda: celery_workers_ready(broker, 1, name_prefix="traced@"), timeout=60
        )
        yield {
            "ingest": f"127.0.0.1:{ports['grpc']}",
            "dlq": f"127.0.0.1:{ports['dlq']}",
            "traces": str(traces),
        }
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=10)


async def dead_lettered(stub: ingest_pb2_grpc.IngestServiceAsyncStub, job_id: str) -> job_pb2.Job:
    """The job, once it is dead-lettered (within a minute)."""
    deadline = time.monotonic() + 60
    while True:
        job = (await stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))).job
        if job.state == job_pb2.JOB_STATE_DEAD_LETTERED:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


async def test_one_trace_from_submit_through_retries_to_the_dlq(
    receiver: tuple[Receiver, int], traced_stack: dict[str, str]
) -> None:
    spans = receiver[0].spans
    payload = struct_pb2.Struct()
    payload.update({"permanent": False, "message": "traced failure"})
    async with grpc.aio.insecure_channel(traced_stack["ingest"]) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        reply = await stub.SubmitJob(ingest_pb2.SubmitJobRequest(task="demo.fail", payload=payload))
        job = await dead_lettered(stub, reply.job_id)
    assert len(job.trace_id) == 32
    async with grpc.aio.insecure_channel(traced_stack["dlq"]) as ch:
        entry = (
            await dead_letter_pb2_grpc.DeadLetterServiceStub(ch).GetDeadLetter(
                dead_letter_pb2.GetDeadLetterRequest(id=reply.job_id)
            )
        ).dead_letter
    assert entry.trace_id == job.trace_id

    deadline = time.monotonic() + 20
    while True:  # spans arrive in batches
        by_service: dict[str, list[str]] = defaultdict(list)
        for service, trace_id, name in spans:
            if trace_id == job.trace_id:
                by_service[service].append(name)
        runs = [n for n in by_service["worker-svc"] if n.startswith("run/")]
        if {"ingest-svc", "worker-svc", "dlq-svc"} <= set(by_service) and len(
            runs
        ) >= job.attempt_count:
            break
        assert time.monotonic() < deadline, dict(by_service)
        await asyncio.sleep(0.2)
    assert any("SubmitJob" in n for n in by_service["ingest-svc"])
    assert "publish" in by_service["ingest-svc"]
    # every attempt is a span of the same trace: each retry is published from inside the
    # attempt before it
    assert job.attempt_count == 5 and len(runs) >= 5
    assert by_service["worker-svc"].count("apply_async/demo.fail") >= 4
    assert any("ReportDeadLetter" in n for n in by_service["worker-svc"])
    assert any("ReportDeadLetter" in n for n in by_service["dlq-svc"])


async def test_a_replay_links_back_to_the_original_trace(
    receiver: tuple[Receiver, int], traced_stack: dict[str, str]
) -> None:
    payload = struct_pb2.Struct()
    payload.update({"permanent": True, "message": "replay me"})
    async with grpc.aio.insecure_channel(traced_stack["ingest"]) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        reply = await stub.SubmitJob(ingest_pb2.SubmitJobRequest(task="demo.fail", payload=payload))
        job = await dead_lettered(stub, reply.job_id)
    async with grpc.aio.insecure_channel(traced_stack["dlq"]) as ch:
        dlq = dead_letter_pb2_grpc.DeadLetterServiceStub(ch)
        results = [
            r.result
            async for r in dlq.ReplayDeadLetters(
                dead_letter_pb2.ReplayDeadLettersRequest(ids=[reply.job_id])
            )
        ]
    assert results == ["replayed"]
    deadline = time.monotonic() + 20
    while job.trace_id not in receiver[0].links.get("relayq.replay", []):
        assert time.monotonic() < deadline, receiver[0].links
        await asyncio.sleep(0.2)


async def job_in_state(
    stub: ingest_pb2_grpc.IngestServiceAsyncStub, job_id: str, state: int
) -> job_pb2.Job:
    """The job, once it is in ``state`` (within a minute)."""
    deadline = time.monotonic() + 60
    while True:
        job = (await stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))).job
        if job.state == state:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


def relayq_trace(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a person runs it."""
    return subprocess.run(
        [str(BIN / "relayq-trace"), *args], capture_output=True, text=True, timeout=30
    )


def story_problems(data: dict[str, Any], job: job_pb2.Job) -> list[str]:
    """What the JSON of a job that failed 5 times, was dead-lettered, replayed, failed once
    more and then succeeded lacks ([] when it tells the whole story)."""
    problems = []
    traces = data["traces"]
    if len(traces) != 2:
        return [f"expected 2 traces (the first run, the replay), got {len(traces)}"]
    first, replay = traces
    if first["trace_id"] != job.trace_id:
        problems.append(f"the first trace is {first['trace_id']}, the job's is {job.trace_id}")
    root = first["spans"][0]
    if (root["service"], root["depth"]) != ("ingest-svc", 0) or not root["name"].endswith(
        "/SubmitJob"
    ):
        problems.append(f"the first span is not ingest's SubmitJob: {root}")
    if root["attributes"].get("relayq.job_id") != job.job_id:
        problems.append("the submit span does not name the job")
    if not any(s["name"] == "publish" and s["service"] == "ingest-svc" for s in first["spans"]):
        problems.append("no publish span from ingest")
    seen = [(a["attempt"], a["outcome"], a["trace_id"]) for a in data["attempts"]]
    wanted = [(n, "retry_scheduled", first["trace_id"]) for n in range(1, 5)]
    wanted += [(5, "dead_lettered", first["trace_id"])]
    wanted += [(6, "retry_scheduled", replay["trace_id"]), (7, "succeeded", replay["trace_id"])]
    if seen != wanted:
        problems.append(f"attempts {seen}, expected {wanted}")
    runs = {s["span_id"]: s for t in traces for s in t["spans"] if s["name"] == "run/demo.flaky"}
    for attempt in data["attempts"]:
        span = runs.get(attempt["span_id"])
        failed = attempt["outcome"] != "succeeded"
        if span is None or (span["status"] == "error") != failed:
            problems.append(f"attempt {attempt['attempt']}: span status {span and span['status']}")
        elif failed and [e["attributes"].get("exception.type") for e in span["events"]] != [
            "JobError"
        ]:
            problems.append(f"attempt {attempt['attempt']}: events {span['events']}")
    reports = [
        s
        for s in first["spans"]
        if s["service"] == "dlq-svc" and s["name"].endswith("/ReportDeadLetter")
    ]
    if [r["attributes"].get("relayq.dlq_reason") for r in reports] != ["retries_exhausted"]:
        problems.append(f"dlq-svc's ReportDeadLetter spans: {reports}")
    replays = [s for s in replay["spans"] if s["name"] == "relayq.replay"]
    if replay["links_to"] != [first["trace_id"]] or len(replays) != 1:
        problems.append(f"the replay's trace links to {replay['links_to']}: {replays}")
    elif [link["trace_id"] for link in replays[0]["links"]] != [first["trace_id"]]:
        problems.append(f"the replay span links to {replays[0]['links']}")
    return problems


def order_problems(text: str) -> list[str]:
    """The waterfall's lines must come in the story's order (each step: words its line has)."""
    lines = text.splitlines()
    steps: list[tuple[str, ...]] = [
        ("ingest-svc", "/SubmitJob "),
        ("ingest-svc", "publish"),
        *(("worker-svc", "run/demo.flaky", f"attempt={n} ") for n in range(1, 6)),
        ("dlq-svc", "/ReportDeadLetter", "dlq_reason=retries_exhausted"),
        ("links to trace",),
        ("dlq-svc", "relayq.replay"),
        ("worker-svc", "run/demo.flaky", "attempt=6 "),
        ("worker-svc", "run/demo.flaky", "attempt=7 outcome=succeeded"),
    ]
    problems, at = [], -1
    for words in steps:
        found = next(
            (n for n in range(at + 1, len(lines)) if all(w in lines[n] for w in words)), -1
        )
        if found < 0:
            problems.append(f"no line with {words} after line {at}")
        else:
            at = found
    return problems


async def test_relayq_trace_tells_a_dead_lettered_and_replayed_jobs_whole_story(
    traced_stack: dict[str, str], tmp_path: Path
) -> None:
    payload = struct_pb2.Struct()
    payload.update({"fail_times": 6})  # attempts 1-5 fail (the policy allows 4 retries)
    async with grpc.aio.insecure_channel(traced_stack["ingest"]) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        reply = await stub.SubmitJob(
            ingest_pb2.SubmitJobRequest(task="demo.flaky", payload=payload)
        )
        await dead_lettered(stub, reply.job_id)
        async with grpc.aio.insecure_channel(traced_stack["dlq"]) as dlq_ch:
            dlq = dead_letter_pb2_grpc.DeadLetterServiceStub(dlq_ch)
            results = [
                r.result
                async for r in dlq.ReplayDeadLetters(
                    dead_letter_pb2.ReplayDeadLettersRequest(ids=[reply.job_id])
                )
            ]
        assert results == ["replayed"]
        job = await job_in_state(stub, reply.job_id, job_pb2.JOB_STATE_SUCCEEDED)
    assert job.attempt_count == 7

    deadline = time.monotonic() + 20
    while True:  # spans reach the files in batches (every 100 ms here)
        done = await asyncio.to_thread(
            relayq_trace, job.job_id, "--dir", traced_stack["traces"], "--json"
        )
        assert done.returncode == 0, done.stderr
        problems = story_problems(json.loads(done.stdout), job)
        if not problems:
            break
        assert time.monotonic() < deadline, problems
        await asyncio.sleep(0.2)
    text = await asyncio.to_thread(relayq_trace, job.job_id, "--dir", traced_stack["traces"])
    assert text.returncode == 0, text.stderr
    assert order_problems(text.stdout) == [], text.stdout
    assert text.stdout.splitlines()[1] == (
        "attempts: #1 retry_scheduled, #2 retry_scheduled, #3 retry_scheduled, "
        "#4 retry_scheduled, #5 dead_lettered (retries_exhausted), #6 retry_scheduled, "
        "#7 succeeded"
    )

    # The same check fails on span files without the worker's: it can tell a story apart.
    partial = tmp_path / "without-worker"
    shutil.copytree(traced_stack["traces"], partial, ignore=shutil.ignore_patterns("worker-svc-*"))
    cut = await asyncio.to_thread(relayq_trace, job.job_id, "--dir", str(partial), "--json")
    assert cut.returncode == 0, cut.stderr
    assert any("attempts" in p for p in story_problems(json.loads(cut.stdout), job))
    assert order_problems(
        (await asyncio.to_thread(relayq_trace, job.job_id, "--dir", str(partial))).stdout
    )

    missing = await asyncio.to_thread(relayq_trace, "no-such-job", "--dir", traced_stack["traces"])
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("relayq-trace: no span of job no-such-job in the ")
    empty = await asyncio.to_thread(relayq_trace, job.job_id, "--dir", str(tmp_path / "none"))
    assert empty.returncode == 2
    assert empty.stderr.startswith(f"relayq-trace: no span files in {tmp_path / 'none'}")
