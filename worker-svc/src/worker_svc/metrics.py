"""Worker metrics, correct under Celery's prefork pool.

Every pool process writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
``relayq-worker`` before anything imports prometheus_client); the node's main process serves the
sum of all of them, so counts from every process — including ones that died and were replaced —
add up exactly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

JOB_RUNS = Counter(
    "relayq_job_runs_total",
    "Deliveries of jobs by outcome: succeeded, retried, dead_lettered, duplicate, worker_lost",
    ["task", "queue", "outcome"],
)
JOB_DURATION = Histogram(
    "relayq_job_duration_seconds",
    "Time a handler ran, per attempt (succeeded or failed)",
    ["task", "queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def serve(port: int, host: str) -> None:
    """Serves the node's aggregated metrics on ``host:port`` from a background thread."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)
