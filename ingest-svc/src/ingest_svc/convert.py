"""``from_proto`` / ``to_proto`` for ingest: generated types stop here."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from relayq.v1 import ingest_pb2, job_pb2
from relayq_core.convert import attempt_to_proto, timestamp_to_proto
from relayq_core.jobs import JobRecord, JobState, SubmitResult

_STATE = {
    JobState.QUEUED: job_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: job_pb2.JOB_STATE_RUNNING,
    JobState.RETRYING: job_pb2.JOB_STATE_RETRYING,
    JobState.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    JobState.DEAD_LETTERED: job_pb2.JOB_STATE_DEAD_LETTERED,
}


def state_to_proto(state: JobState) -> job_pb2.JobState.ValueType:
    """The enum value for a domain state."""
    return _STATE[state]


def value_from_proto(value: struct_pb2.Value) -> Any:
    """A Struct value as plain Python, numbers as they came (NaN included: validation refuses
    it by name; ``json_format.MessageToDict`` would raise a bare ValueError)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: value_from_proto(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_from_proto(v) for v in value.list_value.values]
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or no kind set


def submission_from_proto(req: ingest_pb2.SubmitJobRequest) -> dict[str, Any]:
    """The request's fields as plain values for :func:`validate_submission`."""
    payload: Any = None
    if req.HasField("payload"):
        payload = {k: value_from_proto(v) for k, v in req.payload.fields.items()}
    return {
        "task": req.task,
        "payload": payload,
        "job_id": req.job_id,
        "idempotency_key": req.idempotency_key,
        "queue": req.queue,
    }


def submit_result_to_proto(result: SubmitResult) -> ingest_pb2.SubmitJobResponse:
    """One accepted (or duplicate) submission."""
    return ingest_pb2.SubmitJobResponse(
        job_id=result.job_id,
        idempotency_key=result.idempotency_key,
        queue=result.queue,
        state=state_to_proto(result.state),
        duplicate=result.duplicate,
    )


def job_to_proto(job: JobRecord) -> job_pb2.Job:
    """The whole job record, attempts included."""
    msg = job_pb2.Job(
        job_id=job.job_id,
        idempotency_key=job.idempotency_key,
        task=job.task,
        queue=job.queue,
        state=state_to_proto(job.state),
        attempt_count=job.attempt_count,
        last_error=job.last_error,
        trace_id=job.trace_id,
        created_at=timestamp_to_proto(job.created_at),
        updated_at=timestamp_to_proto(job.updated_at),
        started_at=timestamp_to_proto(job.started_at),
        finished_at=timestamp_to_proto(job.finished_at),
        next_attempt_at=timestamp_to_proto(job.next_attempt_at),
        duplicate_deliveries=job.duplicate_deliveries,
        worker_losses=job.worker_losses,
        attempts=[attempt_to_proto(a) for a in job.attempts],
    )
    msg.payload.update(job.payload)
    if job.result is not None:
        value = struct_pb2.Value()
        json_format.ParseDict(job.result, value)
        msg.result.CopyFrom(value)
    return msg
