"""The runbook cannot rot: every `sh` block of docs/runbook.md runs against a real local stack.

The stack gets jobs that succeed and jobs that are dead-lettered first, so the DLQ commands have
entries to show, replay and drop. Each block runs as one bash script (`set -e`) after the
runbook's own preamble (its first block), from the repository root, like an on-call engineer's
shell.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, ingest_pb2_grpc, job_pb2
from relayq_core.settings import repo_root
from relayq_devstack.envfile import read_env

pytestmark = pytest.mark.e2e

REPO = repo_root()
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[str]:
    return BLOCK.findall((REPO / "docs" / "runbook.md").read_text())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("runbook") / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAYQ_", "OTEL_"))}
    env["RELAYQ_STATE_DIR"] = str(state)
    up = subprocess.run(
        [str(BIN / "relayq-stack"), "up", "--fast"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        asyncio.run(seed(read_env(state / "stack.env")["RELAYQ_INGEST_GRPC"]))
        yield env
    finally:
        subprocess.run(
            [str(BIN / "relayq-stack"), "down"],
            env=env,
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=False,
        )


async def seed(address: str) -> None:
    """Jobs that succeed and jobs that fail for good, all finished."""

    def job(task: str, payload: dict[str, Any]) -> ingest_pb2.SubmitJobRequest:
        struct = struct_pb2.Struct()
        struct.update(payload)
        return ingest_pb2.SubmitJobRequest(task=task, payload=struct)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        reply = await stub.SubmitJobs(
            ingest_pb2.SubmitJobsRequest(
                jobs=[job("demo.echo", {"n": n}) for n in range(20)]
                + [job("demo.fail", {"permanent": True, "message": f"bad {n}"}) for n in range(3)]
            )
        )
        pending = {r.job.job_id for r in reply.results}
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} seeded jobs unfinished"
            for job_id in list(pending):
                got = (await stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))).job
                if got.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_DEAD_LETTERED):
                    pending.discard(job_id)
            await asyncio.sleep(0.2)


def test_the_runbook_has_a_section_for_every_alert_and_incident() -> None:
    text = (REPO / "docs" / "runbook.md").read_text()
    for heading in (
        "Queue depth growing",
        "Oldest job too old",
        "High error rate",
        "DLQ flooding",
        "No worker consuming",
        "Worker crashloop",
        "Service down",
        "DLQ service down",
        "Redis lost its data",
    ):
        assert f"\n## {heading}\n" in text
    for section in text.split("\n## ")[1:]:
        assert "**First command" in section, section.splitlines()[0]
        assert "**Mitigate" in section and "**Verify" in section, section.splitlines()[0]


@pytest.mark.parametrize("index", range(1, len(blocks())))
def test_every_runbook_command_runs(stack: dict[str, str], index: int) -> None:
    preamble, block = blocks()[0], blocks()[index]
    script = f"set -e\n{preamble}\n{block}"
    done = subprocess.run(
        ["bash", "-c", script],
        env=stack,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"block {index} failed:\n{block}\n---\n{done.stdout}{done.stderr}"
