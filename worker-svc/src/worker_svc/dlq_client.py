"""The hand-off to dlq-svc: build a ``ReportDeadLetter`` from the ledger and send it.

Called when a job is dead-lettered (the ledger holds the staged report until dlq-svc has it).
One gRPC channel per worker process, made after the fork.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc
from relayq_core.convert import attempt_to_proto, timestamp_to_proto
from relayq_core.jobs import JobRecord
from relayq_core.tls import ClientTls, channel


def _ts(value: datetime | str | None) -> timestamp_pb2.Timestamp | None:
    """Like :func:`timestamp_to_proto`, but the staged report's times are ISO strings."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return timestamp_to_proto(value)


def build_report(job: JobRecord, staged: dict[str, Any]) -> dead_letter_pb2.ReportDeadLetterRequest:
    """The dead letter as dlq-svc stores it: the staged failure plus the job's whole record."""
    failed = [a for a in job.attempts if a.outcome != "succeeded"]
    first_failed = failed[0].started_at if failed else job.updated_at
    request = dead_letter_pb2.ReportDeadLetterRequest(
        job_id=job.job_id,
        idempotency_key=job.idempotency_key,
        task=job.task,
        queue=job.queue,
        reason=staged["reason"],
        error_type=staged["error_type"],
        error_message=staged["error_message"],
        traceback=staged["traceback"],
        trace_id=job.trace_id,
        first_failed_at=_ts(first_failed),
        dead_lettered_at=_ts(staged["dead_lettered_at"]),
        final_attempt=int(staged["final_attempt"]),
        worker=staged["worker"],
        attempts=[attempt_to_proto(a) for a in job.attempts],
    )
    request.payload.update(job.payload)
    return request


class DlqClient:
    """A per-process ``DeadLetterService`` client (TLS when ``tls`` is given)."""

    def __init__(self, address: str, timeout_seconds: float, tls: ClientTls | None = None) -> None:
        self._address = address
        self._timeout = timeout_seconds
        self._tls = tls
        self._pid = -1
        self._channel: grpc.Channel | None = None

    def _stub(self) -> dead_letter_pb2_grpc.DeadLetterServiceStub:
        if self._channel is None or self._pid != os.getpid():
            self._channel = channel(self._address, self._tls)
            self._pid = os.getpid()
        return dead_letter_pb2_grpc.DeadLetterServiceStub(self._channel)

    def report(self, request: dead_letter_pb2.ReportDeadLetterRequest) -> bool:
        """Stores the dead letter; True when dlq-svc already had it. Raises grpc.RpcError."""
        reply: dead_letter_pb2.ReportDeadLetterResponse = self._stub().ReportDeadLetter(
            request, timeout=self._timeout
        )
        return reply.duplicate
