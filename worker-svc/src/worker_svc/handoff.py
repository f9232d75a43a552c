"""The dead-letter hand-off: a staged dead letter goes to dlq-svc, then the job is dead-lettered.

The runner stages the dead letter in the ledger under the job's lock (``pending_dead_letter``);
the job becomes ``dead_lettered`` only once dlq-svc has stored it. While dlq-svc cannot be
reached, the staged row waits in the ledger, and each failed try touches it so the reconciler
leaves it to the workers that keep trying (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import grpc

from relayq_core.db.ledger import UNWRITABLE_ERRORS, JobLedger
from relayq_core.deadletter import DeadLetterReport
from relayq_core.logging import get_logger
from worker_svc.dlq_client import DlqClient

log = get_logger(__name__)


@dataclass(frozen=True)
class HandedOff:
    """dlq-svc has the dead letter (``already_stored``: from an earlier try)."""

    report: DeadLetterReport
    attempts: int
    already_stored: bool


class DlqUnreachable(Exception):
    """dlq-svc did not store the dead letter (its gRPC status ``code``); try again later."""

    def __init__(self, code: str) -> None:
        super().__init__(f"dlq-svc did not store the dead letter ({code})")
        self.code = code


async def hand_off(
    conn: asyncpg.Connection, ledger: JobLedger, dlq: DlqClient, job_id: str
) -> HandedOff | None:
    """Sends the job's staged dead letter to dlq-svc and marks the job dead-lettered; None when
    nothing is staged any more (another delivery finished the hand-off). Raises
    :class:`DlqUnreachable` (after touching the staged row) or a database error."""
    job = await ledger.get_job(conn, job_id)
    peek = await ledger.peek_state(conn, job_id)
    if job is None or peek is None or peek.pending_dead_letter is None:
        return None
    report = DeadLetterReport.of(job, peek.pending_dead_letter)
    try:
        duplicate = await dlq.report(report)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else type(exc).__name__
        try:
            await ledger.touch_staged_dead_letter(conn, job_id)
        except UNWRITABLE_ERRORS:
            pass  # the retry goes ahead all the same; the reconciler is the safety net
        raise DlqUnreachable(code) from exc
    await ledger.mark_dead_lettered(conn, job_id, report.final_attempt)
    log.warning(
        "job_dead_lettered",
        reason=report.reason.value,
        attempts=job.attempt_count,
        already_stored=duplicate,
    )
    return HandedOff(report, job.attempt_count, duplicate)
