"""``to_proto`` for the shared domain types of :mod:`relayq_core.jobs` that more than one service
sends: ingest (``GetJob``), the worker (its report to dlq-svc) and dlq-svc (its entries) all
encode attempts the same way, so they do it here.

Only encoding lives here; each service decodes its own requests in its own ``convert`` module.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from relayq.v1 import job_pb2
from relayq_core.jobs import AttemptRecord


def timestamp_to_proto(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """``value`` as a Timestamp; None (the field left unset) for None.

    A naive datetime is taken as UTC, an aware one is converted (``Timestamp.FromDatetime``).
    """
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def attempt_to_proto(attempt: AttemptRecord) -> job_pb2.Attempt:
    """One attempt of a job, every field copied as it is (empty strings and zeros included)."""
    return job_pb2.Attempt(
        number=attempt.number,
        worker=attempt.worker,
        started_at=timestamp_to_proto(attempt.started_at),
        duration_seconds=attempt.duration_seconds,
        outcome=attempt.outcome,
        error_type=attempt.error_type,
        error_message=attempt.error_message,
        countdown_seconds=attempt.countdown_seconds,
    )
