"""Every grpcurl example in docs/dlq.md runs as written, in order, against a real dlq-svc.

Only the address (``localhost:50052``) is replaced by the test server's; the admin token comes
from ``RELAYQ_DLQ_ADMIN_TOKEN`` in the environment, as in a shell that loaded stack.env.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from relayq.v1 import dead_letter_pb2 as pb
from relayq_core.settings import repo_root
from tests.integration.dlq_fixtures import Dlq, empty_dlq

__all__ = ["empty_dlq"]  # the imported fixture

pytestmark = pytest.mark.integration

DOC = repo_root() / "docs" / "dlq.md"
BIN = Path(sys.executable).parent
DOC_ADDRESS = "localhost:50052"
RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["DeadLetterService"].methods]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)


def grpcurl_examples() -> list[str]:
    return [b for b in blocks("sh") if "grpcurl" in b]


def test_there_is_an_example_for_every_rpc() -> None:
    text = "\n".join(grpcurl_examples())
    for rpc in RPCS:
        assert f"relayq.v1.DeadLetterService/{rpc}" in text, rpc
    for example in grpcurl_examples():
        assert DOC_ADDRESS in example


def test_the_sample_outputs_are_json() -> None:
    for sample in blocks("json"):
        json.loads(sample)


async def run(script: str, address: str, token: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYQ_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RELAYQ_DLQ_ADMIN_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script.replace(DOC_ADDRESS, address),
        env=env,
        cwd=repo_root(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode()


@pytest.mark.asyncio(loop_scope="session")
async def test_every_example_runs_as_written(empty_dlq: Dlq) -> None:
    outputs = []
    for example in grpcurl_examples():
        code, out = await run(example, empty_dlq.address, empty_dlq.token)
        assert code == 0, f"{example}\n---\n{out}"
        outputs.append(out)
    # The examples did what the page says they do.
    one = (
        await empty_dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id="example-job-1"))
    ).dead_letter
    two = (
        await empty_dlq.stub.GetDeadLetter(pb.GetDeadLetterRequest(id="example-job-2"))
    ).dead_letter
    assert (one.status, two.status) == ("replayed", "dropped")
    assert one.audit[-1].actor == "alice@laptop"
    assert one.audit[-1].reason == "gateway is back (INC-1234)"
    assert two.audit[-1].reason == "bad addresses, customers contacted"
    joined = "\n".join(outputs)
    assert '"result": "would_replay"' in joined and '"result": "replayed"' in joined
    assert '"status": "SERVING"' in joined
