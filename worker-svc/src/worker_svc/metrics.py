"""Worker metrics, correct under Celery's prefork pool, with trace exemplars.

Every pool process writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
``relayq-worker`` before anything imports prometheus_client); the node's main process serves the
sum of all of them, so counts from every process — including ones that died and were replaced —
add up exactly.

prometheus_client keeps no exemplars in multiprocess mode, so relayq keeps its own: each pool
process remembers the latest observation (value, trace id) per duration bucket and writes them to
``exemplars-<pid>.json`` in the same directory at most once a second; the main process attaches
the newest per bucket to ``relayq_job_duration_seconds_bucket`` when it serves OpenMetrics. A
latency spike on the dashboard then links to a trace of a job that fell in that bucket.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DURATION = "relayq_job_duration_seconds"

JOB_RUNS = Counter(
    "relayq_job_runs_total",
    "Deliveries of jobs by outcome: succeeded, retried, dead_lettered, duplicate, worker_lost",
    ["task", "queue", "outcome"],
)
JOB_TIMEOUTS = Counter(
    "relayq_job_timeouts_total",
    "Attempts that ran past their time limit: cancelled (kind=soft) or, ignoring that, "
    "recorded by the supervisor and their process killed (kind=hard)",
    ["task", "queue", "kind"],
)
ATTEMPTS_KILLED = Counter(
    "relayq_worker_attempts_killed_total",
    "Pool processes the supervisor killed to stop a handler: past its time limit "
    "(reason=timeout) or its lease no longer renewable (reason=lease)",
    ["task", "reason"],
)
DELIVERY_ERRORS = Counter(
    "relayq_worker_delivery_errors_total",
    "Deliveries that failed for a reason that is not the handler's (a bug, a ledger write "
    "refused); the message is re-published, not acknowledged",
    ["task", "error"],
)
JOB_DURATION = Histogram(
    DURATION,
    "Time a handler ran, per attempt (succeeded or failed)",
    ["task", "queue"],
    buckets=BUCKETS,
)

_WRITE_EVERY_SECONDS = 1.0
_latest: dict[str, dict[str, Any]] = {}
_written_at = 0.0
_directory: Path | None = None


def use_directory(directory: Path) -> None:
    """Where this node's processes share their files (called by ``relayq-worker`` before the
    pool forks, so every pool process inherits it)."""
    global _directory
    _directory = directory


def _bucket(value: float) -> str:
    """The ``le`` label of the smallest bucket holding ``value``."""
    for bound in BUCKETS:
        if value <= bound:
            return str(float(bound))
    return "+Inf"


def observe_duration(task: str, queue: str, seconds: float, trace_id: str) -> None:
    """Observes one run's duration, remembering it as the bucket's exemplar when traced."""
    global _written_at
    JOB_DURATION.labels(task=task, queue=queue).observe(seconds)
    directory = _directory
    if not trace_id or directory is None:
        return
    key = json.dumps([task, queue, _bucket(seconds)])
    _latest[key] = {"trace_id": trace_id, "value": seconds, "ts": time.time()}
    now = time.monotonic()
    if now - _written_at >= _WRITE_EVERY_SECONDS:
        _written_at = now
        path = directory / f"exemplars-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_latest))
        tmp.replace(path)


def _read_exemplars(directory: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    newest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in directory.glob("exemplars-*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: next scrape
        for raw, ex in data.items():
            task, queue, le = json.loads(raw)
            key = (task, queue, le)
            if key not in newest or ex["ts"] > newest[key]["ts"]:
                newest[key] = ex
    return newest


class ExemplarCollector(Collector):
    """The multiprocess totals, with the pool's exemplars on the duration buckets."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._registry = CollectorRegistry()
        MultiProcessCollector(self._registry, path=str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        exemplars = _read_exemplars(self._directory)
        for family in self._registry.collect():
            if family.name == DURATION and exemplars:
                family.samples = [self._with_exemplar(s, exemplars) for s in family.samples]
            yield family

    @staticmethod
    def _with_exemplar(
        sample: Sample, exemplars: dict[tuple[str, str, str], dict[str, Any]]
    ) -> Sample:
        if not sample.name.endswith("_bucket"):
            return sample
        key = (
            sample.labels.get("task", ""),
            sample.labels.get("queue", ""),
            sample.labels.get("le", ""),
        )
        ex = exemplars.get(key)
        if ex is None:
            return sample
        return sample._replace(
            exemplar=Exemplar({"trace_id": ex["trace_id"]}, ex["value"], ex["ts"])
        )


def serve(port: int, host: str) -> None:
    """Serves the node's aggregated metrics on ``host:port`` from a background thread."""
    assert _directory is not None, "use_directory() first"
    registry = CollectorRegistry()
    registry.register(ExemplarCollector(_directory))
    start_http_server(port, addr=host, registry=registry)
