"""``relayq-load`` against a real ingest: its report has ghz's format, its counts add up, and the
jobs it submitted are in the ledger.

The tool runs under gevent, so it runs as a subprocess while the session's event loop serves the
in-process ingest (the ``ingest`` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from relayq_core.db.ledger import create_pool
from tests.conftest import Ingest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PERCENTAGES = [10, 25, 50, 75, 90, 95, 99]
GO_CODES = {
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
}


async def relayq_load(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Runs the console script; (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYQ_")}
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "relayq-load"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ledger_count(database_url: str, prefix: str) -> int:
    pool = await create_pool(database_url, max_size=1)
    try:
        count = await pool.fetchval(
            "SELECT count(*) FROM relayq_jobs WHERE idempotency_key LIKE $1", prefix + "%"
        )
    finally:
        await pool.close()
    return int(count)


def is_int(value: Any) -> bool:
    return type(value) is int


def check_ghz_shape(report: dict[str, Any]) -> None:
    """Every field ghz's Report has, with ghz's JSON types."""
    assert list(report)[:3] == ["date", "endReason", "options"]
    datetime.fromisoformat(report["date"])
    assert "." not in report["date"]  # RFC 3339 to the second
    assert report["endReason"] in {"normal", "timeout", "cancel"}
    for key in ("count", "total", "average", "fastest", "slowest"):
        assert is_int(report[key]) and report[key] >= 0, key
    assert type(report["rps"]) is float
    assert isinstance(report["errorDistribution"], dict)
    assert all(is_int(n) for n in report["errorDistribution"].values())
    assert set(report["statusCodeDistribution"]) <= GO_CODES
    assert sum(report["statusCodeDistribution"].values()) == report["count"]
    dist = report["latencyDistribution"]
    assert [d["percentage"] for d in dist] == PERCENTAGES
    latencies = [d["latency"] for d in dist]
    assert all(is_int(v) for v in latencies) and latencies == sorted(latencies)
    assert report["fastest"] <= latencies[0] and latencies[-1] <= report["slowest"]
    assert report["fastest"] <= report["average"] or report["errorDistribution"]
    buckets = report["histogram"]
    assert len(buckets) == 11
    for bucket in buckets:
        assert list(bucket) == ["mark", "count", "frequency"]
        assert isinstance(bucket["mark"], float) and is_int(bucket["count"])
        assert isinstance(bucket["frequency"], float)
    assert buckets[0]["mark"] == pytest.approx(report["fastest"] / 1e9)
    assert buckets[-1]["mark"] == pytest.approx(report["slowest"] / 1e9)
    ok = report["statusCodeDistribution"].get("OK", 0)
    assert sum(b["count"] for b in buckets) == ok
    assert sum(b["frequency"] for b in buckets) == pytest.approx(1.0)
    assert len(report["details"]) == report["count"]
    for detail in report["details"]:
        assert list(detail) == ["timestamp", "latency", "error", "status"]
        datetime.fromisoformat(detail["timestamp"])
        assert is_int(detail["latency"]) and detail["status"] in GO_CODES
        assert (detail["error"] == "") == (detail["status"] == "OK")
    assert report["rps"] == pytest.approx(report["count"] / (report["total"] / 1e9))


async def test_a_short_run_writes_a_ghz_report_and_lands_its_jobs(
    ingest: Ingest, database_url: str, tmp_path: Path
) -> None:
    prefix = f"ghz-{uuid.uuid4().hex[:8]}-"
    data = (
        '{"task": "demo.echo", "payload": {"n": {{.RequestNumber}}}, '
        f'"idempotency_key": "{prefix}{{{{.RequestNumber}}}}-{{{{newUUID}}}}"}}'
    )
    out = tmp_path / "report.json"
    code, stdout, stderr = await relayq_load(
        "--insecure",
        "--call",
        "relayq.v1.IngestService.SubmitJob",
        "-d",
        data,
        "-c",
        "10",
        "-n",
        "200",
        "-O",
        "json",
        "-o",
        str(out),
        ingest.address,
    )
    assert code == 0, stderr
    assert stdout == ""
    assert "calls" in stderr and "Summary:" in stderr  # progress and summary go to stderr
    report = json.loads(out.read_text())
    check_ghz_shape(report)
    assert report["count"] == 200
    assert report["endReason"] == "normal"
    assert report["statusCodeDistribution"] == {"OK": 200}
    assert report["errorDistribution"] == {}
    options = report["options"]
    assert options["call"] == "relayq.v1.IngestService.SubmitJob"
    assert options["host"] == ingest.address
    assert (options["total"], options["concurrency"], options["insecure"]) == (200, 10, True)
    assert "rps" not in options and "data" not in options  # omitempty; the template is not JSON
    assert await ledger_count(database_url, prefix) == 200


async def test_a_batched_run_counts_calls_and_submits_every_element(
    ingest: Ingest, database_url: str, tmp_path: Path
) -> None:
    prefix = f"ghzb-{uuid.uuid4().hex[:8]}-"
    out = tmp_path / "batch.json"
    code, _, stderr = await relayq_load(
        "--insecure",
        "--call",
        "relayq.v1.IngestService/SubmitJobs",
        "--batch-size",
        "25",
        "-d",
        '{"task": "demo.echo", "idempotency_key": "' + prefix + '{{.RequestNumber}}"}',
        "-c",
        "4",
        "-n",
        "8",
        "-O",
        "pretty",
        "-o",
        str(out),
        "--quiet",
        ingest.address,
    )
    assert code == 0, stderr
    assert stderr == ""
    report = json.loads(out.read_text())
    check_ghz_shape(report)
    assert report["count"] == 8 and report["statusCodeDistribution"] == {"OK": 8}
    assert report["options"]["call"] == "relayq.v1.IngestService.SubmitJobs"
    assert await ledger_count(database_url, prefix) == 200


async def test_a_timed_paced_run_ends_by_timeout_at_the_rate(
    ingest: Ingest, tmp_path: Path
) -> None:
    out = tmp_path / "timed.json"
    code, _, stderr = await relayq_load(
        "--insecure",
        "-d",
        '{"task": "demo.echo", "idempotency_key": "ghzt-{{newUUID}}"}',
        "-c",
        "20",
        "-z",
        "2s",
        "--rps",
        "50",
        "-O",
        "json",
        "-o",
        str(out),
        "--quiet",
        ingest.address,
    )
    assert code == 0, stderr
    report = json.loads(out.read_text())
    check_ghz_shape(report)
    assert report["endReason"] == "timeout"
    options = report["options"]
    assert options["duration"] == 2_000_000_000 and options["rps"] == 50
    assert options["total"] == 2**31 - 1  # ghz's n under -z
    assert options["data"] == {"task": "demo.echo", "idempotency_key": "ghzt-{{newUUID}}"}
    # 2 s at 50/s: request k is not sent before k/50 s, so never more than 101 (slots 0..100);
    # fewer if the server is slow, which a loaded test machine may well be.
    assert 10 <= report["count"] <= 101


async def test_errors_are_counted_by_grpc_go_code_and_text(ingest: Ingest, tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    code, _, stderr = await relayq_load(
        "--insecure",
        "-d",
        '{"task": "no.such.task"}',
        "-c",
        "2",
        "-n",
        "10",
        "-O",
        "json",
        "-o",
        str(out),
        "--quiet",
        ingest.address,
    )
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert report["count"] == 10
    assert report["statusCodeDistribution"] == {"InvalidArgument": 10}
    [(text, n)] = report["errorDistribution"].items()
    assert n == 10 and text.startswith("rpc error: code = InvalidArgument desc = ")
    assert report["latencyDistribution"] is None and report["histogram"] is None
    assert report["fastest"] == 0 and report["average"] > 0


async def test_bad_options_fail_before_any_call(ingest: Ingest) -> None:
    code, _, stderr = await relayq_load("--insecure", "-d", "{{.Nope}}", "-n", "1", ingest.address)
    assert code == 2 and "unknown template action" in stderr
    code, _, stderr = await relayq_load("--insecure", "--call", "x.Y.Z", ingest.address)
    assert code == 2 and "unknown call" in stderr
