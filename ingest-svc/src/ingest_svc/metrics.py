"""ingest-svc metrics, served on the HTTP port at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from relayq_core.catalog import Catalog

JOBS_SUBMITTED = Counter(
    "relayq_jobs_submitted_total",
    "Submissions by outcome: accepted, duplicate, rejected (gRPC and HTTP)",
    ["task", "queue", "outcome"],
)
OUTBOX_JOBS = Gauge(
    "relayq_ingest_outbox_jobs",
    "Jobs accepted (in the ledger) whose message this ingest has not yet handed to the broker",
)
PUBLISHED = Counter(
    "relayq_ingest_published_total",
    "Jobs whose message this ingest's outbox handed to the broker",
)
PUBLISH_FAILURES = Counter(
    "relayq_ingest_publish_failures_total",
    "Pushes of a batch of messages to the broker that failed or timed out (then retried)",
)
PUBLISH_SECONDS = Histogram(
    "relayq_ingest_publish_seconds",
    "Time one pipelined push of a batch of messages to the broker took, failed ones included",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_DROPPED = Counter(
    "relayq_ingest_outbox_dropped_total",
    "Jobs the outbox stopped trying to publish, left to the reconciler's never-published rule, "
    "by reason: max_age, backlog_full, shutdown",
    ["reason"],
)


def task_label(catalog: Catalog, task: str) -> str:
    """The task as a label: only catalogue names, so clients cannot grow the label set."""
    return task if task in catalog.tasks else "unknown"


def queue_label(catalog: Catalog, queue: str) -> str:
    """The queue as a label, bounded the same way."""
    return queue if queue in catalog.queues() else "unknown"


def count_rejected(catalog: Catalog, task: str, queue: str) -> None:
    """Counts a submission refused before it reached the ledger (bad input)."""
    JOBS_SUBMITTED.labels(
        task=task_label(catalog, task),
        queue=queue_label(catalog, queue or "unknown"),
        outcome="rejected",
    ).inc()
