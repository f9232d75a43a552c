"""Worker metrics under the prefork pool: every process's counts add up, across a killed pool
process, and duration buckets carry trace exemplars (OpenMetrics)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.request

import psutil
import pytest
from google.protobuf import struct_pb2
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from relayq.v1 import ingest_pb2, job_pb2
from relayq_devstack.process import ServiceProcess
from tests.conftest import BIN, Ingest, service_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def scrape(port: int) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(req, timeout=10) as reply:
        return str(reply.read().decode())


def runs(text: str, task: str, outcome: str) -> float:
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        for s in family.samples:
            if (
                s.name == "relayq_job_runs_total"
                and s.labels.get("task") == task
                and s.labels.get("outcome") == outcome
            ):
                return float(s.value)
    return 0.0


async def submit_and_wait(ingest: Ingest, n: int, task: str = "demo.echo") -> None:
    reply = await ingest.stub.SubmitJobs(
        ingest_pb2.SubmitJobsRequest(
            jobs=[
                ingest_pb2.SubmitJobRequest(task=task, payload=struct_pb2.Struct())
                for _ in range(n)
            ]
        )
    )
    pending = {r.job.job_id for r in reply.results}
    deadline = time.monotonic() + 60
    while pending:
        assert time.monotonic() < deadline
        for job_id in list(pending):
            job = (await ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))).job
            if job.state == job_pb2.JOB_STATE_SUCCEEDED:
                pending.discard(job_id)
        await asyncio.sleep(0.1)


async def test_counts_add_up_across_pool_processes_and_restarts(
    live_ingest: Ingest, worker: ServiceProcess, worker_metrics_port: int
) -> None:
    before = runs(await asyncio.to_thread(scrape, worker_metrics_port), "demo.echo", "succeeded")
    await submit_and_wait(live_ingest, 60)
    middle = runs(await asyncio.to_thread(scrape, worker_metrics_port), "demo.echo", "succeeded")
    assert middle - before == 60
    # Kill the pool processes: their counts must survive them (the node starts new ones).
    for child in psutil.Process(worker.pid).children():
        os.kill(child.pid, signal.SIGKILL)
    await asyncio.sleep(1)
    await submit_and_wait(live_ingest, 40)
    after = runs(await asyncio.to_thread(scrape, worker_metrics_port), "demo.echo", "succeeded")
    assert after - before == 100


async def test_duration_buckets_carry_trace_exemplars(
    live_ingest: Ingest, worker_metrics_port: int
) -> None:
    await submit_and_wait(live_ingest, 5)
    await asyncio.sleep(1.2)  # pool processes write their exemplars at most once a second
    await submit_and_wait(live_ingest, 5)
    text = await asyncio.to_thread(scrape, worker_metrics_port)
    exemplars = [
        s.exemplar
        for family in text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
        for s in family.samples
        if s.name == "relayq_job_duration_seconds_bucket" and s.exemplar is not None
    ]
    assert exemplars, "no exemplar on any duration bucket"
    assert all(len(e.labels["trace_id"]) == 32 for e in exemplars)


async def test_a_second_node_on_a_taken_metrics_port_says_so_and_stops(
    database_url: str, quiet_broker_url: str
) -> None:
    """Metrics are on by default (9200): a second node on the same host must not start without
    /metrics, and must say which setting to change."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "relayq-worker")],
            env=service_env(database_url, quiet_broker_url, RELAYQ_WORKER_METRICS_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode != 0
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    assert "RELAYQ_WORKER_METRICS_PORT" in done.stderr
