"""The benchmark's picture: throughput and submit latency over time (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r["jobs_per_min"])
    return ordered[len(ordered) // 2]


def plot(results: dict[str, Any], path: Path) -> None:
    """Writes the PNG for the headline layout of ``results``."""
    layout = results["layouts"][results["headline"]]
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), constrained_layout=True)
    ax = axes[0]
    for name, colour in (("single", "tab:blue"), ("batched", "tab:green")):
        run = _median_run(layout["runs"].get(name, []))
        if run is None:
            continue
        done = run["series"]["succeeded"]
        ax.plot(range(len(done)), [v * 60 for v in done], color=colour, label=f"relayq {name}")
    baseline = layout.get("baseline_median_jobs_per_min")
    if baseline:
        ax.axhline(baseline, color="tab:red", linestyle="--", label="bare Celery (median)")
    ax.axhline(12_000, color="grey", linestyle=":", label="12,000 jobs/min")
    ax.set_title(f"End to end, {results['headline']} workers: jobs succeeded per second (x60)")
    ax.set_xlabel("seconds since the first submit")
    ax.set_ylabel("jobs/min")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    sustain = layout.get("sustain")
    ax = axes[1]
    if sustain:
        series = sustain["ledger_series"]
        ax.plot([v * 60 for v in series["submitted"]], label="submitted", color="tab:blue")
        ax.plot([v * 60 for v in series["succeeded"]], label="succeeded", color="tab:green")
        twin = ax.twinx()
        samples = sustain["samples"]
        twin.plot(
            [s["t"] for s in samples],
            [s["backlog"] for s in samples],
            color="tab:orange",
            label="backlog (jobs waiting)",
        )
        twin.set_ylabel("jobs waiting")
        twin.legend(loc="lower right", fontsize=8)
        ax.set_title(
            f"Steady {sustain['jobs_per_min_target']:,} jobs/min for {sustain['seconds']:.0f} s "
            "(single SubmitJob): throughput and backlog"
        )
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("jobs/min")
    ax.grid(alpha=0.3)

    ax = axes[2]
    if sustain:
        per_second = sustain["per_second"]
        ax.plot(per_second["p50_ms"], label="p50", color="tab:blue")
        ax.plot(per_second["p99_ms"], label="p99", color="tab:purple")
        ax.axhline(50, color="grey", linestyle=":", label="50 ms")
        ax.set_title("Submit latency per second at the steady rate (client side, ms)")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
