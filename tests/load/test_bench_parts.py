"""The bench's pure parts: layouts, backlog slope, py-spy reduction, per-second series, and the
document rendered from a small synthetic result (no stack: the bench itself is not a test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relayq_load.bench.doc import END, PLACEHOLDER, START, families, render
from relayq_load.bench.profile import analyse
from relayq_load.bench.stack import Layout
from relayq_load.bench.sustain import details_per_second, slope
from relayq_load.cli import DEFAULT_CALL, parser, submit_argv


def test_layouts() -> None:
    assert Layout.parse("2x2") == Layout(2, 2) and str(Layout(1, 4)) == "1x4"
    assert Layout.parse("1X4").processes == 4
    for bad in ("4", "0x2", "axb"):
        with pytest.raises(ValueError):
            Layout.parse(bad)


def test_slope() -> None:
    assert slope([(0, 5), (1, 5), (2, 5)]) == 0
    assert slope([(0, 0), (1, 2), (2, 4)]) == pytest.approx(2.0)
    assert slope([(0, 1)]) == 0


RAW = """\
thread (0x1);main (app.py);run (asyncio/base_events.py);handle (ingest_svc/submit.py) 60
thread (0x1);main (app.py);run (asyncio/base_events.py);dumps (json/encoder.py) 20
thread (0x2);publish (relayq_core/publish.py);send (kombu/messaging.py) 20
"""


def test_py_spy_raw_output_reduces_to_self_total_and_packages() -> None:
    result = analyse(RAW, seconds=2, rate=50)
    assert result["samples"] == 100
    assert result["busy"] == pytest.approx(1.0)
    top_self = {entry["name"]: entry["pct"] for entry in result["self"]}
    assert top_self["handle (ingest_svc/submit.py)"] == pytest.approx(60)
    total = {entry["name"]: entry["pct"] for entry in result["total"]}
    assert total["run (asyncio/base_events.py)"] == pytest.approx(80)
    assert total["main (app.py)"] == pytest.approx(80)
    packages = {entry["name"]: entry["pct"] for entry in result["packages"]}
    assert packages == {"ingest_svc": 60, "json": 20, "kombu": 20}
    assert [t["pct"] for t in result["threads"]] == [80, 20]


def test_details_per_second() -> None:
    report = {
        "details": [
            {"timestamp": "2024-05-01T00:00:00.1Z", "latency": 10_000_000},
            {"timestamp": "2024-05-01T00:00:00.5Z", "latency": 30_000_000},
            {"timestamp": "2024-05-01T00:00:02.2Z", "latency": 5_000_000},
        ]
    }
    series = details_per_second(report)
    assert series["calls"] == [2, 0, 1]
    assert series["p50_ms"] == [30.0, 0.0, 5.0]


def test_families_sum_worker_nodes() -> None:
    out = families({"worker1": 0.5, "worker2": 0.25, "worker1-pool": 0.1, "ingest": 0.6})
    assert out["worker consumers (Celery main processes)"] == pytest.approx(0.75)
    assert list(out)[0] == "worker consumers (Celery main processes)"


def _run(jobs_per_min: float) -> dict[str, Any]:
    return {
        "jobs": 1000,
        "accepted": 1000,
        "seconds": 60_000 / jobs_per_min,
        "jobs_per_min": jobs_per_min,
        "submit_per_s": 500.0,
        "rpc_p50_ms": 5.0,
        "rpc_p99_ms": 20.0,
        "errors": {},
        "cores": {"ingest": 0.9, "worker1": 0.5, "other": 0.1},
        "machine_cores": 1.9,
        "cpu_ms_per_job": {"ingest": 1.0, "worker1": 0.5, "other": 0.1},
        "message_bytes": 1300,
        "pg_statements_per_job": 9.0,
        "pg_transactions_per_job": 4.0,
        "pg_top_statements": [{"query": "COMMIT", "per_job": 1.0}],
        "redis_commands_per_job": 10.0,
        "redis_top_commands": [{"command": "lpush", "per_job": 1.0}],
        "series": {"submitted": [10, 10], "succeeded": [5, 15]},
    }


def test_render_writes_figures_and_keeps_the_analysis(tmp_path: Path) -> None:
    results: dict[str, Any] = {
        "date": "2024-05-01T00:00:00+00:00",
        "minutes": 3.0,
        "headline": "2x2",
        "machine": {
            "cpu": "test cpu",
            "cores": 2,
            "memory_gib": 24,
            "python": "3.12",
            "kernel": "6",
            "celery": "5",
            "grpcio": "1",
            "load_average_at_start": [1.0, 1.0, 1.0],
        },
        "settings": {
            "layouts": "2x2",
            "runs": 3,
            "jobs": 1000,
            "batch_size": 100,
            "single_concurrency": 64,
            "batch_concurrency": 4,
            "baseline_jobs": 5000,
            "sustain": 60,
            "rps": 200,
        },
        "layouts": {
            "2x2": {
                "layout": "2x2",
                "runs": {"single": [_run(13_000), _run(12_500)], "batched": [_run(30_000)]},
                "single_median_jobs_per_min": 12_750.0,
                "batched_median_jobs_per_min": 30_000.0,
                "baseline_median_jobs_per_min": 60_000.0,
                "baseline": [
                    {
                        "jobs": 5000,
                        "seconds": 5.0,
                        "jobs_per_min": 60_000.0,
                        "publish_per_s": 20_000.0,
                        "message_bytes": 1200,
                    }
                ],
                "rss_before": {"consumers": 100 << 20, "pools": 200 << 20},
                "rss_after": {"consumers": 101 << 20, "pools": 202 << 20},
                "jobs_between_rss": 100_000,
            }
        },
    }
    doc = tmp_path / "benchmarks.md"
    render(results, doc)
    text = doc.read_text()
    assert "**12,750** jobs/min" in text and "**30,000** jobs/min" in text
    assert "**0.50**" in text  # batched / bare Celery
    assert "≥ 0.7: not met" in text and "≥ 12,000: met" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000
    assert PLACEHOLDER in text
    doc.write_text(text.replace(PLACEHOLDER, "The consumer saturates a core."))
    render(results, doc)
    again = doc.read_text()
    assert f"{START}\nThe consumer saturates a core.\n{END}" in again


def test_submit_argv_is_a_command_line_the_tool_accepts(tmp_path: Path) -> None:
    argv = submit_argv("127.0.0.1:1", '{"task": "x"}', tmp_path / "r.json", "-z", "5s", "--quiet")
    assert argv[0].endswith("/relayq-load")
    args = parser().parse_args(argv[1:])
    assert (args.host, args.call, args.data) == ("127.0.0.1:1", DEFAULT_CALL, '{"task": "x"}')
    assert (args.duration, args.quiet, args.insecure) == (5.0, True, True)
    assert (args.format, args.output) == ("json", tmp_path / "r.json")
