"""What a delivery's outcome means: the records of a run and the decision that follows (pure).

The runner (worker_svc/runner.py) produces a :class:`RunResult`; :func:`decide` turns it into a
retry, a dead letter or nothing more, under the task's retry policy. No I/O here: unit tests
call these directly.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from relayq_core.deadletter import Reason
from relayq_core.errors import JobError
from relayq_core.retry import RetryPolicy


class Outcome(StrEnum):
    """What one delivery found or did."""

    SUCCEEDED = "succeeded"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    POISON = "poison"
    REPORT_PENDING = "report_pending"
    UNKNOWN_JOB = "unknown_job"


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it (in text and jsonb): a NUL byte, which neither
    accepts, written out as ``\\x00``, and lone surrogates as ``\\udXXX`` escapes. A failure
    whose message held either (a webhook's binary 5xx body) could otherwise not be recorded."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Failure:
    """A failed attempt, as the ledger and the DLQ record it."""

    error_type: str
    message: str
    traceback: str
    retryable: bool
    #: The failure asked for at least this long before the next attempt (HTTP Retry-After).
    retry_after: float | None = None
    #: The attempt ran past its time limit (recorded ``timed_out``).
    timed_out: bool = False

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """From a handler's exception: retryable unless it says otherwise."""
        retryable, retry_after = True, None
        if isinstance(exc, JobError):
            retryable, retry_after = exc.retryable, exc.retry_after
        return cls(
            storable(type(exc).__name__),
            storable(str(exc)[:2000]),
            storable("".join(traceback.format_exception(exc))[-20000:]),
            retryable,
            retry_after,
        )

    @classmethod
    def time_limit(cls, limit: float, *, hard: bool) -> Failure:
        """An attempt that ran past its time limit: cancelled, or (``hard``) its process killed
        because it ignored the cancellation."""
        message = f"the attempt was still running after its time limit ({limit:g} s)"
        if hard:
            message += "; it ignored the cancellation, so its process was killed"
        return cls("JobTimeout", message, "", retryable=True, timed_out=True)


@dataclass(frozen=True)
class RunResult:
    """The delivery's outcome."""

    outcome: Outcome
    attempt: int = 0
    result: Any = None
    failure: Failure | None = None
    started_at: datetime | None = None
    duration_seconds: float = 0.0
    #: This delivery found the job abandoned by a worker that died running it.
    worker_lost: bool = False
    #: The handler ran (its duration is worth observing).
    ran: bool = False
    #: Recording the outcome also released the job's lock.
    released: bool = False


@dataclass(frozen=True)
class Retry:
    """Run the job again after ``countdown`` seconds; ``failures`` so far in this run."""

    countdown: float
    failures: int


@dataclass(frozen=True)
class DeadLetter:
    """Hand the job to dlq-svc (the dead-lettering is staged in the ledger)."""

    reason: Reason | None  # None: an earlier delivery staged it


@dataclass(frozen=True)
class Done:
    """Nothing more to do for this message."""

    result: Any = None


Decision = Retry | DeadLetter | Done


def decide(run: RunResult, policy: RetryPolicy, failures_before: int) -> Decision:
    """What a delivery's outcome means under the task's policy (pure)."""
    if run.outcome is Outcome.POISON:
        return DeadLetter(Reason.WORKER_LOST)
    if run.outcome is Outcome.REPORT_PENDING:
        return DeadLetter(None)
    if run.outcome is not Outcome.FAILED:
        return Done(run.result)
    assert run.failure is not None
    if not run.failure.retryable:
        return DeadLetter(Reason.PERMANENT_ERROR)
    failures = failures_before + 1
    if failures > policy.max_retries:
        return DeadLetter(Reason.TIMEOUT if run.failure.timed_out else Reason.RETRIES_EXHAUSTED)
    return Retry(policy.retry_countdown(failures, run.failure.retry_after), failures)
