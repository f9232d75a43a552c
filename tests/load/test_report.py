"""The report builder reproduces ghz's ``runner/reporter.go`` field for field."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest

from relayq_load.report import (
    GO_CODE_NAMES,
    MAX_INT32,
    CallError,
    CallResult,
    ReportInput,
    RunOptions,
    build_report,
    go_rfc3339,
    go_rfc3339_nano,
    histogram,
    latency_distribution,
    status_of,
    summary,
)

MS = 1_000_000
# ghz's Report struct, in its JSON order (name and tags are omitempty).
REPORT_KEYS = [
    "date",
    "endReason",
    "options",
    "count",
    "total",
    "average",
    "fastest",
    "slowest",
    "rps",
    "errorDistribution",
    "statusCodeDistribution",
    "latencyDistribution",
    "histogram",
    "details",
]


def options(**overrides: object) -> RunOptions:
    base: dict[str, object] = {
        "call": "relayq.v1.IngestService.SubmitJob",
        "host": "127.0.0.1:50051",
        "total": 100,
        "concurrency": 10,
        "cpus": 2,
    }
    base.update(overrides)
    return RunOptions(**base)  # type: ignore[arg-type]


def results(latencies_ms: list[int], errors: int = 0) -> list[CallResult]:
    out = [CallResult(1_700_000_000 * 10**9 + i, ms * MS) for i, ms in enumerate(latencies_ms)]
    for i in range(errors):
        err = CallError(grpc.StatusCode.UNAVAILABLE, "ledger down")
        out.append(CallResult(1_700_000_001 * 10**9 + i, 500 * MS, err.status, str(err)))
    return out


def test_percentiles_use_ghz_ranks() -> None:
    # 1..100 ms: p10 is the 10th value (rank 10 is whole, so one lower: index 9).
    dist = latency_distribution([i * MS for i in range(1, 101)])
    assert dist == [
        {"percentage": p, "latency": v * MS}
        for p, v in [(10, 10), (25, 25), (50, 50), (75, 75), (90, 90), (95, 95), (99, 99)]
    ]
    # 7 values: rank p/100*7 is never whole, so index int(rank).
    seven = latency_distribution([i * MS for i in range(1, 8)])
    assert [d["latency"] // MS for d in seven] == [1, 2, 4, 6, 7, 7, 7]
    # A single call: every percentile is that call.
    assert {d["latency"] for d in latency_distribution([5 * MS])} == {5 * MS}


def test_histogram_has_eleven_marks_from_fastest_to_slowest() -> None:
    lats = sorted([i * MS for i in range(10, 111)] + [10 * MS, 110 * MS])
    buckets = histogram(lats)
    assert len(buckets) == 11
    assert buckets[0]["mark"] == pytest.approx(0.010)
    assert buckets[-1]["mark"] == pytest.approx(0.110)
    assert [b["mark"] for b in buckets] == sorted(b["mark"] for b in buckets)
    assert sum(b["count"] for b in buckets) == len(lats)
    assert buckets[0]["count"] == 2  # only the fastest (twice) is <= the first mark
    for b in buckets:
        assert b["frequency"] == pytest.approx(b["count"] / len(lats))


def test_histogram_of_equal_latencies_puts_all_in_the_first_bucket() -> None:
    buckets = histogram([3 * MS] * 5)
    assert buckets[0]["count"] == 5 and sum(b["count"] for b in buckets) == 5


def test_report_fields_and_types() -> None:
    report = build_report(
        results([10, 20, 30, 40], errors=1),
        ReportInput(options=options(), total_ns=2 * 10**9, date=datetime(2024, 5, 1, tzinfo=UTC)),
    )
    assert list(report) == REPORT_KEYS
    assert report["date"] == "2024-05-01T00:00:00Z"
    assert report["endReason"] == "normal"
    assert report["count"] == 5
    for key in ("total", "average", "fastest", "slowest"):
        assert type(report[key]) is int, key
    assert report["total"] == 2 * 10**9
    # average over every call; fastest/slowest over the OK ones only
    assert report["average"] == (10 + 20 + 30 + 40 + 500) * MS // 5
    assert (report["fastest"], report["slowest"]) == (10 * MS, 40 * MS)
    assert report["rps"] == pytest.approx(2.5)
    assert type(report["rps"]) is float
    assert report["statusCodeDistribution"] == {"OK": 4, "Unavailable": 1}
    assert report["errorDistribution"] == {"rpc error: code = Unavailable desc = ledger down": 1}
    assert sum(b["count"] for b in report["histogram"]) == 4
    assert [d["percentage"] for d in report["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert len(report["details"]) == 5
    detail = report["details"][-1]
    assert list(detail) == ["timestamp", "latency", "error", "status"]
    assert detail["status"] == "Unavailable" and detail["latency"] == 500 * MS
    assert report["details"][0]["error"] == "" and report["details"][0]["status"] == "OK"
    json.dumps(report)  # JSON-ready as it is


def test_no_successful_call_leaves_distribution_and_histogram_null() -> None:
    report = build_report(results([], errors=3), ReportInput(options=options(), total_ns=10**9))
    assert report["latencyDistribution"] is None and report["histogram"] is None
    assert report["fastest"] == report["slowest"] == 0
    assert report["count"] == 3 and report["statusCodeDistribution"] == {"Unavailable": 3}


def test_an_empty_run() -> None:
    report = build_report([], ReportInput(options=options(), total_ns=10**9, end_reason="cancel"))
    assert report["count"] == 0 and report["rps"] == 0.0 and report["details"] is None
    assert report["endReason"] == "cancel"


def test_name_and_tags_appear_only_when_given() -> None:
    plain = build_report(results([1]), ReportInput(options=options(), total_ns=10**9))
    assert "name" not in plain and "tags" not in plain
    named = build_report(
        results([1]),
        ReportInput(options=options(), total_ns=10**9, name="nightly", tags={"env": "ci"}),
    )
    assert list(named)[:3] == ["date", "name", "endReason"]
    assert named["tags"] == {"env": "ci"}


def test_options_use_ghz_keys_and_omitempty() -> None:
    out = options(rps=0).to_json()
    assert out["call"] == "relayq.v1.IngestService.SubmitJob"
    assert out["insecure"] is True and out["binary"] is False and out["CPUs"] == 2
    assert out["total"] == 100 and out["concurrency"] == 10 and out["connections"] == 1
    assert out["timeout"] == 20 * 10**9 and out["dial-timeout"] == 10 * 10**9
    assert out["load-schedule"] == "const" and out["concurrency-schedule"] == "const"
    for omitted in ("rps", "duration", "data", "metadata", "name", "skipFirst", "proto"):
        assert omitted not in out
    timed = options(rps=200, duration_ns=30 * 10**9, data={"task": "demo.echo"}).to_json()
    # ghz sets n to MaxInt32 when a duration is given
    assert timed["total"] == MAX_INT32
    assert timed["rps"] == 200 and timed["duration"] == 30 * 10**9
    assert timed["data"] == {"task": "demo.echo"}


def test_go_time_formats() -> None:
    east = timezone(timedelta(hours=2))
    assert go_rfc3339(datetime(2024, 5, 1, 12, 30, 5, 999_999, tzinfo=east)) == (
        "2024-05-01T12:30:05+02:00"
    )
    assert go_rfc3339(datetime(2024, 5, 1, tzinfo=UTC)) == "2024-05-01T00:00:00Z"
    stamp = go_rfc3339_nano(1_700_000_000_120_000_000)
    assert re.search(r":\d\d\.12(Z|[+-]\d\d:\d\d)$", stamp), stamp  # trailing zeros trimmed
    whole = go_rfc3339_nano(1_700_000_000 * 10**9)
    assert "." not in whole
    assert datetime.fromisoformat(go_rfc3339_nano(1_700_000_000_000_001_000)) == (
        datetime.fromtimestamp(1_700_000_000, UTC) + timedelta(microseconds=1)
    )


def test_status_names_are_grpc_go_spellings() -> None:
    assert set(GO_CODE_NAMES) == set(grpc.StatusCode)
    assert GO_CODE_NAMES[grpc.StatusCode.CANCELLED] == "Canceled"
    assert GO_CODE_NAMES[grpc.StatusCode.INVALID_ARGUMENT] == "InvalidArgument"
    assert status_of(None) == ("OK", "")
    err = CallError(grpc.StatusCode.ALREADY_EXISTS, "key reused")
    assert status_of(err) == ("AlreadyExists", "rpc error: code = AlreadyExists desc = key reused")
    assert status_of(RuntimeError("boom")) == ("Unknown", "rpc error: code = Unknown desc = boom")


def test_summary_text() -> None:
    report = build_report(results([10, 20], errors=1), ReportInput(options(), total_ns=10**9))
    text = summary(report)
    assert "Count:\t3" in text and "Requests/sec:\t3.00" in text
    assert "[OK]\t2 responses" in text and "[Unavailable]\t1 responses" in text
    assert "Latency distribution:" in text and "99 % in 20.00 ms" in text
