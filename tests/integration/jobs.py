"""Helpers for tests that submit jobs through the real ingest and wait for their outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2, job_pb2
from tests.conftest import Ingest

TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_DEAD_LETTERED)


def request(task: str, payload: dict[str, Any], **fields: str) -> ingest_pb2.SubmitJobRequest:
    """A ``SubmitJob`` request for ``task`` with ``payload``."""
    struct = struct_pb2.Struct()
    struct.update(payload)
    return ingest_pb2.SubmitJobRequest(task=task, payload=struct, **fields)


async def finish(ingest: Ingest, job_id: str, timeout: float = 60) -> job_pb2.Job:
    """The job once it is succeeded or dead-lettered (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        job = (await ingest.stub.GetJob(ingest_pb2.GetJobRequest(job_id=job_id))).job
        if job.state in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"still {job_pb2.JobState.Name(job.state)}: {job}"
        await asyncio.sleep(0.1)
