"""``to_proto`` for the shared domain types of :mod:`relayq_core.jobs` that more than one service
sends: ingest (``GetJob``), the worker (its report to dlq-svc) and dlq-svc (its entries) all
encode attempts the same way, so they do it here, with the dead-letter report the worker sends
(:mod:`relayq_core.deadletter`).

Only encoding lives here; each service decodes its own requests in its own ``convert`` module.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from relayq.v1 import dead_letter_pb2, job_pb2
from relayq_core.deadletter import DeadLetterReport
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


def dead_letter_report_to_proto(
    report: DeadLetterReport,
) -> dead_letter_pb2.ReportDeadLetterRequest:
    """The worker's ``ReportDeadLetter`` request."""
    request = dead_letter_pb2.ReportDeadLetterRequest(
        job_id=report.job_id,
        idempotency_key=report.idempotency_key,
        task=report.task,
        queue=report.queue,
        reason=report.reason.value,
        error_type=report.error_type,
        error_message=report.error_message,
        traceback=report.traceback,
        trace_id=report.trace_id,
        first_failed_at=timestamp_to_proto(report.first_failed_at),
        dead_lettered_at=timestamp_to_proto(report.dead_lettered_at),
        final_attempt=report.final_attempt,
        worker=report.worker,
        attempts=[attempt_to_proto(a) for a in report.attempts],
    )
    request.payload.update(report.payload)
    return request
