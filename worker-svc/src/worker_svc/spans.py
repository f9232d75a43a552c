"""What a delivery adds to its Celery span (``run/<task>``, made by the Celery instrumentation).

The span then says which job it ran, which attempt, and what came of it; a failed attempt
carries the handler's exception as an ``exception`` event and an error status. Attribute names:
docs/observability.md, "Tracing".
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from relayq_core.telemetry import JOB_ID
from worker_svc.outcome import DeadLetter, Decision, Retry, RunResult

ATTEMPT = "relayq.attempt"
OUTCOME = "relayq.outcome"
RETRY_IN = "relayq.retry_in_seconds"
DLQ_REASON = "relayq.dlq_reason"
ERROR_TYPE = "error.type"
MESSAGE_CHARS = 500
STACKTRACE_CHARS = 4000


def start(job_id: str) -> None:
    """Names the job on the current span, before anything can go wrong."""
    trace.get_current_span().set_attribute(JOB_ID, job_id)


def outcome(decision: Decision, run: RunResult) -> None:
    """Records the delivery's attempt and outcome (and failure) on the current span."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, AttributeValue] = {OUTCOME: run.outcome.value}
    if run.attempt:
        attributes[ATTEMPT] = run.attempt
    if isinstance(decision, Retry):
        attributes[OUTCOME] = "retry_scheduled"
        attributes[RETRY_IN] = round(decision.countdown, 3)
    elif isinstance(decision, DeadLetter):
        attributes[OUTCOME] = "dead_lettered"
        if decision.reason is not None:
            attributes[DLQ_REASON] = decision.reason.value
    failure = run.failure
    if failure is not None:
        attributes[ERROR_TYPE] = failure.error_type
        span.add_event(
            "exception",
            {
                "exception.type": failure.error_type,
                "exception.message": failure.message[:MESSAGE_CHARS],
                # the end of a traceback is where it failed; the DLQ keeps the whole of it
                "exception.stacktrace": failure.traceback[-STACKTRACE_CHARS:],
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"{failure.error_type}: {failure.message}"))
    span.set_attributes(attributes)


def deferred(reason: str) -> None:
    """This delivery did not run the job (it comes back later): no attempt spent."""
    trace.get_current_span().set_attributes({OUTCOME: "deferred", "relayq.deferred": reason})
