"""``from_proto`` / ``to_proto`` for dlq-svc: generated types stop here."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from dlq_svc import validation
from dlq_svc.model import (
    AuditRecord,
    DeadLetter,
    DeadLetterReport,
    Filter,
    ReplayProgress,
    Stats,
)
from relayq.v1 import dead_letter_pb2, job_pb2
from relayq_core.convert import attempt_to_proto, timestamp_to_proto
from relayq_core.errors import InvalidArgument
from relayq_core.jobs import AttemptRecord
from relayq_core.redaction import mask_fields, scrub_text


def _dt(msg: Message, field: str, label: str = "") -> datetime | None:
    """A Timestamp field as an aware datetime, None when unset; out of range (seconds past year
    9999, nanos outside 0..999999999) is refused, naming the field (``label``, else ``field``)."""
    if not msg.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, field)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{label or field} is not a valid timestamp "
            f"(seconds={ts.seconds}, nanos={ts.nanos}): it must lie in years 1..9999"
        ) from None


def render_trace_url(template: str, trace_id: str) -> str:
    """``template`` with ``{trace_id}`` filled in; "" without a template or a trace id.

    A plain replace, not ``str.format``: other braces in the URL are left alone.
    """
    if not template or not trace_id:
        return ""
    return template.replace("{trace_id}", trace_id)


def filter_from_proto(f: dead_letter_pb2.DeadLetterFilter) -> Filter:
    """The request's filter, validated."""
    return validation.make_filter(
        task=f.task,
        reason=f.reason,
        status=f.status,
        since=_dt(f, "since", "filter.since"),
        until=_dt(f, "until", "filter.until"),
        error_contains=f.error_contains,
    )


def attempt_from_proto(a: job_pb2.Attempt, default_start: datetime) -> AttemptRecord:
    """One attempt of a report; one without a start time gets ``default_start``."""
    started = _dt(a, "started_at", f"attempts[{a.number}].started_at") or default_start
    return AttemptRecord(
        number=a.number,
        worker=a.worker,
        started_at=started,
        duration_seconds=a.duration_seconds,
        outcome=a.outcome,
        error_type=a.error_type,
        error_message=a.error_message,
        countdown_seconds=a.countdown_seconds,
    )


def report_from_proto(req: dead_letter_pb2.ReportDeadLetterRequest) -> DeadLetterReport:
    """The request as a validated :class:`DeadLetterReport`."""
    dead_lettered_at = _dt(req, "dead_lettered_at") or datetime.now(UTC)
    return validation.report(
        job_id=req.job_id,
        idempotency_key=req.idempotency_key,
        task=req.task,
        queue=req.queue,
        payload=json_format.MessageToDict(req.payload) if req.HasField("payload") else {},
        reason=req.reason,
        error_type=req.error_type,
        error_message=req.error_message,
        traceback=req.traceback,
        attempts=[attempt_from_proto(a, dead_lettered_at) for a in req.attempts],
        trace_id=req.trace_id,
        first_failed_at=_dt(req, "first_failed_at"),
        dead_lettered_at=dead_lettered_at,
        final_attempt=req.final_attempt,
        worker=req.worker,
    )


def _audit_to_proto(a: AuditRecord) -> dead_letter_pb2.AuditRecord:
    return dead_letter_pb2.AuditRecord(
        action=a.action.value,
        at=timestamp_to_proto(a.at),
        actor=a.actor,
        reason=a.reason,
        result=a.result,
    )


def dead_letter_to_proto(
    entry: DeadLetter, trace_url_template: str, redact_fields: frozenset[str] = frozenset()
) -> dead_letter_pb2.DeadLetter:
    """An entry; traceback and audit are whatever the entry holds (empty in listings).

    For display: payload fields named in ``redact_fields`` (any depth) show as ``"***"`` and
    credentials in the error text and traceback are masked; the stored entry, which replay
    publishes, is untouched.
    """
    msg = dead_letter_pb2.DeadLetter(
        id=entry.job_id,
        job_id=entry.job_id,
        idempotency_key=entry.idempotency_key,
        task=entry.task,
        queue=entry.queue,
        reason=entry.reason.value,
        error_type=entry.error_type,
        error_message=scrub_text(entry.error_message),
        traceback=scrub_text(entry.traceback),
        attempts=[attempt_to_proto(a) for a in entry.attempts],
        trace_id=entry.trace_id,
        trace_url=render_trace_url(trace_url_template, entry.trace_id),
        first_failed_at=timestamp_to_proto(entry.first_failed_at),
        dead_lettered_at=timestamp_to_proto(entry.dead_lettered_at),
        status=entry.status.value,
        dead_letter_count=entry.dead_letter_count,
        audit=[_audit_to_proto(a) for a in entry.audit],
        updated_at=timestamp_to_proto(entry.updated_at),
    )
    msg.payload.update(mask_fields(entry.payload, redact_fields))
    return msg


def stats_to_proto(stats: Stats) -> dead_letter_pb2.GetDeadLetterStatsResponse:
    """The stats reply; ``oldest_active_at`` unset when nothing is active."""

    def counts(pairs: list[tuple[str, int]]) -> list[dead_letter_pb2.Count]:
        return [dead_letter_pb2.Count(key=k, count=n) for k, n in pairs]

    return dead_letter_pb2.GetDeadLetterStatsResponse(
        active=stats.active,
        by_task=counts(stats.by_task),
        by_reason=counts(stats.by_reason),
        by_status=counts(stats.by_status),
        oldest_active_at=timestamp_to_proto(stats.oldest_active_at),
        oldest_active_id=stats.oldest_active_id,
        active_by_task_reason=[
            dead_letter_pb2.TaskReasonCount(task=t, reason=r, count=n)
            for t, r, n in stats.by_task_reason
        ],
    )


def progress_to_proto(p: ReplayProgress) -> dead_letter_pb2.ReplayDeadLettersResponse:
    """One streamed replay message."""
    return dead_letter_pb2.ReplayDeadLettersResponse(
        id=p.job_id, job_id=p.job_id, result=p.result, done=p.done, total=p.total
    )
