"""``relayq-outage``'s pure parts: percentiles, the per-phase summary and the Markdown it prints
(the measurement itself runs a stack for minutes: tests/integration/test_submit_outage.py is its
short form)."""

from __future__ import annotations

from typing import Any

from relayq_load.outage.cli import render
from relayq_load.outage.submitter import Call, percentile, summarise


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100 and percentile([], 0.5) == 0
    assert percentile([3.0], 0.99) == 3.0


def test_summarise_counts_refusals_and_slow_answers() -> None:
    calls = [
        Call("grpc", 0.0, 0.005, True, "OK", "a"),
        Call("http", 0.1, 2.5, True, "201", "b"),  # accepted, but not within 1 s
        Call("grpc", 0.2, 30.0, False, "UNAVAILABLE"),
        Call("http", 0.3, 0.004, False, "503"),
    ]
    s = summarise(calls)
    assert s["calls"] == 4 and s["ok"] == 2
    assert s["availability_pct"] == 50.0 and s["within_bound_pct"] == 25.0
    assert s["max_ms"] == 30000.0 and s["p50_ms"] == 5.0
    assert s["codes"] == {"OK": 1, "201": 1, "UNAVAILABLE": 1, "503": 1}


def test_render_names_every_phase_and_the_jobs() -> None:
    phase = summarise([Call("grpc", 0.0, 0.005, True, "OK", "a")])
    run: dict[str, Any] = {
        "fault": "stall",
        "fault_seconds": 60.0,
        "rate": 50.0,
        "phases": {"before": phase, "during": phase, "after": phase},
        "accepted": 1,
        "succeeded": 1,
        "ledger": {
            "early_done_after_redis_returned_s": 3.2,
            "longest_wait_s": 61.0,
            "duplicate_deliveries": 0,
        },
        "ingest": {
            "relayq_ingest_publish_failures_total": 9.0,
            "relayq_ingest_outbox_dropped_total{reason=max_age}": 4.0,
        },
        "reconciler": {"relayq_reconciler_requeued_total{reason=never_published}": 4.0},
    }
    text = render({"runs": [run], "command": "relayq-outage"})
    assert "| stall (60 s) | during | 1 | 100.0 % | 100.0 % | 5.0 ms |" in text
    assert (
        "| stall | 1 | 1 | 3.2 s after it returned | 61.0 s | 0 | 9 | 4 | never_published 4 |"
        in (text)
    )
