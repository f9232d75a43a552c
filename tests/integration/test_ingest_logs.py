"""Every ingest log line about a job carries its job_id and idempotency_key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from google.protobuf import struct_pb2
from structlog.testing import LogCapture

from relayq.v1 import ingest_pb2
from tests.conftest import Ingest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    """structlog events as dicts, after the contextvars merge the real config does."""
    old = structlog.get_config()
    cap = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, cap], cache_logger_on_first_use=False
    )
    try:
        yield cap
    finally:
        structlog.configure(**old)


def item(task: str, key: str, payload: dict[str, Any]) -> ingest_pb2.SubmitJobRequest:
    struct = struct_pb2.Struct()
    struct.update(payload)
    return ingest_pb2.SubmitJobRequest(task=task, payload=struct, idempotency_key=key)


async def test_submit_logs_carry_job_identity(ingest: Ingest, captured: LogCapture) -> None:
    await ingest.stub.SubmitJobs(
        ingest_pb2.SubmitJobsRequest(
            jobs=[
                item("demo.echo", "log-a", {"n": 1}),
                item("demo.echo", "log-a", {"n": 1}),  # duplicate
                item("demo.echo", "log-a", {"n": 2}),  # conflict
            ]
        )
    )
    events = [e for e in captured.entries if e["event"] in ("job_submitted", "job_refused")]
    assert [e["event"] for e in events] == ["job_submitted", "job_submitted", "job_refused"]
    for event in captured.entries:
        if "job_id" in event or event["event"].startswith("job_"):
            assert event["job_id"] and event["idempotency_key"] == "log-a", event
