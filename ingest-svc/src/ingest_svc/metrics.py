"""ingest-svc metrics, served on the HTTP port at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter

from relayq_core.catalog import Catalog

JOBS_SUBMITTED = Counter(
    "relayq_jobs_submitted_total",
    "Submissions by outcome: accepted, duplicate, rejected (gRPC and HTTP)",
    ["task", "queue", "outcome"],
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
